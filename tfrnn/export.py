"""``python -m tfrnn.export``: a workdir to a SavedModel; see :mod:`tfrnn.serving.export`."""

from tfrnn import cli

if __name__ == "__main__":
    cli.launch("tfrnn.serving.export")
