"""``python -m tfrnn.experiments.mnist``: MNIST row by row; see :mod:`tfrnn.tasks.mnist.main`."""

from tfrnn import cli

if __name__ == "__main__":
    cli.launch("tfrnn.tasks.mnist.main")
