"""``python -m tfrnn.bench`` (``make bench``): see :mod:`tfrnn.bench.suite`."""

from tfrnn import cli

if __name__ == "__main__":
    cli.launch("tfrnn.bench.suite")
