"""Classify digit images with an exported MNIST model, the way a person tries it by hand.

    python -m tfrnn.predict --model models/mnist digit.png other.jpg images.npy
    python -m tfrnn.predict --model models/mnist --version 2 digit.png
    python -m tfrnn.predict --model models/mnist --invert black_on_white.png

prints one line per image: ``digit.png: 7 (probability 0.981)``. It runs the export's
``serving_default`` signature, as TF Serving would, from the highest version in ``--model``
(or ``--version N``); ``--model`` may also name one version folder (``models/mnist/1``).

Images, like the MNIST training images: 28x28 grayscale, a white digit on black.

* Image files that TensorFlow's ``tf.io.decode_image`` reads: PNG, JPEG, GIF (the first
  frame), BMP and WebP. Colour becomes luminance; pixels are divided by 255.
* Transparency (PNG, BMP, WebP with alpha): transparent pixels are background, and each
  pixel's ink is its alpha times its contrast with the background its ink implies: light
  ink (alpha-weighted mean above 0.5) is drawn on black, ``ink = alpha * gray``; dark ink on
  white, ``ink = alpha * (1 - gray)``. Either way the digit comes out white on black.
* ``.npy`` files of one image (28, 28) or a batch (n, 28, 28): uint8 pixels (divided by
  255), or floats already scaled to [0, 1]. Each image is reported as ``file.npy[i]``.

An image whose border is bright (mean above 0.5) is most likely a dark digit on white: its
line says so, and ``--invert`` (pixels ``1 - x``) turns it white on black.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
from absl import flags

from tfrnn.data.mnist import IMAGE_SIZE
from tfrnn.errors import UsageError
from tfrnn.serving import export, tf_serving

# What tf.io.decode_image reads; the first frame of an animated GIF.
IMAGE_FORMATS = "PNG, JPEG, GIF, BMP or WebP"
# An image whose border pixels average above this is taken for a dark digit on a light ground.
BRIGHT_BORDER = 0.5
# Luminance of RGB, as tf.image.rgb_to_grayscale computes it (ITU-R BT.601).
LUMA_WEIGHTS = np.array([0.2989, 0.5870, 0.1140], np.float32)


def version_dir(model_dir: str, version: int | None = None) -> str:
    """``model_dir/<version>``: the highest version, or ``version``; UsageError if absent.

    ``model_dir`` may be a version folder itself (it holds ``saved_model.pb``).
    """
    if os.path.isfile(os.path.join(model_dir, "saved_model.pb")):
        if version is not None:
            raise UsageError(
                f"--model {model_dir} is one version folder; leave out --version, or point "
                f"--model at the folder that holds the versions, {os.path.dirname(model_dir)}"
            )
        return model_dir
    available = export.versions(model_dir)
    if not available:
        raise UsageError(_no_versions_hint(model_dir))
    if version is None:
        version = available[-1]
    if version not in available:
        raise UsageError(
            f"{model_dir} has no version {version}; it has {', '.join(map(str, available))}"
        )
    return os.path.join(model_dir, str(version))


def _no_versions_hint(model_dir: str) -> str:
    """Why ``model_dir`` holds no version folder, and where the export may be."""
    if not os.path.isdir(model_dir):
        return f"--model {model_dir} does not exist"
    workdir_export = os.path.join(model_dir, "export")
    if export.versions(workdir_export):
        return (
            f"{model_dir} is a training workdir; its exported model is {workdir_export}: "
            f"use --model {workdir_export}"
        )
    return (
        f"{model_dir} holds no exported model (no numbered version folder); make one with "
        "python -m tfrnn.export"
    )


def _decode(path: str) -> np.ndarray:
    """The pixels of an image file: float32 (height, width, channels) in [0, 1]."""
    try:
        image = tf.io.decode_image(tf.io.read_file(path), expand_animations=False)
    except tf.errors.InvalidArgumentError as error:
        raise UsageError(
            f"{path} is not an image TensorFlow can decode; it reads {IMAGE_FORMATS}"
        ) from error
    return image.numpy().astype(np.float32) / 255.0


def ink(image: np.ndarray) -> np.ndarray:
    """White-on-black pixels (height, width) of a decoded (height, width, channels) image.

    Channels: 1 gray, 2 gray and alpha, 3 RGB, 4 RGBA. Colour becomes luminance. An alpha
    with transparent pixels makes them background (the module docstring gives the rule); a
    fully opaque alpha changes nothing.
    """
    has_alpha = image.shape[-1] in (2, 4)
    colour = image[..., :-1] if has_alpha else image
    gray = colour[..., 0] if colour.shape[-1] == 1 else np.clip(colour @ LUMA_WEIGHTS, 0, 1)
    alpha = image[..., -1] if has_alpha else None
    if alpha is None or alpha.min() == 1.0:
        return gray
    light_ink = np.sum(alpha * gray) > 0.5 * np.sum(alpha)
    return alpha * (gray if light_ink else 1.0 - gray)


def _read_image(path: str) -> np.ndarray:
    pixels = ink(_decode(path))
    height, width = pixels.shape
    if (height, width) != (IMAGE_SIZE, IMAGE_SIZE):
        raise UsageError(f"{path} is {width}x{height} pixels; expected 28x28")
    return pixels[None].astype(np.float32)


def bright_background(images: np.ndarray) -> np.ndarray:
    """bool (n,): whether each image of (n, 28, 28) has a border brighter than BRIGHT_BORDER."""
    border = np.concatenate(
        [images[:, 0], images[:, -1], images[:, 1:-1, 0], images[:, 1:-1, -1]], axis=1
    )
    return border.mean(axis=1) > BRIGHT_BORDER


def _read_npy(path: str) -> np.ndarray:
    try:
        images = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise UsageError(f"{path} is not a NumPy .npy file: {error}") from error
    if images.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE) or images.ndim not in (2, 3):
        raise UsageError(f"{path} holds an array of shape {images.shape}; expected (n, 28, 28)")
    images = images.reshape((-1, IMAGE_SIZE, IMAGE_SIZE))
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
    """(a label per image, float32 images (n, 28, 28) in [0, 1]) from image and .npy files."""
    labels, batches = [], []
    for path in paths:
        if not os.path.isfile(path):
            raise UsageError(f"{path} does not exist")
        if path.endswith(".npy"):
            images = _read_npy(path)
            labels += [f"{path}[{index}]" for index in range(len(images))]
        else:
            images = _read_image(path)
            labels.append(path)
        batches.append(images)
    if not labels:
        raise UsageError(f"no images: name image ({IMAGE_FORMATS}) or .npy files after the flags")
    return labels, np.concatenate(batches)


def predict(
    model_dir: str, paths: list[str], version: int | None = None, invert: bool = False
) -> list[str]:
    """The lines ``label: class (probability p)`` for every image in ``paths``.

    ``invert`` turns each image's pixels x into 1 - x first. An image with a bright border
    gets a hint on its line: the model knows white digits on black only.
    """
    labels, images = read_images(paths)
    if invert:
        images = 1.0 - images
    serving_dir = version_dir(model_dir, version)
    signature = tf.saved_model.load(serving_dir).signatures[tf_serving.DEFAULT_SIGNATURE]
    inputs = signature.structured_input_signature[1]
    if set(inputs) != {"rows"}:
        raise UsageError(
            f"{serving_dir} is not an MNIST model: its {tf_serving.DEFAULT_SIGNATURE} takes "
            f"{', '.join(sorted(inputs))}, not rows"
        )
    try:
        outputs = signature(rows=tf.constant(images))
    except tf.errors.InvalidArgumentError as error:
        raise UsageError(tf_serving.signature_error(error)) from error
    classes = outputs["classes"].numpy()
    probabilities = outputs["probabilities"].numpy()
    hint = "; bright background: the model reads white digits on black, " + (
        "try without --invert" if invert else "try --invert"
    )
    return [
        f"{label}: {digit} (probability {probabilities[row, digit]:.3f})" + (hint if bright else "")
        for row, (label, digit, bright) in enumerate(
            zip(labels, classes, bright_background(images), strict=True)
        )
    ]


def main(argv, flag_values=None):
    """The command: one line per image named after the flags."""
    values = flags.FLAGS if flag_values is None else flag_values
    for line in predict(values.model, argv[1:], values.version, values.invert):
        print(line)


def define_flags(flag_values=None):
    """Defines the command's flags (in ``flag_values``, or absl's global flags)."""
    flag_values = flags.FLAGS if flag_values is None else flag_values
    flags.DEFINE_string(
        "model",
        None,
        "exported model folder, e.g. models/mnist (or one version of it, models/mnist/1)",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "version", None, "version to use; default: the highest", flag_values=flag_values
    )
    flags.DEFINE_boolean(
        "invert",
        False,
        "invert the pixels (1 - x) first, for dark digits on a light background",
        flag_values=flag_values,
    )
    flags.mark_flag_as_required("model", flag_values=flag_values)
