"""Tests of tfrnn.convert without the TF1 graphs: recognising checkpoints, and bad input.

The checkpoints here are written with the same op a TF1 ``Saver`` runs (``SaveV2``), under
the tutorials' variable names, from random arrays; ``tests/test_convert_lockstep.py`` checks
the conversion against checkpoints of the real TF1 graphs.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from command_testing import user_environment

from tfrnn.errors import UsageError
from tfrnn.serving import export
from tfrnn.tf1 import convert, tutorials
from tfrnn.tf1.checkpoint import OPTIMIZER_SCALARS, STEP_COUNTER


def _arrays(shapes: dict, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    return {name: rng.normal(size=shape).astype(np.float32) for name, shape in shapes.items()}


def _lstm_classifier(units, inputs=28):
    """C1's and C2's variables, with Adam's slots and beta powers beside them."""
    shapes = {
        "Variable": (units, 10),
        "Variable_1": (10,),
        "rnn/basic_lstm_cell/kernel": (inputs + units, 4 * units),
        "rnn/basic_lstm_cell/bias": (4 * units,),
    }
    slots = {
        f"{name}/{slot}": shape for name, shape in shapes.items() for slot in ("Adam", "Adam_1")
    }
    return _arrays({**shapes, **slots, "beta1_power": (), "beta2_power": ()})


def _c3(units, projection):
    return _arrays(
        {
            "Variable": (28, projection),
            "Variable_1": (units, 10),
            "Variable_2": (projection,),
            "Variable_3": (10,),
            "rnn/basic_lstm_cell/kernel": (projection + units, 4 * units),
            "rnn/basic_lstm_cell/bias": (4 * units,),
        }
    )


def _echo(cell_scope, kernel, bias, units):
    shapes = {
        f"{cell_scope}/{kernel}": (2 + units, units),
        f"{cell_scope}/{bias}": (units,),
        "softmax/W": (units, 2),
        "softmax/b": (2,),
    }
    slots = {f"{name}/Adagrad": shape for name, shape in shapes.items()}
    return _arrays({**shapes, **slots})


def save_tf1_checkpoint(prefix, variables: dict) -> str:
    """Writes ``variables`` (name -> array) as a TF1 Saver checkpoint at ``prefix``."""
    names = sorted(variables)
    tf.raw_ops.SaveV2(
        prefix=str(prefix),
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tf.constant(variables[name]) for name in names],
    )
    return str(prefix)


@pytest.mark.parametrize(
    "variables, tutorial, expected",
    [
        (_echo("rnn_cell", "W", "b", 4), None, ("A", "concat", 4, 0)),
        (_echo("rnn/basic_rnn_cell", "kernel", "bias", 16), None, ("A", "simple", 16, 0)),
        (_lstm_classifier(100), None, ("C1", "lstm", 100, 0)),
        (_lstm_classifier(128), None, ("C2", "lstm", 128, 0)),
        (_lstm_classifier(128), "C1", ("C1", "lstm", 128, 0)),
        (_lstm_classifier(7), "C2", ("C2", "lstm", 7, 0)),
        (_c3(128, 128), None, ("C3", "lstm", 128, 128)),
        (_c3(6, 9), None, ("C3", "lstm", 6, 9)),
    ],
)
def test_recognises_each_tutorial_graph_and_its_sizes(variables, tutorial, expected):
    found = tutorials.recognise(variables, tutorial)
    assert (found.tutorial, found.cell, found.units, found.projection) == expected
    # Optimizer slots are left out of the model's variables.
    assert not [name for name in found.variables if "Adam" in name or "Adagrad" in name]
    assert len(found.variables) + len(found.training) == len(variables)
    assert found.forget_bias == (None if expected[0] == "A" else 1.0)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_lstm_weights_compute_what_basic_lstm_cell_computes():
    # BasicLSTMCell's arithmetic, written out: z = [x, h] K + b in blocks i, j, f, o;
    # c' = c sigmoid(f + forget_bias) + sigmoid(i) tanh(j); h' = tanh(c') sigmoid(o).
    units, forget_bias = 5, 0.7
    variables = _lstm_classifier(units)
    found = tutorials.recognise(variables, "C1", forget_bias=forget_bias)
    model = tutorials.build_model(found)
    images = np.random.default_rng(1).uniform(size=(3, 28, 28)).astype(np.float32)
    kernel, bias = variables["rnn/basic_lstm_cell/kernel"], variables["rnn/basic_lstm_cell/bias"]
    c = h = np.zeros((3, units))
    for row in range(28):
        z = np.concatenate([images[:, row], h], axis=1) @ kernel + bias
        i, j, f, o = np.split(z, 4, axis=1)
        c = c * _sigmoid(f + forget_bias) + _sigmoid(i) * np.tanh(j)
        h = np.tanh(c) * _sigmoid(o)
    logits = h @ variables["Variable"] + variables["Variable_1"]
    np.testing.assert_allclose(model(images), logits, atol=1e-5)


def test_refuses_a_workdir_that_is_a_file(tmp_path):
    prefix = save_tf1_checkpoint(tmp_path / "model.ckpt", _lstm_classifier(100))
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match=r"notes.txt is a file, not a folder$"):
        convert.convert(prefix, str(tmp_path / "notes.txt"))
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_refuses_a_workdir_that_is_not_empty_and_leaves_it_alone(tmp_path):
    prefix = save_tf1_checkpoint(tmp_path / "model.ckpt", _lstm_classifier(100))
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="exists and is not empty"):
        convert.convert(prefix, str(workdir))
    assert os.listdir(workdir) == ["notes.txt"]
    # An empty folder is taken.
    empty = tmp_path / "empty"
    empty.mkdir()
    convert.convert(prefix, str(empty))
    assert sorted(os.listdir(empty)) == [
        "config.json",
        "conversion.json",
        "metrics.json",
        "model.keras",
    ]


