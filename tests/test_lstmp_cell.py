"""Tests of tfrnn.layers.lstmp_cell.LSTMPCell: Keras' LSTMCell when plain, hand-computed
steps for each option, a numpy reference for all of them, serialisation."""

import math

import keras
import numpy as np
import pytest

from tfrnn.layers.cells import RNN
from tfrnn.layers.lstmp_cell import LSTMPCell

Constant = keras.initializers.Constant


def _sigmoid(value):
    return 1.0 / (1.0 + math.exp(-value))


def _clip(value, bound):
    return max(-bound, min(bound, value))


# Two sequences of two steps of one feature.
TWO_STEPS = np.array([[[1.0], [2.0]], [[-1.0], [-2.0]]], dtype="float32")


def _run_two_steps(input_peephole=0.3, forget_peephole=0.2, output_peephole=0.1, **options):
    """outputs (2, 2, r), h (2, r) and c (2, 2) of an LSTMPCell(2) over TWO_STEPS.

    Every kernel entry 0.5, recurrent kernel 0.25, bias 0.1 (no forget bias), projection
    0.4; the peepholes, if any, as given. So every unit of a row has the same value, and each
    gate's pre-activation is 0.5 x + 0.25 (sum of h) + 0.1.
    """
    cell = LSTMPCell(
        2,
        kernel_initializer=Constant(0.5),
        recurrent_initializer=Constant(0.25),
        bias_initializer=Constant(0.1),
        unit_forget_bias=False,
        projection_initializer=Constant(0.4),
        **options,
    )
    cell.build((None, 1))
    if cell.use_peepholes:
        cell.input_peephole.assign([input_peephole] * 2)
        cell.forget_peephole.assign([forget_peephole] * 2)
        cell.output_peephole.assign([output_peephole] * 2)
    layer = keras.layers.RNN(cell, return_sequences=True, return_state=True)
    return [np.asarray(tensor) for tensor in layer(TWO_STEPS)]


