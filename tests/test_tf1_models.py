"""Tests of tfrnn.tf1 on users' own models without the TF1 graphs: which scopes are found,
what is refused, and the command's folder.

The checkpoints are written with the op a TF1 ``Saver`` runs (``SaveV2``), from random arrays
under TF1's names; ``tests/test_tf1_lockstep.py`` checks the numbers against real TF1 graphs.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from command_testing import user_environment

from tests.test_convert import save_tf1_checkpoint
from tfrnn.errors import UsageError
from tfrnn.tf1 import convert, recurrent_layers, tutorials
from tfrnn.tf1.recurrent import find_recurrent_scopes


def _arrays(shapes: dict, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        name: rng.uniform(-0.5, 0.5, size=shape).astype(np.float32)
        for name, shape in shapes.items()
    }


def _lstm(scope, inputs, units, kernel="kernel", bias="bias"):
    return {f"{scope}/{kernel}": (inputs + units, 4 * units), f"{scope}/{bias}": (4 * units,)}


def _rnn(scope, inputs, units, kernel="kernel", bias="bias"):
    return {f"{scope}/{kernel}": (inputs + units, units), f"{scope}/{bias}": (units,)}


def _gru(scope, inputs, units):
    return {
        f"{scope}/gates/kernel": (inputs + units, 2 * units),
        f"{scope}/gates/bias": (2 * units,),
        f"{scope}/candidate/kernel": (inputs + units, units),
        f"{scope}/candidate/bias": (units,),
    }


def _scopes(shapes: dict) -> dict:
    """{scope: (description, input width, output width)} of what is found in ``shapes``."""
    return {
        scope.scope: (scope.describe(), scope.input_size, scope.output_size)
        for scope in find_recurrent_scopes(_arrays(shapes))
    }


def test_each_rnn_call_is_one_scope_named_as_tf1_named_it():
    shapes = {
        **_lstm("rnn/multi_rnn_cell/cell_0/lstm_cell", 3, 4),
        **_gru("rnn/multi_rnn_cell/cell_1/gru_cell", 4, 2),
        **_lstm("Model/RNN/rnn/multi_rnn_cell/cell_0/basic_lstm_cell", 5, 6),
        **_lstm("bidirectional_rnn/fw/lstm_cell", 3, 2),
        **_rnn("bidirectional_rnn/bw/basic_rnn_cell", 3, 5),
        **_gru("encoder/my_scope/gru_cell", 7, 3),
        "dense/kernel": (4, 2),
        "dense/bias": (2,),
        "embedding": (10, 5),
    }
    assert _scopes(shapes) == {
        "rnn/multi_rnn_cell": ("MultiRNNCell([LSTMCell(4), GRUCell(2)])", 3, 2),
        "Model/RNN/rnn/multi_rnn_cell": ("MultiRNNCell([BasicLSTMCell(6)])", 5, 6),
        "bidirectional_rnn": ("bidirectional, fw: LSTMCell(2), bw: BasicRNNCell(5)", 3, 7),
        "encoder/my_scope/gru_cell": ("GRUCell(3)", 7, 3),
    }


def test_peepholes_projection_and_the_old_names_are_read():
    shapes = {
        "rnn/lstm_cell/weights": (3 + 2, 4 * 5),  # num_proj 2: the state fed back is 2 wide
        "rnn/lstm_cell/biases": (20,),
        "rnn/lstm_cell/w_i_diag": (5,),
        "rnn/lstm_cell/w_f_diag": (5,),
        "rnn/lstm_cell/w_o_diag": (5,),
        "rnn/lstm_cell/projection/weights": (5, 2),
    }
    assert _scopes(shapes) == {
        "rnn/lstm_cell": ("LSTMCell(5, use_peepholes=True, num_proj=2)", 3, 2)
    }


def test_a_cell_of_the_users_name_is_told_by_its_variables_or_refused():
    # A GRU by its gates/candidate, an LSTM by its peepholes, an RNN by a width that is no
    # multiple of 4; kernel (7, 8) with bias (8,) is an RNN of 8 units or an LSTM of 2.
    peepholes = {f"rnn/fw/mine/{diag}": (2,) for diag in ("w_i_diag", "w_f_diag", "w_o_diag")}
    shapes = {
        **_gru("rnn/my_gru", 3, 4),
        **_lstm("rnn/fw/mine", 1, 2),
        **peepholes,
        **_rnn("rnn/multi_rnn_cell/cell_0/odd", 2, 3),
    }
    assert {key: found[0] for key, found in _scopes(shapes).items()} == {
        "rnn/my_gru": "GRUCell(4)",
        "rnn/fw/mine": "LSTMCell(2, use_peepholes=True)",  # a lone fw: no bidirectional call
        "rnn/multi_rnn_cell": "MultiRNNCell([BasicRNNCell(3)])",
    }
    # Kernel (12, 8), bias (8,): a BasicRNNCell of 8 units on 4 inputs, or an LSTM of 2 on 10.
    ambiguous = _rnn("rnn/mine", 4, 8)
    with pytest.raises(UsageError, match=r"rnn/mine/kernel \(12, 8\) fits a BasicRNNCell of 8"):
        _scopes(ambiguous)
    # Below an LSTM that gives 4 outputs, only the BasicRNNCell fits.
    stacked = {**_lstm("rnn/cell_0/lstm_cell", 3, 4), **_rnn("rnn/cell_1/mine", 4, 8)}
    assert _scopes(stacked) == {"rnn": ("MultiRNNCell([LSTMCell(4), BasicRNNCell(8)])", 3, 8)}


# (the variables, what the one line must say)
REFUSED = {
    "tf_0_12": (
        {"RNN/MultiRNNCell/Cell0/BasicLSTMCell/Linear/Matrix": (7, 16)},
        "RNN/MultiRNNCell/Cell0/BasicLSTMCell/Linear/Matrix: TF 0.12's variable names",
    ),
    "layer_missing": (
        {
            **_lstm("rnn/multi_rnn_cell/cell_0/lstm_cell", 3, 4),
            **_lstm("rnn/multi_rnn_cell/cell_2/lstm_cell", 4, 4),
        },
        "rnn/multi_rnn_cell: a MultiRNNCell without cell_1, though it has cell_2",
    ),
    "layer_of_the_wrong_width": (
        {
            **_lstm("rnn/multi_rnn_cell/cell_0/lstm_cell", 3, 4),
            **_lstm("rnn/multi_rnn_cell/cell_1/lstm_cell", 5, 4),
        },
        "rnn/multi_rnn_cell/cell_1/lstm_cell takes inputs 5 wide but "
        "rnn/multi_rnn_cell/cell_0/lstm_cell below it gives 4",
    ),
    "a_variable_the_family_lacks": (
        {**_lstm("rnn/basic_lstm_cell", 3, 4), "rnn/basic_lstm_cell/w_f_diag": (4,)},
        "cell rnn/basic_lstm_cell: rnn/basic_lstm_cell/w_f_diag is no variable of a TF1 "
        "BasicLSTMCell",
    ),
    "another_cell_family": (
        {
            **_lstm("rnn/layer_norm_basic_lstm_cell", 3, 4),
            "rnn/layer_norm_basic_lstm_cell/input/gamma": (4,),
        },
        "layer_norm_basic_lstm_cell/input/gamma is no variable of the TF1 cells tfrnn converts",
    ),
    "misshaped_gru": (
        {**_gru("rnn/gru_cell", 3, 4), "rnn/gru_cell/gates/bias": (6,)},
        "cell rnn/gru_cell: ",
    ),
    "directions_of_different_widths": (
        {
            **_lstm("bidirectional_rnn/fw/lstm_cell", 3, 2),
            **_lstm("bidirectional_rnn/bw/lstm_cell", 4, 2),
        },
        "bidirectional_rnn: its forward and backward cells take inputs of different widths (3, 4)",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_what_cannot_be_mapped_is_refused_naming_it_and_nothing_is_written(tmp_path, case):
    shapes, message = REFUSED[case]
    prefix = save_tf1_checkpoint(tmp_path / "model.ckpt", _arrays(shapes))
    with pytest.raises(UsageError) as raised:
        convert.convert(prefix, str(tmp_path / "out"))
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)
    assert "variables found: " in str(raised.value)
    assert sorted(os.listdir(tmp_path)) == ["model.ckpt.data-00000-of-00001", "model.ckpt.index"]


def test_clips_are_refused_for_a_tutorials_graph(tmp_path):
    c2 = {"Variable": (6, 10), "Variable_1": (10,), **_lstm("rnn/basic_lstm_cell", 28, 6)}
    prefix = save_tf1_checkpoint(tmp_path / "model.ckpt", _arrays(c2))
    with pytest.raises(UsageError, match="--cell_clip applies to LSTMCell models"):
        convert.convert(prefix, str(tmp_path / "out"), "C2", cell_clip=3.0)


def test_a_tutorial_checkpoint_of_tf_1_0_gives_the_model_of_its_tf_1_2_names(tmp_path):
    c2 = _arrays({"Variable": (6, 10), "Variable_1": (10,), **_lstm("rnn/basic_lstm_cell", 28, 6)})
    old = {
        name.replace("/kernel", "/weights").replace("/bias", "/biases"): v for name, v in c2.items()
    }
    assert "rnn/basic_lstm_cell/weights" in old
    conversions = {
        era: convert.convert(
            save_tf1_checkpoint(tmp_path / f"{era}.ckpt", variables), str(tmp_path / era), "C2"
        )
        for era, variables in (("new", c2), ("old", old))
    }
    assert conversions["old"].renamed == {
        "rnn/basic_lstm_cell/weights": "rnn/basic_lstm_cell/kernel",
        "rnn/basic_lstm_cell/biases": "rnn/basic_lstm_cell/bias",
    }
    images = np.random.default_rng(2).uniform(size=(2, 28, 28)).astype(np.float32)
    logits = [tutorials.build_model(c)(images) for c in conversions.values()]
    np.testing.assert_array_equal(logits[0], logits[1])
    record = json.loads((tmp_path / "old" / "conversion.json").read_text())
    assert record["naming"] == convert.OLD_NAMES


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _tf1_stack(variables, inputs, lengths, forget_bias):
    """TF1's outputs and final states of a MultiRNNCell([BasicLSTMCell, BasicRNNCell]) under
    dynamic_rnn with sequence_length, written out in numpy."""
    lstm_kernel, lstm_bias, rnn_kernel, rnn_bias = (
        variables[f"rnn/multi_rnn_cell/cell_{name}"]
        for name in (
            "0/basic_lstm_cell/kernel",
            "0/basic_lstm_cell/bias",
            "1/basic_rnn_cell/kernel",
            "1/basic_rnn_cell/bias",
        )
    )
    batch, time = inputs.shape[:2]
    c = h = np.zeros((batch, lstm_bias.shape[0] // 4))
    top = np.zeros((batch, rnn_bias.shape[0]))
    outputs = np.zeros((batch, time, top.shape[1]))
    for step in range(time):
        i, j, f, o = np.split(
            np.concatenate([inputs[:, step], h], 1) @ lstm_kernel + lstm_bias, 4, 1
        )
        new_c = c * _sigmoid(f + forget_bias) + _sigmoid(i) * np.tanh(j)
        new_h = _sigmoid(o) * np.tanh(new_c)
        new_top = np.tanh(np.concatenate([new_h, top], 1) @ rnn_kernel + rnn_bias)
        valid = (step < lengths)[:, None]
        c, h, top = (
            np.where(valid, new, old) for new, old in ((new_c, c), (new_h, h), (new_top, top))
        )
        outputs[:, step] = np.where(valid, new_top, 0.0)
    return outputs, (c, h, top)


@pytest.mark.parametrize("unroll", [False, True])
def test_recurrent_layers_compute_tf1s_arithmetic(tmp_path, unroll):
    shapes = {
        **_lstm("rnn/multi_rnn_cell/cell_0/basic_lstm_cell", 3, 4),
        **_rnn("rnn/multi_rnn_cell/cell_1/basic_rnn_cell", 4, 5),
    }
    variables = _arrays(shapes)
    prefix = save_tf1_checkpoint(tmp_path / "model.ckpt", variables)
    ((name, layer),) = recurrent_layers(prefix, 0.5, unroll=unroll, return_state=True).items()
    assert name == "rnn/multi_rnn_cell"
    inputs = np.random.default_rng(1).normal(size=(3, 6, 3)).astype(np.float32)
    lengths = np.array([6, 2, 4])
    outputs, (h, c), (top,) = layer(inputs, mask=np.arange(6)[None, :] < lengths[:, None])
    expected, (expected_c, expected_h, expected_top) = _tf1_stack(variables, inputs, lengths, 0.5)
    np.testing.assert_allclose(outputs, expected, atol=1e-6)
    for state, expected_state in ((c, expected_c), (h, expected_h), (top, expected_top)):
        np.testing.assert_allclose(state, expected_state, atol=1e-6)


def test_the_command_writes_each_layer_and_the_other_variables(tmp_path):
    shapes = {
        **_lstm("rnn/multi_rnn_cell/cell_0/basic_lstm_cell", 3, 4, "weights", "biases"),
        **_rnn("rnn/multi_rnn_cell/cell_1/basic_rnn_cell", 4, 5, "weights", "biases"),
        "fully_connected/weights": (5, 2),
        "fully_connected/biases": (2,),
    }
    variables = _arrays(shapes)
    slots = {f"{name}/Adam": value for name, value in variables.items()}
    prefix = save_tf1_checkpoint(
        tmp_path / "model.ckpt",
        {**variables, **slots, "beta1_power": np.float32(0.9), "global_step": np.int64(7)},
    )
    out = tmp_path / "converted"
    finished = subprocess.run(
        [sys.executable, "-m", "tfrnn.convert", "--tf1_checkpoint", prefix, "--workdir", str(out)],
        env=user_environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finished.returncode == 0, finished.stderr
    printed = finished.stdout
    assert "rnn/multi_rnn_cell: MultiRNNCell([BasicLSTMCell(4), BasicRNNCell(5)]) -> " in printed
    assert f"{out}/rnn_multi_rnn_cell.keras" in printed
    assert "2 other variables (fully_connected/biases, fully_connected/weights)" in printed
    assert "left out 7 optimizer variables and global_step" in printed
    assert sorted(os.listdir(out)) == [
        "conversion.json",
        "rnn_multi_rnn_cell.keras",
        "variables.npz",
    ]
    record = json.loads((out / "conversion.json").read_text())
    assert record["naming"] == convert.OLD_NAMES
    assert record["folded"] == {"forget_bias": 1.0}
    assert record["layers"]["rnn/multi_rnn_cell"]["file"] == "rnn_multi_rnn_cell.keras"
    others = np.load(out / "variables.npz")
    assert sorted(others.files) == ["fully_connected/biases", "fully_connected/weights"]
    np.testing.assert_array_equal(
        others["fully_connected/weights"], variables["fully_connected/weights"]
    )
    layer = keras.saving.load_model(out / "rnn_multi_rnn_cell.keras").layers[0]
    inputs = np.random.default_rng(3).normal(size=(2, 4, 3)).astype(np.float32)
    renamed = {
        name.replace("/weights", "/kernel").replace("/biases", "/bias"): v
        for name, v in variables.items()
    }
    expected, _ = _tf1_stack(renamed, inputs, np.array([4, 1]), 1.0)
    np.testing.assert_allclose(
        layer(inputs, mask=np.array([[1, 1, 1, 1], [1, 0, 0, 0]], bool)), expected, atol=1e-6
    )
