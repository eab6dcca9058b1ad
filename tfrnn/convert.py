"""``python -m tfrnn.convert``: a TF1 checkpoint to a workdir; see :mod:`tfrnn.tf1.convert`."""

from tfrnn import cli

if __name__ == "__main__":
    cli.launch("tfrnn.tf1.convert")