@pytest.mark.parametrize(
    "variables, tutorial, task, signatures",
    [
        (_echo("rnn_cell", "W", "b", 4), None, "echo", ["serving_default", "step"]),
        (_lstm_classifier(5), "C1", "mnist", ["serving_default"]),
    ],
    ids=["A", "C1"],
)
def test_the_workdir_records_its_task_and_exports_as_it(
    tmp_path, variables, tutorial, task, signatures
):
    prefix = save_tf1_checkpoint(tmp_path / "model.ckpt", variables)
    workdir = str(tmp_path / "run")
    convert.convert(prefix, workdir, tutorial)
    with open(os.path.join(workdir, "config.json")) as handle:
        config = json.load(handle)
    with open(os.path.join(workdir, "metrics.json")) as handle:
        assert json.load(handle)["config"] == config
    assert config["task"] == task
    description = export.export_workdir(workdir, str(tmp_path / "models"))
    assert (description["task"], sorted(description["signatures"])) == (task, signatures)


def _without(variables, name):
    return {key: value for key, value in variables.items() if key != name}


def _with(variables, name, shape):
    return {**variables, name: np.zeros(shape, np.float32)}


# (what is wrong, the checkpoint's variables or None for no checkpoint, extra flags, what the
# one line must say)
BAD_CHECKPOINTS = {
    "no_such_prefix": (None, [], "no TF1 checkpoint there"),
    "another_model": (
        _arrays({"dense/kernel": (4, 3), "dense/bias": (3,)}),
        [],
        "no TF1 recurrent cell in the checkpoint",
    ),
    "cudnn": (
        _arrays({"cudnn_lstm/opaque_kernel": (96,), "dense/kernel": (4, 3)}),
        [],
        "cudnn_lstm/opaque_kernel: CudnnLSTM/CudnnGRU keep their weights in one opaque cuDNN "
        "buffer, which is out of scope",
    ),
    "missing_variable": (
        _without(_lstm_classifier(100), "Variable_1"),
        ["--tutorial", "C1"],
        "looks like the graph of tutorial C1 or C2 (BasicLSTMCell and a classifier) but lacks "
        "Variable_1; variables found: Variable (100, 10), rnn/basic_lstm_cell/bias (400,), "
        "rnn/basic_lstm_cell/kernel (128, 400) (and 10 optimizer variables)",
    ),
    "misshaped_variable": (
        _with(_lstm_classifier(100), "rnn/basic_lstm_cell/kernel", (30, 400)),
        [],
        "rnn/basic_lstm_cell/kernel has shape (30, 400); expected (128, 400)",
    ),
    "ambiguous": (
        _lstm_classifier(64),
        [],
        "ambiguous checkpoint: an LSTM of 64 units with a classifier is C1's graph or C2's",
    ),
    "tutorial_that_does_not_fit": (
        _lstm_classifier(100),
        ["--tutorial", "C3"],
        "--tutorial C3 does not fit the checkpoint",
    ),
}


# The case run as the real command, for its exit status and stderr; the others call the
# command's conversion in this process, whose UsageError the command prints as its one line
# and exit 2 (tfrnn.cli.run), sparing a TensorFlow start-up each.
THROUGH_THE_COMMAND = "another_model"


def _convert_in_process(prefix: str, workdir: str, flags: list) -> tuple[int, str]:
    """(exit status, stderr) that the command would give, from convert() in this process."""
    options = dict(zip(flags[::2], flags[1::2], strict=True))
    try:
        convert.convert(prefix, workdir, options.get("--tutorial"))
    except UsageError as error:
        return 2, f"error: {error}\n"
    return 0, ""


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory):
    """{case: (its folder, exit status, stderr)}: every bad checkpoint converted."""
    finished = {}
    for case, (variables, flags, _) in BAD_CHECKPOINTS.items():
        folder = tmp_path_factory.mktemp(case)
        prefix = str(folder / "model.ckpt")
        if variables is not None:
            save_tf1_checkpoint(prefix, variables)
        if case != THROUGH_THE_COMMAND:
            finished[case] = (folder, *_convert_in_process(prefix, str(folder / "out"), flags))
            continue
        command = [sys.executable, "-m", "tfrnn.convert", "--tf1_checkpoint", prefix]
        command += ["--workdir", str(folder / "out"), *flags]
        process = subprocess.run(
            command, env=user_environment(), stderr=subprocess.PIPE, timeout=120
        )
        finished[case] = (folder, process.returncode, process.stderr.decode())
    return finished


@pytest.mark.parametrize("case", list(BAD_CHECKPOINTS))
def test_bad_checkpoint_is_one_line_exit_2_and_nothing_written(bad_runs, case):
    variables, _, message = BAD_CHECKPOINTS[case]
    folder, returncode, stderr = bad_runs[case]
    assert returncode == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert message in lines[0]
    # The line lists what the checkpoint holds (names and shapes).
    listed = "variables found: none" if variables is None else "variables found: "
    assert listed in lines[0]
    for name in variables or {}:
        if "/Adam" not in name and name not in (*OPTIMIZER_SCALARS, STEP_COUNTER):
            assert f"{name} {variables[name].shape}" in lines[0]
    assert not (folder / "out").exists()
    assert sorted(os.listdir(folder)) == (
        [] if variables is None else ["model.ckpt.data-00000-of-00001", "model.ckpt.index"]
    )
