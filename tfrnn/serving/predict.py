"""Classify digit images with an exported MNIST model, the way a person tries it by hand.

    python -m tfrnn.predict --model models/mnist digit.png other.jpg images.npy
    python -m tfrnn.predict --model models/mnist --version 2 digit.png
    python -m tfrnn.predict --model models/mnist --invert black_on_white.png

prints which model answered, then one line per image::

    model models/mnist, version 3
    digit.png: 7 (probability 0.981)

It runs the export's ``serving_default`` signature, as TF Serving would, from the highest
version in ``--model`` (or ``--version N``); ``--model`` may also name one version folder
(``models/mnist/1``). Every file gets an answer: a file that cannot be read gets one line
``error: <file> …`` on stderr, after the answers of the others, and the exit status is then 1
(2 for a usage error, such as a missing model, when nothing is answered).

Images, like the MNIST training images: grayscale, a white digit on black.

* Image files that TensorFlow's ``tf.io.decode_image`` reads: PNG, JPEG, GIF (the first
  frame), BMP and WebP. Colour becomes luminance; pixels are divided by 255.
* Transparency (PNG, BMP, WebP with alpha): transparent pixels are background, and each
  pixel's ink is its alpha times its contrast with the background its ink implies: light
  ink (alpha-weighted mean above 0.5) is drawn on black, ``ink = alpha * gray``; dark ink on
  white, ``ink = alpha * (1 - gray)``. Either way the digit comes out white on black.
* A 28x28 image is used as it is. An image of any other size is brought to 28x28 the way
  MNIST's own images were made (:func:`mnist_field`): the digit's bounding box is fitted into
  20x20 pixels keeping its aspect ratio (anti-aliased), then placed in the 28x28 field with
  its centre of mass at the centre.
* ``.npy`` files of one image (28, 28) or a batch (n, 28, 28): uint8 pixels (divided by
  255), or floats already scaled to [0, 1]. Each image is reported as ``file.npy[i]``.

An image whose border is bright (mean above 0.5) is most likely a dark digit on white: its
line says so, and ``--invert`` (pixels ``1 - x``, before any resizing) turns it white on black.
"""

from __future__ import annotations

import dataclasses
import os
import sys

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
# MNIST's digits fill a 20x20 box of the 28x28 field, their centre of mass at pixel (14, 14)
# (the test set's mean is (13.99, 14.01), spread 0.3: whole-pixel shifts).
DIGIT_BOX = 20
FIELD_CENTRE = IMAGE_SIZE // 2
# A pixel belongs to the digit's bounding box if its ink is at least this share of the
# image's brightest, so that faint noise (JPEG's ringing) does not widen the box. Measured on
# 300 MNIST test digits enlarged 10x: 238 come back exactly (all 300 with any ink counted),
# and saved as JPEG of quality 75, the mean pixel error is 0.003 (0.027 with any ink).
BOX_INK_SHARE = 0.1


# What --help says ({command}: how to run it from the current folder, tfrnn.cli.help_text).
USAGE = """\
Classifies digit images with an exported MNIST model, as TF Serving would answer them: one
line per image, after a line naming the model folder and version that answered. Images of
any size are fitted into MNIST's 28x28 field; a file that cannot be read gets an error line
and exit status 1.

examples:
  {command} --model models/mnist digit.png other.jpg images.npy
  {command} --model models/mnist --version 2 digit.png
  {command} --model models/mnist --invert black_on_white.png

More: docs/serving.md.
"""


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
    if os.path.isfile(model_dir):
        return f"--model {model_dir} is a file, not a folder: name the export's folder"
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


def mnist_field(pixels: np.ndarray) -> np.ndarray:
    """A white-on-black digit image (height, width) of any size as MNIST's 28x28 field.

    As LeCun et al. made MNIST from NIST's images: the bounding box of the digit's pixels
    (ink at least :data:`BOX_INK_SHARE` of the brightest) is resized so that its longer
    side is 20 pixels, keeping the aspect ratio (area averaging when it shrinks, which
    anti-aliases; bilinear when it grows), and placed in a black 28x28 field with its centre
    of mass on pixel (14, 14), moved by whole pixels and kept inside the field. An image
    without ink gives a black field. Returns float32 (28, 28).
    """
    field = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.float32)
    if pixels.max() <= 0:
        return field
    rows, columns = np.nonzero(pixels >= BOX_INK_SHARE * pixels.max())
    digit = pixels[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1]
    scale = DIGIT_BOX / max(digit.shape)
    size = [max(1, round(side * scale)) for side in digit.shape]
    method = "area" if scale < 1 else "bilinear"
    digit = tf.image.resize(digit[..., None], size, method=method)[..., 0].numpy()
    top, left = _field_offset(digit.sum(axis=1)), _field_offset(digit.sum(axis=0))
    field[top : top + digit.shape[0], left : left + digit.shape[1]] = digit
    return field


