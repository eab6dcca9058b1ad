"""``python -m tfrnn.predict``: digits in image files; see :mod:`tfrnn.serving.predict`."""

from tfrnn import cli

if __name__ == "__main__":
    cli.launch("tfrnn.serving.predict")
