"""Classify digit images with an exported MNIST model, the way a person tries it by hand.

    python -m tfrnn.predict --model models/mnist digit.png other.png images.npy
    python -m tfrnn.predict --model models/mnist --version 2 digit.png

prints one line per image: ``digit.png: 7 (probability 0.981)``. It runs the export's
``serving_default`` signature, as TF Serving would, from the highest version in ``--model``
(or ``--version N``).

Images, like the MNIST training images: 28x28 grayscale, a white digit on black.

* PNG files, decoded by TensorFlow's own decoder (``tf.io.decode_png``; colour images are
  converted to grayscale), pixels divided by 255.
* ``.npy`` files of one image (28, 28) or a batch (n, 28, 28): uint8 pixels (divided by
  255), or floats already scaled to [0, 1]. Each image is reported as ``file.npy[i]``.
"""

from __future__ import annotations

import os

# cli before TensorFlow: it quiets TensorFlow's start-up.
from tfrnn import cli

# isort: split
import numpy as np
import tensorflow as tf
from absl import flags

from tfrnn import export
from tfrnn.cli import UsageError


def version_dir(model_dir: str, version: int | None = None) -> str:
    """``model_dir/<version>``: the highest version, or ``version``; UsageError if absent."""
    available = export.versions(model_dir)
    if not available:
        raise UsageError(
            f"{model_dir} holds no exported model (no numbered version folder); make one with "
            "python -m tfrnn.export"
        )
    if version is None:
        version = available[-1]
    if version not in available:
        raise UsageError(
            f"{model_dir} has no version {version}; it has {', '.join(map(str, available))}"
        )
    return os.path.join(model_dir, str(version))


def _read_png(path: str) -> np.ndarray:
    try:
        image = tf.io.decode_png(tf.io.read_file(path), channels=1)
    except tf.errors.InvalidArgumentError as error:
        raise UsageError(f"{path} is not a PNG image") from error
    height, width, _ = image.shape
    if (height, width) != (export.IMAGE_SIZE, export.IMAGE_SIZE):
        raise UsageError(f"{path} is {width}x{height} pixels; expected 28x28")
    return image.numpy()[None, :, :, 0].astype(np.float32) / 255.0


def _read_npy(path: str) -> np.ndarray:
    try:
        images = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise UsageError(f"{path} is not a NumPy .npy file: {error}") from error
    if images.shape[-2:] != (export.IMAGE_SIZE, export.IMAGE_SIZE) or images.ndim not in (2, 3):
        raise UsageError(f"{path} holds an array of shape {images.shape}; expected (n, 28, 28)")
    images = images.reshape((-1, export.IMAGE_SIZE, export.IMAGE_SIZE))
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    if images.dtype.kind != "f":
        raise UsageError(f"{path} holds {images.dtype}; expected uint8 pixels or floats in [0, 1]")
    if images.size and not (images.min() >= 0.0 and images.max() <= 1.0):
        raise UsageError(
            f"{path} holds floats from {images.min()} to {images.max()}; scale the pixels to "
            "[0, 1] (pixel / 255) or save them as uint8"
        )
    return images.astype(np.float32)


def read_images(paths: list[str]) -> tuple[list[str], np.ndarray]:
    """(a label per image, float32 images (n, 28, 28) in [0, 1]) from PNG and .npy files."""
    labels, batches = [], []
    for path in paths:
        if not os.path.isfile(path):
            raise UsageError(f"{path} does not exist")
        if path.endswith(".npy"):
            images = _read_npy(path)
            labels += [f"{path}[{index}]" for index in range(len(images))]
        else:
            images = _read_png(path)
            labels.append(path)
        batches.append(images)
    if not labels:
        raise UsageError("no images: name PNG or .npy files after the flags")
    return labels, np.concatenate(batches)


def predict(model_dir: str, paths: list[str], version: int | None = None) -> list[str]:
    """The lines ``label: class (probability p)`` for every image in ``paths``."""
    labels, images = read_images(paths)
    serving_dir = version_dir(model_dir, version)
    signature = tf.saved_model.load(serving_dir).signatures[export.DEFAULT_SIGNATURE]
    inputs = signature.structured_input_signature[1]
    if set(inputs) != {"rows"}:
        raise UsageError(
            f"{serving_dir} is not an MNIST model: its {export.DEFAULT_SIGNATURE} takes "
            f"{', '.join(sorted(inputs))}, not rows"
        )
    try:
        outputs = signature(rows=tf.constant(images))
    except tf.errors.InvalidArgumentError as error:
        raise UsageError(export.signature_error(error)) from error
    classes = outputs["classes"].numpy()
    probabilities = outputs["probabilities"].numpy()
    return [
        f"{label}: {digit} (probability {probabilities[row, digit]:.3f})"
        for row, (label, digit) in enumerate(zip(labels, classes, strict=True))
    ]


def main(argv, flag_values=None):
    """The command: one line per image named after the flags."""
    values = flags.FLAGS if flag_values is None else flag_values
    for line in predict(values.model, argv[1:], values.version):
        print(line)


def define_flags(flag_values=None):
    """Defines the command's flags (in ``flag_values``, or absl's global flags)."""
    flag_values = flags.FLAGS if flag_values is None else flag_values
    flags.DEFINE_string(
        "model", None, "exported model folder, e.g. models/mnist", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "version", None, "version to use; default: the highest", flag_values=flag_values
    )
    flags.mark_flag_as_required("model", flag_values=flag_values)


if __name__ == "__main__":
    define_flags()
    cli.run(main)
