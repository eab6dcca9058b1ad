"""tfrnn's RNN keeps keras.layers.RNN's contract in both unroll modes.

For each cell Keras accepts (one- and two-state cells, GRU's two arithmetics, stacks of
cells, a mixed stack of widths, tfrnn's LSTMPCell), tfrnn.layers.cells.RNN and
keras.layers.RNN are built from the same config and given the same seeded weights, and must
give the same outputs and final states, with return_sequences and return_state,
statefulness, masks and go_backwards, whether unrolled (tfrnn's own loop when there is no
mask and no go_backwards) or not.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrnn.layers.cells import RNN
from tfrnn.layers.lstmp_cell import LSTMPCell

BATCH, TIME, FEATURES = 3, 4, 2


def _stack(*cells):
    return keras.layers.StackedRNNCells(list(cells))


# Each cell as a function, so that every test builds its own, and the widths of the final
# states a layer with return_state returns after the output, in their nesting.
CELLS = {
    "simple": (lambda: keras.layers.SimpleRNNCell(3), [3]),
    "lstm": (lambda: keras.layers.LSTMCell(3), [3, 3]),
    "gru": (lambda: keras.layers.GRUCell(3), [3]),
    "gru_reset_before": (lambda: keras.layers.GRUCell(3, reset_after=False), [3]),
    "lstm_stack": (
        lambda: _stack(keras.layers.LSTMCell(3), keras.layers.LSTMCell(3)),
        [[3, 3], [3, 3]],
    ),
    "mixed_stack": (
        lambda: _stack(
            keras.layers.GRUCell(4), keras.layers.LSTMCell(3), keras.layers.SimpleRNNCell(2)
        ),
        [[4], [3, 3], [2]],
    ),
    "lstmp": (
        lambda: LSTMPCell(
            3, projection_units=2, use_peepholes=True, cell_clip=0.5, projection_clip=0.4
        ),
        [2, 3],
    ),
}


def _sequence(seed=0):
    return np.random.default_rng(seed).normal(size=(BATCH, TIME, FEATURES)).astype("float32")


def _pair(cell_name, keras_unroll=None, **options):
    """tfrnn's RNN and keras.layers.RNN with ``options`` around two cells of one config, built
    and given the same seeded random weights (biases too, so that none is zero). Keras'
    layer unrolls as ``keras_unroll`` says, by default as tfrnn's."""
    ours = RNN(CELLS[cell_name][0](), **options)
    ours(_sequence())
    rng = np.random.default_rng(1)
    ours.set_weights([rng.normal(scale=0.5, size=weight.shape) for weight in ours.get_weights()])
    if keras_unroll is not None:
        options["unroll"] = keras_unroll
    theirs = keras.layers.RNN(
        keras.layers.deserialize(keras.layers.serialize(ours.cell)), **options
    )
    theirs(_sequence())
    theirs.set_weights(ours.get_weights())
    if ours.stateful:
        ours.reset_state()
        _zero_states(theirs)
    return ours, theirs


def _zero_states(layer):
    # keras.layers.RNN.reset_state fails on a stack's nested states (keras 3.15).
    for state in keras.tree.flatten(layer.states):
        state.assign(np.zeros(state.shape, state.dtype))


def _plain(structure):
    """``structure`` with TensorFlow's tracking lists (a stateful stack's states come back in
    them from a while loop) as the plain lists they subclass."""
    if isinstance(structure, tuple):
        return tuple(_plain(item) for item in structure)
    if isinstance(structure, list):
        return [_plain(item) for item in structure]
    return structure


def _assert_same(ours, theirs):
    """Same nesting (list or tuple at every level) and the same numbers, bit for bit."""
    keras.tree.assert_same_structure(_plain(ours), _plain(theirs))
    for got, want in zip(keras.tree.flatten(ours), keras.tree.flatten(theirs), strict=True):
        np.testing.assert_array_equal(got, want)


def _right_padded_mask():
    """(batch, time) booleans: sequences of lengths 4, 2 and 3, padded on the right."""
    return np.arange(TIME)[None, :] < np.array([TIME, 2, 3])[:, None]


@pytest.mark.parametrize("unroll", [False, True])
@pytest.mark.parametrize("cell_name", CELLS)
def test_outputs_and_final_states(cell_name, unroll):
    for return_sequences in (False, True):
        ours, theirs = _pair(
            cell_name, return_sequences=return_sequences, return_state=True, unroll=unroll
        )
        got, want = ours(_sequence(2)), theirs(_sequence(2))
        _assert_same(got, want)
        # Keras' contract: the output, then each of the cell's top-level states.
        widths = keras.tree.map_structure(lambda state: state.shape[-1], list(got[1:]))
        assert widths == CELLS[cell_name][1]


