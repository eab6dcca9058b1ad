"""Tests of tfrnn.predict: image files and .npy arrays through an exported MNIST model."""

import os
import re
import shutil
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
    assert capsys.readouterr().out.splitlines() == [f"model {model_dir}, version 1", *expected]
    assert len({line.split(": ")[1].split()[0] for line in expected}) > 1  # not one class for all


def test_versions_are_chosen_and_checked(exported):
    _, model_dir, images_dir = exported
    path = _write_png(images_dir / "blank.png", np.zeros((28, 28), np.uint8))
    assert predict.version_dir(model_dir) == os.path.join(model_dir, "1")
    assert len(predict.predict(model_dir, [path], version=1).lines) == 1
    with pytest.raises(UsageError, match=r"has no version 4; it has 1$"):
        predict.predict(model_dir, [path], version=4)
    with pytest.raises(UsageError, match="holds no exported model"):
        predict.predict(str(images_dir), [path])


@pytest.mark.parametrize(
    "name, write, message",
    [
        ("missing.png", None, r"missing.png does not exist$"),
        ("folder.png", lambda path: path.mkdir(), r"folder.png is a folder, not an image file$"),
        (
            "notes.png",
            lambda path: path.write_text("not an image"),
            r"notes.png is not an image TensorFlow can decode; it reads PNG, JPEG, GIF, BMP "
            r"or WebP$",
        ),
        (
            "flat.npy",
            lambda path: np.save(path, np.zeros((3, 784), np.uint8)),
            r"flat.npy holds an array of shape \(3, 784\); expected \(n, 28, 28\)$",
        ),
        (
            "empty.npy",
            lambda path: np.save(path, np.zeros((0, 28, 28), np.uint8)),
            r"empty.npy holds no images: its array has shape \(0, 28, 28\)$",
        ),
        (
            "raw.npy",
            lambda path: np.save(path, np.full((28, 28), 255.0, np.float32)),
            r"raw.npy holds floats from 255.0 to 255.0; scale the pixels to \[0, 1\]",
        ),
        ("text.npy", lambda path: path.write_text("1 2 3"), r"text.npy is not a NumPy .npy file"),
    ],
    ids=["missing", "folder", "not_png", "npy_shape", "npy_empty", "npy_unscaled", "npy_corrupt"],
)
def test_bad_files_are_one_line_errors(exported, name, write, message):
    _, model_dir, images_dir = exported
    path = images_dir / name
    if write:
        write(path)
    answers = predict.predict(model_dir, [str(path)])
    assert answers.lines == [] and len(answers.errors) == 1
    assert re.match(f"^{re.escape(str(path.parent))}/{message}", answers.errors[0])
    assert "\n" not in answers.errors[0]


def test_no_file_named_is_a_usage_error(exported):
    _, model_dir, _ = exported
    with pytest.raises(UsageError, match=r"^no images: name image \(PNG"):
        predict.predict(model_dir, [])


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


