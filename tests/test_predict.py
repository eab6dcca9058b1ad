"""Tests of tfrnn.predict: image files and .npy arrays through an exported MNIST model."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from export_testing import mnist_model, random_images, save_workdir
from PIL import Image  # matplotlib depends on Pillow

from tfrnn.errors import UsageError
from tfrnn.serving import export, predict


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(Keras model, export dir with version 1, folder for image files)."""
    root = tmp_path_factory.mktemp("predict")
    model = mnist_model(seed=3)
    workdir = save_workdir(root / "run", model, {"task": "mnist", "cell": "lstm"})
    export.export_workdir(workdir, str(root / "models" / "mnist"))
    (root / "images").mkdir()
    return model, str(root / "models" / "mnist"), root / "images"


def _write_png(path, pixels):
    """Writes uint8 ``pixels``, (height, width) gray or (height, width, channels), as a PNG."""
    tf.io.write_file(str(path), tf.io.encode_png(pixels if pixels.ndim == 3 else pixels[..., None]))
    return str(path)


def _expected_lines(model, labels, pixels):
    probabilities = np.asarray(keras.ops.softmax(model(pixels.astype(np.float32) / 255.0), -1))
    return [
        f"{label}: {digit} (probability {probabilities[row, digit]:.3f})"
        for row, (label, digit) in enumerate(zip(labels, probabilities.argmax(-1), strict=True))
    ]


def test_pngs_and_npy_give_the_models_classes(exported, capsys):
    model, model_dir, images_dir = exported
    pixels = np.round(random_images(5, seed=4) * 255).astype(np.uint8)
    pngs = [_write_png(images_dir / f"digit{index}.png", pixels[index]) for index in range(2)]
    np.save(images_dir / "batch.npy", pixels[2:])
    np.save(images_dir / "scaled.npy", pixels[0].astype(np.float32) / 255.0)  # one image, floats
    paths = [*pngs, str(images_dir / "batch.npy"), str(images_dir / "scaled.npy")]
    labels = [*pngs, *(f"{images_dir / 'batch.npy'}[{i}]" for i in range(3))]
    labels.append(f"{images_dir / 'scaled.npy'}[0]")
    expected = _expected_lines(model, labels, np.concatenate([pixels, pixels[:1]]))
    flag_values = flags.FlagValues()
    predict.define_flags(flag_values)
    argv = flag_values(["predict", f"--model={model_dir}", *paths])
    predict.main(argv, flag_values)
    assert capsys.readouterr().out.splitlines() == expected
    assert len({line.split(": ")[1].split()[0] for line in expected}) > 1  # not one class for all


def test_versions_are_chosen_and_checked(exported):
    _, model_dir, images_dir = exported
    path = _write_png(images_dir / "blank.png", np.zeros((28, 28), np.uint8))
    assert predict.version_dir(model_dir) == os.path.join(model_dir, "1")
    assert len(predict.predict(model_dir, [path], version=1)) == 1
    with pytest.raises(UsageError, match=r"has no version 4; it has 1$"):
        predict.predict(model_dir, [path], version=4)
    with pytest.raises(UsageError, match="holds no exported model"):
        predict.predict(str(images_dir), [path])


@pytest.mark.parametrize(
    "name, write, message",
    [
        ("missing.png", None, r"missing.png does not exist"),
        (
            "notes.png",
            lambda path: path.write_text("not an image"),
            r"notes.png is not an image TensorFlow can decode; it reads PNG, JPEG, GIF, BMP "
            r"or WebP$",
        ),
        (
            "big.png",
            lambda path: _write_png(path, np.zeros((32, 30), np.uint8)),
            r"big.png is 30x32 pixels; expected 28x28",
        ),
        (
            "flat.npy",
            lambda path: np.save(path, np.zeros((3, 784), np.uint8)),
            r"flat.npy holds an array of shape \(3, 784\); expected \(n, 28, 28\)",
        ),
        (
            "raw.npy",
            lambda path: np.save(path, np.full((28, 28), 255.0, np.float32)),
            r"raw.npy holds floats from 255.0 to 255.0; scale the pixels to \[0, 1\]",
        ),
        ("text.npy", lambda path: path.write_text("1 2 3"), r"text.npy is not a NumPy .npy file"),
    ],
    ids=["missing", "not_png", "wrong_size", "npy_shape", "npy_unscaled", "npy_corrupt"],
)
def test_bad_files_are_one_line_errors(exported, name, write, message):
    _, model_dir, images_dir = exported
    path = images_dir / name
    if write:
        write(path)
    with pytest.raises(UsageError, match=message) as error:
        predict.predict(model_dir, [str(path)])
    assert "\n" not in str(error.value)


def test_an_echo_export_is_refused(tmp_path):
    from tfrnn.tasks.echo.model import build_echo_model

    workdir = save_workdir(
        tmp_path / "run", build_echo_model("simple", 3), {"task": "echo", "cell": "simple"}
    )
    export.export_workdir(workdir, str(tmp_path / "models" / "echo"))
    path = _write_png(tmp_path / "blank.png", np.zeros((28, 28), np.uint8))
    with pytest.raises(
        UsageError, match=r"is not an MNIST model: its serving_default takes symbols"
    ):
        predict.predict(str(tmp_path / "models" / "echo"), [path])


