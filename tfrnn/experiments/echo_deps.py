"""``python -m tfrnn.experiments.echo_deps``: echo dependencies; see tfrnn.tasks.echo.main."""

from tfrnn import cli

if __name__ == "__main__":
    cli.launch("tfrnn.tasks.echo.main")