@pytest.mark.parametrize("unroll", [False, True])
@pytest.mark.parametrize("cell_name", CELLS)
def test_stateful_calls_continue_and_reset_state_zeroes(cell_name, unroll):
    ours, theirs = _pair(cell_name, stateful=True, return_state=True, unroll=unroll)
    first, second = _sequence(3), _sequence(4)
    _assert_same(ours(first), theirs(first))
    continued = ours(second)  # starts from the first call's final state
    _assert_same(continued, theirs(second))
    _assert_same(ours.states, theirs.states)
    ours.reset_state()
    _zero_states(theirs)
    for state in keras.tree.flatten(ours.states):
        np.testing.assert_array_equal(state, np.zeros_like(state))
    fresh = ours(second)
    _assert_same(fresh, theirs(second))
    assert not np.array_equal(continued[0], fresh[0])  # the state did carry


@pytest.mark.parametrize("zero_output_for_mask", [False, True])
@pytest.mark.parametrize("unroll", [False, True])
@pytest.mark.parametrize("cell_name", CELLS)
def test_right_padded_mask(cell_name, unroll, zero_output_for_mask):
    options = dict(return_sequences=True, return_state=True, unroll=unroll)
    ours, theirs = _pair(cell_name, zero_output_for_mask=zero_output_for_mask, **options)
    mask = _right_padded_mask()
    got = ours(_sequence(5), mask=mask)
    _assert_same(got, theirs(_sequence(5), mask=mask))
    outputs = np.asarray(got[0])
    past_the_end = outputs[1, 2:]  # the second sequence has 2 valid steps
    if zero_output_for_mask:
        np.testing.assert_array_equal(past_the_end, 0.0)
    else:
        np.testing.assert_array_equal(past_the_end, np.stack([outputs[1, 1]] * 2))


@pytest.mark.parametrize("unroll", [False, True])
@pytest.mark.parametrize("cell_name", CELLS)
def test_go_backwards(cell_name, unroll):
    ours, theirs = _pair(cell_name, go_backwards=True, return_sequences=True, unroll=unroll)
    _assert_same(ours(_sequence(6)), theirs(_sequence(6)))


@pytest.mark.parametrize("unroll", [False, True])
@pytest.mark.parametrize("cell_name", CELLS)
def test_go_backwards_with_a_mask_gives_keras_while_loops_numbers(cell_name, unroll):
    # Keras' own unrolled loop zeroes, with zero_output_for_mask, the outputs of the steps
    # the unreversed mask skips (keras 3.15); its while loop and tfrnn's two loops zero the
    # outputs of the steps they skip: the first ones, going backwards over right padding.
    mask = _right_padded_mask()
    for zero_output_for_mask in (False, True):
        ours, theirs = _pair(
            cell_name,
            keras_unroll=False,
            go_backwards=True,
            zero_output_for_mask=zero_output_for_mask,
            return_sequences=True,
            return_state=True,
            unroll=unroll,
        )
        got = ours(_sequence(9), mask=mask)
        _assert_same(got, theirs(_sequence(9), mask=mask))
        second_sequence = np.asarray(got[0])[1]  # 2 valid steps, the last two it runs
        assert np.all(second_sequence[2:] != 0.0)
        if zero_output_for_mask:
            np.testing.assert_array_equal(second_sequence[:2], 0.0)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("unroll", [False, True])
def test_gradients_of_a_stack_equal_keras(unroll, masked):
    # The unrolled loop passes the carried states' gradients through
    # gradient_computed_once, whose gradient is the identity's.
    ours, theirs = _pair("mixed_stack", return_sequences=True, return_state=True, unroll=unroll)
    inputs = tf.constant(_sequence(7))
    mask = _right_padded_mask() if masked else None

    def gradients(layer):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            outputs, *states = layer(inputs, mask=mask)
            # Every output and final state enters the loss, each weighted differently.
            loss = sum(
                tf.reduce_sum(tf.sin(tensor) * (index + 1))
                for index, tensor in enumerate(keras.tree.flatten([outputs, states]))
            )
        return tape.gradient(loss, [inputs, *layer.trainable_variables])

    got, want = gradients(ours), gradients(theirs)
    # Equal up to float32 rounding (3e-8 seen): tfrnn's RNN reads each weight once, and
    # the tape sums that read's per-step gradients in another order than Keras' per-step reads.
    for ours_gradient, their_gradient in zip(got, want, strict=True):
        np.testing.assert_allclose(ours_gradient, their_gradient, rtol=1e-6, atol=1e-7)
    assert all(np.abs(gradient).sum() > 0 for gradient in got)


def test_one_cell_stack_unrolled_gives_the_while_loops_numbers():
    # A one-cell StackedRNNCells (TF1's MultiRNNCell([cell])) takes [[h, c]] and returns
    # [h, c]. Keras' while loop puts the states back in the initial nesting; its unrolled
    # loop does not and fails (keras 3.15). tfrnn's unrolled loop nests them as the while
    # loop does, so both modes give the while loop's numbers.
    options = dict(return_sequences=True, return_state=True)
    ours = RNN(_stack(keras.layers.LSTMCell(3)), unroll=True, **options)
    got = ours(_sequence(8))
    theirs = keras.layers.RNN(
        keras.layers.deserialize(keras.layers.serialize(ours.cell)), **options
    )
    theirs(_sequence(8))
    theirs.set_weights(ours.get_weights())
    _assert_same(got, theirs(_sequence(8)))
    assert [state.shape for state in got[1]] == [(BATCH, 3), (BATCH, 3)]