def test_a_batch_with_bad_files_answers_the_good_ones_and_exits_1(exported):
    model, model_dir, images_dir = exported
    good = [_write_png(images_dir / f"good{index}.png", _digit(seed=index)) for index in (5, 6)]
    broken = images_dir / "broken.png"
    broken.write_bytes(b"\x89PNG broken")
    missing = images_dir / "gone.png"
    result = subprocess.run(
        [sys.executable, "-m", "tfrnn.predict", f"--model={model_dir}"]
        + [good[0], str(broken), str(missing), good[1]],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 1
    expected = _expected_lines(model, good, np.stack([_digit(seed=5), _digit(seed=6)]))
    assert result.stdout.splitlines() == [f"model {model_dir}, version 1", *expected]
    # TensorFlow's own start-up lines on a machine without CUDA may come first.
    assert result.stderr.splitlines()[-2:] == [
        f"error: {broken} is not an image TensorFlow can decode; it reads {predict.IMAGE_FORMATS}",
        f"error: {missing} does not exist",
    ]
    assert "Traceback" not in result.stderr


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
    (plain_line, dark_line) = predict.predict(model_dir, [plain, dark]).lines
    assert "bright background" not in plain_line
    assert dark_line.startswith(f"{dark}: ")
    assert dark_line.endswith(
        "; bright background: the model reads white digits on black, try --invert"
    )
    assert predict.predict(model_dir, [dark], invert=True).lines == [expected]
    (inverted_plain,) = predict.predict(model_dir, [plain], invert=True).lines
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
    assert predict.predict(model_dir, paths).lines == expected
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
    assert predict.predict(model_dir, paths).lines == _expected_lines(
        model, paths, np.stack([digit] * 4)
    )
    jpeg = images_dir / "digit.jpg"
    tf.io.write_file(str(jpeg), tf.io.encode_jpeg(digit[..., None], quality=100))
    (line,) = predict.predict(model_dir, [str(jpeg)]).lines  # lossy: the class is the same
    assert line.split()[1] == _expected_lines(model, [""], digit[None])[0].split()[1]


def test_unknown_and_corrupt_files_are_one_line_errors_naming_them(exported):
    _, model_dir, images_dir = exported
    tiff = _write_pillow(images_dir / "digit.tiff", _digit())
    cut = images_dir / "cut.png"
    cut.write_bytes(tf.io.encode_png(_digit()[..., None]).numpy()[:60])
    assert predict.predict(model_dir, [tiff, str(cut)]).errors == [
        f"{path} is not an image TensorFlow can decode; it reads PNG, JPEG, GIF, BMP or WebP"
        for path in (tiff, str(cut))
    ]


def test_model_may_be_a_version_folder_and_a_workdir_gets_a_hint(exported, tmp_path):
    model, model_dir, images_dir = exported
    path = _write_png(images_dir / "digit_for_model.png", _digit())
    version_dir = os.path.join(model_dir, "1")
    answers = predict.predict(version_dir, [path])
    assert answers.lines == _expected_lines(model, [path], _digit()[None])
    assert answers.model == f"model {model_dir}, version 1"
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
    with pytest.raises(UsageError, match=f"^--model {path} is a file, not a folder"):
        predict.predict(str(path), [path])


def test_the_first_line_names_the_version_that_answered(exported, tmp_path):
    _, model_dir, images_dir = exported
    path = _write_png(images_dir / "digit_for_versions.png", _digit())
    models = tmp_path / "models" / "mnist"
    for version in ("1", "3"):
        shutil.copytree(os.path.join(model_dir, "1"), models / version)
    assert predict.predict(str(models), [path]).model == f"model {models}, version 3"
    assert predict.predict(str(models), [path], version=1).model == f"model {models}, version 1"


# A digit drawn in blocks of 10x10 pixels: 20 rows by 16 columns of blocks, a "7" (a bar and
# a stroke down to the left), so that shrinking its 200x160 pixels by 10 gives it back exactly.
SEVEN = np.zeros((20, 16), np.float32)
SEVEN[:3] = 1.0
for _row in range(3, 20):
    _column = 15 - (_row - 3) * 13 // 16
    SEVEN[_row, max(0, _column - 2) : _column + 1] = 1.0


def _in_mnist_field(digit):
    """``digit`` placed in a black 28x28 field with its centre of mass at pixel (14, 14)."""
    field = np.zeros((28, 28), np.float32)
    rows, columns = np.indices(digit.shape)
    top = round(14 - np.sum(rows * digit) / digit.sum())
    left = round(14 - np.sum(columns * digit) / digit.sum())
    field[top : top + digit.shape[0], left : left + digit.shape[1]] = digit
    return field


def _centre_of_mass(field):
    rows, columns = np.indices(field.shape)
    return np.sum(rows * field) / field.sum(), np.sum(columns * field) / field.sum()


def test_a_large_image_is_fitted_into_mnists_field():
    # 280x280, the digit 200x160 pixels off centre, on a faintly noisy ground (below 10% of
    # the ink, so outside the digit's box): its box becomes 20x16, centred by mass.
    large = np.random.default_rng(0).uniform(0, 0.05, (280, 280)).astype(np.float32)
    large[30:230, 100:260] = np.kron(SEVEN, np.ones((10, 10), np.float32))
    field = predict.mnist_field(large)
    np.testing.assert_allclose(field, _in_mnist_field(SEVEN), atol=1e-6)
    np.testing.assert_allclose(_centre_of_mass(field), (14, 14), atol=0.5)
    # The aspect ratio is kept: the same digit on its side fills 16x20.
    wide = predict.mnist_field(np.kron(SEVEN.T, np.ones((10, 10), np.float32)))
    np.testing.assert_allclose(wide, _in_mnist_field(SEVEN.T), atol=1e-6)
    # A smaller image grows until its longer side is 20 pixels, centred by mass: a "0" of
    # 10x8 pixels becomes 20x16.
    zero = np.ones((10, 8), np.float32)
    zero[2:-2, 2:-2] = 0.0
    small = predict.mnist_field(zero)
    rows, columns = np.nonzero(small > 0)
    assert (rows.max() - rows.min() + 1, columns.max() - columns.min() + 1) == (20, 16)
    np.testing.assert_allclose(_centre_of_mass(small), (14, 14), atol=0.5)
    assert not predict.mnist_field(np.zeros((40, 30), np.float32)).any()


def test_a_280x280_png_gets_the_answer_of_its_28x28_original(exported):
    model, model_dir, images_dir = exported
    digit = np.round(_in_mnist_field(SEVEN) * 255).astype(np.uint8)
    original = _write_png(images_dir / "seven.png", digit)
    large = _write_png(images_dir / "seven_280.png", np.kron(digit, np.ones((10, 10), np.uint8)))
    lines = predict.predict(model_dir, [original, large]).lines
    assert lines == _expected_lines(model, [original, large], np.stack([digit, digit]))
    # Dark on white, enlarged: --invert turns it around before the digit is fitted.
    dark = _write_png(
        images_dir / "dark_seven_280.png", 255 - np.kron(digit, np.ones((10, 10), np.uint8))
    )
    assert predict.predict(model_dir, [dark], invert=True).lines == _expected_lines(
        model, [dark], digit[None]
    )