def _field_offset(profile: np.ndarray) -> int:
    """Where a digit starts in the field along one axis, given its ``profile`` (side,), its
    ink summed across that axis: its centre of mass on FIELD_CENTRE, in whole pixels, the
    digit kept inside the field."""
    centre_of_mass = np.sum(profile * np.arange(len(profile))) / profile.sum()
    return int(np.clip(round(FIELD_CENTRE - centre_of_mass), 0, IMAGE_SIZE - len(profile)))


def _read_image(path: str, invert: bool) -> tuple[np.ndarray, bool]:
    """(the image as float32 (1, 28, 28), whether its border is bright before resizing)."""
    pixels = ink(_decode(path))
    if invert:
        pixels = 1.0 - pixels
    bright = bool(bright_background(pixels[None])[0])
    if pixels.shape != (IMAGE_SIZE, IMAGE_SIZE):
        pixels = mnist_field(pixels)
    return pixels[None].astype(np.float32), bright


def bright_background(images: np.ndarray) -> np.ndarray:
    """bool (n,): whether each image of (n, height, width) has a border brighter than
    BRIGHT_BORDER."""
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
    if not len(images):
        raise UsageError(f"{path} holds no images: its array has shape {images.shape}")
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    if images.dtype.kind != "f":
        raise UsageError(f"{path} holds {images.dtype}; expected uint8 pixels or floats in [0, 1]")
    if not (images.min() >= 0.0 and images.max() <= 1.0):
        raise UsageError(
            f"{path} holds floats from {images.min()} to {images.max()}; scale the pixels to "
            "[0, 1] (pixel / 255) or save them as uint8"
        )
    return images.astype(np.float32)


def read_file(path: str, invert: bool = False) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(a label per image, float32 images (n, 28, 28) in [0, 1], bool (n,) bright borders)
    of one image or .npy file; UsageError if it cannot be read.

    ``invert`` turns each image's pixels x into 1 - x first; the border is judged after it.
    """
    if os.path.isdir(path):
        raise UsageError(f"{path} is a folder, not an image file")
    if not os.path.isfile(path):
        raise UsageError(f"{path} does not exist")
    if path.endswith(".npy"):
        images = _read_npy(path)
        if invert:
            images = 1.0 - images
        labels = [f"{path}[{index}]" for index in range(len(images))]
        return labels, images, bright_background(images)
    image, bright = _read_image(path, invert)
    return [path], image, np.array([bright])


@dataclasses.dataclass(frozen=True)
class Answers:
    """What :func:`predict` found: ``model``, the line naming the model folder and version
    that answered; ``lines``, one ``label: class (probability p)`` per image read, in the
    order of the files; ``errors``, one line per file that could not be read."""

    model: str
    lines: list[str]
    errors: list[str]


def model_line(serving_dir: str) -> str:
    """``model models/mnist, version 3`` for the version folder ``serving_dir``."""
    folder, version = os.path.split(os.path.normpath(serving_dir))
    if not version.isdigit():
        return f"model {serving_dir}"
    return f"model {folder or '.'}, version {version}"


def predict(
    model_dir: str, paths: list[str], version: int | None = None, invert: bool = False
) -> Answers:
    """The answers of the model version in ``model_dir`` for every image in ``paths``.

    A file that cannot be read gets its line in ``errors`` and the others are answered.
    ``invert`` turns each image's pixels x into 1 - x first. An image with a bright border
    gets a hint on its line: the model knows white digits on black only. UsageError for a
    model that cannot answer (missing, not an MNIST model) or no file named.
    """
    if not paths:
        raise UsageError(f"no images: name image ({IMAGE_FORMATS}) or .npy files after the flags")
    serving_dir = version_dir(model_dir, version)
    labels, batches, bright, errors = [], [], [], []
    for path in paths:
        try:
            file_labels, images, file_bright = read_file(path, invert)
        except UsageError as error:
            errors.append(str(error))
            continue
        labels += file_labels
        batches.append(images)
        bright.append(file_bright)
    lines = []
    if labels:
        hint = "; bright background: the model reads white digits on black, " + (
            "try without --invert" if invert else "try --invert"
        )
        answers = _classify(serving_dir, labels, np.concatenate(batches))
        lines = [
            answer + (hint if is_bright else "")
            for answer, is_bright in zip(answers, np.concatenate(bright), strict=True)
        ]
    return Answers(model_line(serving_dir), lines, errors)


def _classify(serving_dir: str, labels: list[str], images: np.ndarray) -> list[str]:
    """``label: class (probability p)`` for each of ``images`` (n, 28, 28) by the
    ``serving_default`` signature of ``serving_dir``."""
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
    return [
        f"{label}: {digit} (probability {probabilities[row, digit]:.3f})"
        for row, (label, digit) in enumerate(zip(labels, classes, strict=True))
    ]


def main(argv, flag_values=None):
    """The command: the model line and one line per image named after the flags; an error
    line per file that could not be read, and then exit status 1."""
    values = flags.FLAGS if flag_values is None else flag_values
    answers = predict(values.model, argv[1:], values.version, values.invert)
    print(answers.model)
    for line in answers.lines:
        print(line)
    sys.stdout.flush()
    for error in answers.errors:
        print(f"error: {error}", file=sys.stderr)
    if answers.errors:
        sys.exit(1)


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