def _assert_rows(result, rows):
    """``result`` (outputs, h, c) holds, for each row, the values (m1, m2, c2) in every unit:
    outputs m1 then m2, final h m2, final c c2."""
    outputs, h, c = result
    expected_outputs = np.array([[[m1], [m2]] for m1, m2, _ in rows]) * np.ones(outputs.shape)
    expected_c = np.array([[c2] for *_, c2 in rows]) * np.ones(c.shape)
    np.testing.assert_allclose(outputs, expected_outputs, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(h, outputs[:, -1])
    np.testing.assert_allclose(c, expected_c, rtol=1e-6, atol=1e-7)


def test_peepholes_input_and_forget_read_the_old_cell_state_output_the_new():
    rows = []
    for x1, x2 in ((1.0, 2.0), (-1.0, -2.0)):
        z1 = 0.5 * x1 + 0.1
        c1 = _sigmoid(z1) * math.tanh(z1)  # c0 = 0: the input and forget peepholes add 0
        m1 = _sigmoid(z1 + 0.1 * c1) * math.tanh(c1)  # the output peephole reads the new c1
        z2 = 0.5 * x2 + 0.25 * 2 * m1 + 0.1
        c2 = _sigmoid(z2 + 0.2 * c1) * c1 + _sigmoid(z2 + 0.3 * c1) * math.tanh(z2)
        m2 = _sigmoid(z2 + 0.1 * c2) * math.tanh(c2)
        rows.append((m1, m2, c2))
    result = _run_two_steps(use_peepholes=True)
    _assert_rows(result, rows)
    assert not np.allclose(result[0], _run_two_steps()[0], atol=1e-3)


def test_cell_clip_bounds_the_cell_state_both_ways():
    rows = []
    for x1, x2 in ((1.0, 2.0), (-1.0, -2.0)):
        z1 = 0.5 * x1 + 0.1
        c1 = _clip(_sigmoid(z1) * math.tanh(z1), 0.1)
        m1 = _sigmoid(z1) * math.tanh(c1)
        z2 = 0.5 * x2 + 0.25 * 2 * m1 + 0.1
        c2 = _clip(_sigmoid(z2) * c1 + _sigmoid(z2) * math.tanh(z2), 0.1)
        m2 = _sigmoid(z2) * math.tanh(c2)
        rows.append((m1, m2, c2))
    result = _run_two_steps(cell_clip=0.1)
    _assert_rows(result, rows)
    np.testing.assert_array_equal(np.abs(result[2]), np.float32(0.1))  # the clip bound
    assert not np.allclose(result[0], _run_two_steps()[0], atol=1e-3)


def _projected_rows(projection_clip=math.inf):
    rows = []
    for x1, x2 in ((1.0, 2.0), (-1.0, -2.0)):
        z1 = 0.5 * x1 + 0.1
        c1 = _sigmoid(z1) * math.tanh(z1)
        # Each of the 3 projected outputs sums the 2 units times 0.4.
        m1 = _clip(2 * 0.4 * _sigmoid(z1) * math.tanh(c1), projection_clip)
        z2 = 0.5 * x2 + 0.25 * 3 * m1 + 0.1  # the recurrent kernel reads the 3 outputs
        c2 = _sigmoid(z2) * c1 + _sigmoid(z2) * math.tanh(z2)
        m2 = _clip(2 * 0.4 * _sigmoid(z2) * math.tanh(c2), projection_clip)
        rows.append((m1, m2, c2))
    return rows


def test_projection_gives_outputs_and_h_of_the_projected_width():
    result = _run_two_steps(projection_units=3)
    assert [array.shape for array in result] == [(2, 2, 3), (2, 3), (2, 2)]
    _assert_rows(result, _projected_rows())


def test_projection_clip_bounds_the_projected_output():
    result = _run_two_steps(projection_units=3, projection_clip=0.05)
    _assert_rows(result, _projected_rows(projection_clip=0.05))
    # The first row's outputs reach the bound, the second's first output stays inside it.
    np.testing.assert_array_equal(result[0][0], np.float32(0.05))
    assert abs(result[0][1, 0, 0]) < 0.05
    assert not np.allclose(result[0], _run_two_steps(projection_units=3)[0], atol=1e-3)


def _random_weights(cell, seed):
    rng = np.random.default_rng(seed)
    return [rng.normal(scale=0.6, size=weight.shape) for weight in cell.get_weights()]


@pytest.mark.parametrize("unroll", [False, True])
def test_plain_cell_is_keras_lstm_cell_bit_for_bit(unroll):
    sequence = np.random.default_rng(0).normal(size=(3, 5, 2)).astype("float32")
    options = dict(return_sequences=True, return_state=True, unroll=unroll)
    ours = RNN(LSTMPCell(4), **options)
    theirs = RNN(keras.layers.LSTMCell(4), **options)
    ours(sequence)
    theirs(sequence)
    weights = _random_weights(ours, seed=1)
    ours.set_weights(weights)
    theirs.set_weights(weights)  # the same weights, in the same order and shapes
    for got, want in zip(ours(sequence), theirs(sequence), strict=True):
        np.testing.assert_array_equal(got, want)


def _reference(sequence, initial_state, weights, cell_clip, projection_clip):
    """numpy: TF1 LSTMCell's formulas over ``sequence`` (batch, time, features)."""

    def sigmoid(value):
        return 1.0 / (1.0 + np.exp(-value))

    kernel, recurrent_kernel, bias, input_peephole, forget_peephole, output_peephole, projection = (
        weights
    )
    h, c = initial_state
    outputs = []
    for x in np.moveaxis(sequence, 1, 0):
        i, f, g, o = np.split(x @ kernel + h @ recurrent_kernel + bias, 4, axis=-1)
        c_new = sigmoid(f + forget_peephole * c) * c + sigmoid(i + input_peephole * c) * np.tanh(g)
        c = np.clip(c_new, -cell_clip, cell_clip)
        m = sigmoid(o + output_peephole * c) * np.tanh(c)
        h = np.clip(m @ projection, -projection_clip, projection_clip)
        outputs.append(h)
    return np.stack(outputs, axis=1), h, c


def test_all_options_together_equal_a_numpy_reference():
    rng = np.random.default_rng(2)
    sequence = rng.normal(size=(3, 5, 2)).astype("float32")
    initial_state = [
        rng.normal(size=(3, 3)).astype("float32"),
        rng.normal(size=(3, 4)).astype("float32"),
    ]
    cell = LSTMPCell(4, projection_units=3, use_peepholes=True, cell_clip=0.8, projection_clip=0.3)
    layer = keras.layers.RNN(cell, return_sequences=True, return_state=True)
    layer(sequence)
    weights = [weight.astype("float32") for weight in _random_weights(cell, seed=3)]
    assert [weight.name for weight in cell.weights] == [
        "kernel",
        "recurrent_kernel",
        "bias",
        "input_peephole",
        "forget_peephole",
        "output_peephole",
        "projection_kernel",
    ]
    cell.set_weights(weights)
    got = layer(sequence, initial_state=initial_state)
    want = _reference(sequence, initial_state, weights, cell_clip=0.8, projection_clip=0.3)
    for got_array, want_array in zip(got, want, strict=True):
        np.testing.assert_allclose(got_array, want_array, rtol=1e-5, atol=1e-6)
    # Both clips did bind somewhere, so the reference checked them.
    assert np.any(np.abs(want[0]) == np.float32(0.3)) and np.any(np.abs(want[2]) == np.float32(0.8))


def test_weights_and_initial_state():
    cell = LSTMPCell(4, projection_units=3)
    cell.build((None, 5))
    shapes = {weight.name: tuple(weight.shape) for weight in cell.weights}
    assert shapes == {
        "kernel": (5, 16),
        "recurrent_kernel": (3, 16),
        "bias": (16,),
        "projection_kernel": (4, 3),
    }
    # unit_forget_bias: the f block (Keras' order i, f, c, o) starts at 1.
    np.testing.assert_array_equal(cell.bias.numpy(), np.repeat([0.0, 1.0, 0.0, 0.0], 4))
    assert cell.state_size == [3, 4] and cell.output_size == 3
    h, c = cell.get_initial_state(batch_size=2)
    np.testing.assert_array_equal(h, np.zeros((2, 3)))
    np.testing.assert_array_equal(c, np.zeros((2, 4)))
    peephole_cell = LSTMPCell(4, use_peepholes=True, unit_forget_bias=False)
    peephole_cell.build((None, 5))
    assert [weight.name for weight in peephole_cell.weights][3:] == [
        "input_peephole",
        "forget_peephole",
        "output_peephole",
    ]
    np.testing.assert_array_equal(peephole_cell.bias.numpy(), np.zeros(16))
    assert peephole_cell.state_size == [4, 4]


@pytest.mark.parametrize(
    "options, argument",
    [
        (dict(units=0), "units"),
        (dict(units=True), "units"),
        (dict(units=2.5), "units"),
        (dict(units=3, projection_units=0), "projection_units"),
        (dict(units=3, projection_units="2"), "projection_units"),
        (dict(units=3, cell_clip=0), "cell_clip"),
        (dict(units=3, cell_clip=-1.0), "cell_clip"),
        (dict(units=3, cell_clip=True), "cell_clip"),
        (dict(units=3, cell_clip="1"), "cell_clip"),
        (dict(units=3, projection_units=2, projection_clip=float("nan")), "projection_clip"),
        (dict(units=3, projection_clip=1.0), "projection_clip .*needs projection_units"),
    ],
)
def test_bad_arguments_name_the_argument(options, argument):
    with pytest.raises(ValueError, match=argument):
        LSTMPCell(**options)


def _all_options_cell():
    return LSTMPCell(
        4,
        projection_units=3,
        use_peepholes=True,
        cell_clip=0.8,
        projection_clip=0.3,
        activation="softsign",
        unit_forget_bias=False,
        peephole_initializer="zeros",
    )


def test_config_round_trip():
    cell = _all_options_cell()
    config = cell.get_config()
    assert LSTMPCell.from_config(config).get_config() == config
    layer = keras.layers.deserialize(keras.layers.serialize(RNN(cell)))
    assert isinstance(layer.cell, LSTMPCell)
    assert layer.cell.get_config() == config


def test_save_and_load_keras_file_gives_identical_outputs(tmp_path):
    inputs = keras.Input((5, 2))
    model = keras.Model(inputs, RNN(_all_options_cell(), return_sequences=True)(inputs))
    model.layers[1].cell.set_weights(_random_weights(model.layers[1].cell, seed=4))
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    sequence = np.random.default_rng(5).normal(size=(2, 5, 2)).astype("float32")
    np.testing.assert_array_equal(loaded(sequence), model(sequence))
    assert loaded.layers[1].cell.get_config() == model.layers[1].cell.get_config()