def test_command_error_is_one_line_and_exit_2(exported):
    _, model_dir, images_dir = exported
    path = images_dir / "cli.png"
    path.write_bytes(b"\x89PNG broken")
    result = subprocess.run(
        [sys.executable, "-m", "tfrnn.predict", f"--model={model_dir}", str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 2
    # TensorFlow's own start-up lines on a machine without CUDA may come first.
    assert result.stderr.splitlines()[-1] == (
        f"error: {path} is not an image TensorFlow can decode; it reads {predict.IMAGE_FORMATS}"
    )
    assert "Traceback" not in result.stderr and result.stdout == ""


def _digit(seed=4):
    """uint8 (28, 28): a white blob on a dark noisy ground, like a white-on-black digit."""
    return np.round(random_images(1, seed=seed)[0] * 255).astype(np.uint8)


def _write_pillow(path, pixels, **save_options):
    """Saves a Pillow image of ``pixels`` (uint8 (28, 28) gray, or (28, 28, 4) RGBA)."""
    Image.fromarray(pixels).save(path, **save_options)
    return str(path)


def test_black_on_white_gets_a_hint_and_invert_reads_it(exported):
    model, model_dir, images_dir = exported
    digit = _digit()
    plain = _write_png(images_dir / "plain.png", digit)
    dark = _write_png(images_dir / "dark_on_white.png", 255 - digit)
    (expected,) = _expected_lines(model, [dark], digit[None])
    (plain_line, dark_line) = predict.predict(model_dir, [plain, dark])
    assert "bright background" not in plain_line
    assert dark_line.startswith(f"{dark}: ")
    assert dark_line.endswith(
        "; bright background: the model reads white digits on black, try --invert"
    )
    assert predict.predict(model_dir, [dark], invert=True) == [expected]
    (inverted_plain,) = predict.predict(model_dir, [plain], invert=True)
    assert inverted_plain.endswith("try without --invert")


def test_transparent_backgrounds_read_as_white_on_black(exported):
    model, model_dir, images_dir = exported
    digit = _digit()
    # Ink in the alpha channel; the colour of fully transparent pixels is black, as editors
    # often leave it.
    white, black = np.zeros((28, 28, 4), np.uint8), np.zeros((28, 28, 4), np.uint8)
    white[..., :3] = np.where(digit > 0, 255, 0)[..., None]
    white[..., 3] = black[..., 3] = digit
    paths = [
        _write_png(images_dir / "white_on_clear.png", white),
        _write_png(images_dir / "black_on_clear.png", black),
        _write_pillow(images_dir / "black_on_clear.webp", black, lossless=True),
    ]
    expected = _expected_lines(model, paths, np.stack([digit] * 3))
    assert predict.predict(model_dir, paths) == expected
    # Without its alpha the black digit is a black square: a different answer.
    assert _expected_lines(model, paths[1:2], np.zeros((1, 28, 28))) != expected[1:2]


def test_the_formats_decode_image_reads(exported):
    model, model_dir, images_dir = exported
    digit = _digit()
    # Lossless: the lines equal the plain PNG's. GIF: only the first frame counts.
    paths = [
        _write_pillow(images_dir / "digit.bmp", digit),
        _write_pillow(
            images_dir / "digit.gif",
            digit,
            save_all=True,
            append_images=[Image.fromarray(np.zeros((28, 28), np.uint8))],
        ),
        _write_pillow(images_dir / "digit.webp", digit, lossless=True),
        _write_pillow(images_dir / "rgba.bmp", np.dstack([digit] * 3 + [np.full_like(digit, 255)])),
    ]
    assert Image.open(paths[1]).n_frames == 2
    assert predict.predict(model_dir, paths) == _expected_lines(model, paths, np.stack([digit] * 4))
    jpeg = images_dir / "digit.jpg"
    tf.io.write_file(str(jpeg), tf.io.encode_jpeg(digit[..., None], quality=100))
    (line,) = predict.predict(model_dir, [str(jpeg)])  # lossy: the class is the same
    assert line.split()[1] == _expected_lines(model, [""], digit[None])[0].split()[1]


def test_unknown_and_corrupt_files_are_one_line_errors_naming_them(exported):
    _, model_dir, images_dir = exported
    tiff = _write_pillow(images_dir / "digit.tiff", _digit())
    cut = images_dir / "cut.png"
    cut.write_bytes(tf.io.encode_png(_digit()[..., None]).numpy()[:60])
    for path in (tiff, str(cut)):
        with pytest.raises(UsageError) as error:
            predict.predict(model_dir, [path])
        assert str(error.value) == (
            f"{path} is not an image TensorFlow can decode; it reads PNG, JPEG, GIF, BMP or WebP"
        )


def test_model_may_be_a_version_folder_and_a_workdir_gets_a_hint(exported, tmp_path):
    model, model_dir, images_dir = exported
    path = _write_png(images_dir / "digit_for_model.png", _digit())
    version_dir = os.path.join(model_dir, "1")
    assert predict.predict(version_dir, [path]) == _expected_lines(model, [path], _digit()[None])
    with pytest.raises(UsageError, match=f"^--model {version_dir} is one version folder; leave"):
        predict.predict(version_dir, [path], version=1)
    workdir = tmp_path / "runs" / "mnist"
    os.makedirs(workdir / "export" / "1")
    with pytest.raises(UsageError) as error:
        predict.predict(str(workdir), [path])
    assert str(error.value) == (
        f"{workdir} is a training workdir; its exported model is {workdir / 'export'}: "
        f"use --model {workdir / 'export'}"
    )
    with pytest.raises(UsageError, match=f"^--model {tmp_path / 'none'} does not exist$"):
        predict.predict(str(tmp_path / "none"), [path])
