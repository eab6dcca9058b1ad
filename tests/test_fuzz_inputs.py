"""Fuzzed IDX files, run configurations and flags: each is read (or run) correctly, or refused
with one line that names the file or flag at fault, never a traceback."""

import gzip
import math
import struct

import numpy as np
import pytest
from absl import flags
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tfrnn import cli
from tfrnn.data import mnist as mnist_data
from tfrnn.errors import UsageError
from tfrnn.tasks.echo.config import EchoConfig, check_config
from tfrnn.tasks.mnist import config as mnist_config

FUZZ = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,  # the same cases on every run: a failure is reproducible in CI
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
TRIED = {}  # what -> cases, printed by the last test


def _count(name):
    TRIED[name] = TRIED.get(name, 0) + 1


# An IDX file is damaged in one of these ways, or left whole.
DAMAGE = st.sampled_from(["none", "none", "truncate", "overwrite", "magic", "dims", "append"])


def _damaged(content: bytes, damage: str, position: int, byte: int) -> bytes:
    position %= max(len(content), 1)
    if damage == "truncate":
        return content[:position]
    if damage == "overwrite":
        return content[:position] + bytes([byte]) + content[position + 1 :]
    if damage == "magic":
        return struct.pack(">i", byte * 7919) + content[4:]
    if damage == "dims":
        return content[:4] + struct.pack(">i", byte - 128) + content[8:]
    if damage == "append":
        return content + bytes([byte])
    return content


@FUZZ
@given(
    num_images=st.integers(0, 4),
    num_labels=st.integers(0, 4),
    image_size=st.sampled_from([28, 28, 27]),
    damage=st.tuples(DAMAGE, DAMAGE),
    positions=st.tuples(st.integers(0, 10_000), st.integers(0, 10_000)),
    byte=st.integers(0, 255),
    compressed=st.booleans(),
)
def test_idx_files_are_read_exactly_or_refused_naming_the_file(
    tmp_path_factory, num_images, num_labels, image_size, damage, positions, byte, compressed
):
    _count("IDX folders")
    folder = tmp_path_factory.mktemp("idx")
    rng = np.random.default_rng(num_images * 7 + num_labels)
    images = rng.integers(0, 256, (num_images, image_size, image_size), dtype=np.uint8)
    labels = rng.integers(0, 10, num_labels, dtype=np.uint8)
    paths = []
    for name, array, kind, position in zip(
        mnist_data.IDX_FILES["train"], (images, labels), damage, positions, strict=True
    ):
        plain = folder / (name + "_plain")
        mnist_data.write_idx(str(plain), array)
        content = _damaged(plain.read_bytes(), kind, position, byte)
        path = folder / (name + (".gz" if compressed else ""))
        path.write_bytes(gzip.compress(content) if compressed else content)
        paths.append(str(path))
    damaged = any(
        _damaged(mnist_data._idx_header(a) + a.tobytes(), kind, position, byte)
        != mnist_data._idx_header(a) + a.tobytes()
        for a, kind, position in zip((images, labels), damage, positions, strict=True)
    )
    try:
        read_images, read_labels, _ = mnist_data.read_idx_split(str(folder), "train")
    except UsageError as error:
        message = str(error)
        assert "\n" not in message
        assert any(path in message for path in paths) or str(folder) in message, message
        assert damaged or num_images != num_labels or image_size != 28
        return
    # Read: then the files held a consistent split, and it is what was written.
    assert read_images.shape[1:] == (28, 28) and len(read_images) == len(read_labels)
    if not damaged:
        np.testing.assert_array_equal(read_images, images)
        np.testing.assert_array_equal(read_labels, labels)


NUMBERS = st.one_of(
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, -1, 28, 2**31]),
)


@FUZZ
@given(
    preset=st.sampled_from([None, "C1", "C2", "C3"]),
    overrides=st.dictionaries(
        st.sampled_from(
            ["epochs", "train_steps", "batch_size", "units", "learning_rate", "input_projection"]
            + ["validation_size", "seed", "adam_epsilon", "eval_every"]
        ),
        NUMBERS,
        max_size=3,
    ),
)
def test_mnist_configurations_are_accepted_in_range_or_refused_in_one_line(preset, overrides):
    _count("MNIST configurations")
    fields = {field for field in mnist_config.Config.__dataclass_fields__}
    overrides = {name: value for name, value in overrides.items() if name in fields}
    try:
        config = mnist_config.config_for(preset, **overrides)
        mnist_config.validate(config)
    except UsageError as error:
        assert "\n" not in str(error) and str(error).startswith("--"), error
        return
    for name, (low, high) in mnist_config.BOUNDS.items():
        assert low <= getattr(config, name) <= high
    for name in ("learning_rate", "adam_epsilon"):
        assert math.isfinite(getattr(config, name)) and getattr(config, name) > 0


@FUZZ
@given(
    fields=st.fixed_dictionaries(
        {},
        optional={
            name: NUMBERS
            for name in ("num_steps", "state_size", "epochs", "batch_size", "seed")
            + ("series_length", "learning_rate")
        },
    )
)
def test_echo_configurations_are_accepted_in_range_or_refused_in_one_line(fields):
    _count("echo configurations")
    try:
        config = check_config(EchoConfig(**fields))
    except UsageError as error:
        assert "\n" not in str(error), error
        return
    assert config.num_steps >= 1 and config.state_size >= 1 and config.batch_size >= 1
    assert math.isfinite(config.learning_rate) and config.learning_rate > 0


@FUZZ
@given(
    name=st.sampled_from(["num_steps", "state_size", "epochs", "seed", "cell", "mode", "suite"]),
    value=st.one_of(
        st.text(max_size=8), st.sampled_from(["-1", "0", "1e9", "nan", "", "lstm", "x"])
    ),
)
def test_echo_flags_are_refused_in_one_line_or_run(echo_command, capsys, tmp_path, name, value):
    # Values that would start training are not sent: only the refusal is under test here.
    _count("echo flags")
    argv = ["echo_deps", f"--{name}={value}", f"--workdir={tmp_path}", "--series_length=0"]
    with pytest.raises(SystemExit) as exit_info:
        cli.run(echo_command.main, argv=argv)
    flags.FLAGS.unparse_flags()
    error = capsys.readouterr().err
    assert exit_info.value.code != 0
    assert error.count("\n") == 1 and error.startswith("error: "), error


def test_every_input_was_fuzzed():
    print(f"fuzzed inputs: {TRIED}")
    assert set(TRIED) == {
        "IDX folders",
        "MNIST configurations",
        "echo configurations",
        "echo flags",
    }
    assert min(TRIED.values()) >= FUZZ.max_examples
