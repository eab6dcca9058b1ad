"""Tests of tfrnn.layers.cells: exact numbers on tiny shapes, statefulness, serialisation."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrnn.layers.cells import (
    CELL_KINDS,
    RNN,
    TUTORIAL_CELL_KINDS,
    ConcatRNNCell,
    cell_kind,
    make_cell,
    make_rnn,
)
from tfrnn.layers.lstmp_cell import LSTMPCell


def _random_sequence(batch=3, time=6, features=2, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, time, features)).astype("float32")


@pytest.mark.parametrize("unroll", [False, True])
def test_concat_cell_equals_simple_rnn_cell_with_stacked_kernel(unroll):
    inputs = _random_sequence()
    simple = make_rnn("simple", 4, return_sequences=True, unroll=unroll)
    concat = make_rnn("concat", 4, return_sequences=True, unroll=unroll)
    simple_out = simple(inputs)
    concat(inputs)  # builds the weights
    kernel, recurrent_kernel, bias = simple.cell.get_weights()
    # Give the bias a non-zero value so that the test also checks how it is added.
    bias = np.linspace(-0.5, 0.5, 4).astype("float32")
    simple.cell.set_weights([kernel, recurrent_kernel, bias])
    concat.cell.set_weights([np.concatenate([kernel, recurrent_kernel], axis=0), bias])
    np.testing.assert_allclose(concat(inputs), simple(inputs), atol=1e-6)
    assert not np.allclose(simple(inputs), simple_out)  # the bias did change something


def test_concat_cell_hand_computed_two_steps():
    # input_dim 1, 2 units, W = 0.5 everywhere, b = 0.1: each unit sees
    # s1 = tanh(0.5*x1 + 0.1), s2 = tanh(0.5*x2 + 0.5*s1 + 0.5*s1 + 0.1).
    layer = make_rnn(
        "concat",
        2,
        return_sequences=True,
        kernel_initializer=keras.initializers.Constant(0.5),
        bias_initializer=keras.initializers.Constant(0.1),
    )
    outputs = np.asarray(layer(np.array([[[1.0], [2.0]]], dtype="float32")))
    s1 = math.tanh(0.5 * 1.0 + 0.1)
    s2 = math.tanh(0.5 * 2.0 + 2 * 0.5 * s1 + 0.1)
    np.testing.assert_allclose(outputs[0], [[s1, s1], [s2, s2]], atol=1e-6)


def test_concat_cell_initial_state_is_zeros_and_bias_starts_at_zero():
    cell = ConcatRNNCell(3)
    cell.build((None, 2))
    np.testing.assert_array_equal(cell.bias.numpy(), np.zeros(3))
    (state,) = cell.get_initial_state(batch_size=5)
    assert state.shape == (5, 3)
    np.testing.assert_array_equal(state, np.zeros((5, 3)))


@pytest.mark.parametrize("kind", TUTORIAL_CELL_KINDS)
def test_stateful_chunks_equal_whole_sequence_and_reset(kind):
    inputs = _random_sequence(batch=2, time=6, features=3, seed=1)
    whole = make_rnn(kind, 5, return_sequences=True)
    expected = np.asarray(whole(inputs))

    chunk_input = keras.Input(batch_shape=(2, 3, 3))
    stateful = make_rnn(kind, 5, return_sequences=True, stateful=True)
    model = keras.Model(chunk_input, stateful(chunk_input))
    stateful.set_weights(whole.get_weights())
    first = np.asarray(model(inputs[:, :3]))
    second = np.asarray(model(inputs[:, 3:]))
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), expected, atol=1e-6)

    stateful.reset_state()
    for state in stateful.states:
        np.testing.assert_array_equal(np.asarray(state), 0.0)
    np.testing.assert_allclose(model(inputs[:, :3]), first, atol=1e-6)


@pytest.mark.parametrize("kind", CELL_KINDS)
def test_return_state_is_the_last_output(kind):
    layer = make_rnn(kind, 4, return_sequences=True, return_state=True)
    outputs, *states = layer(_random_sequence())
    assert len(states) == (2 if kind in ("lstm", "lstmp") else 1)
    np.testing.assert_allclose(states[0], outputs[:, -1], atol=1e-6)


@pytest.mark.parametrize("kind", CELL_KINDS)
def test_save_and_load_keras_file_gives_same_outputs(kind, tmp_path):
    inputs = keras.Input((5, 2))
    hidden = make_rnn(kind, 4)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3)(hidden))
    sequence = _random_sequence(batch=2, time=5, features=2)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded(sequence), model(sequence), atol=1e-6)
    if kind == "concat":
        assert isinstance(loaded.layers[1].cell, ConcatRNNCell)


@pytest.mark.parametrize(
    "kind, units, argument",
    [
        ("peephole_lstm", 4, "kind"),
        ("", 4, "kind"),
        ("lstm", 0, "units"),
        ("concat", -2, "units"),
        ("simple", 2.5, "units"),
        ("concat", True, "units"),
    ],
)
def test_bad_arguments_name_the_argument(kind, units, argument):
    with pytest.raises(ValueError, match=argument):
        make_rnn(kind, units)


@pytest.mark.parametrize("kind", CELL_KINDS)
def test_the_kind_of_a_built_cell_is_the_kind_it_was_built_from(kind, tmp_path):
    assert cell_kind(make_cell(kind, 3)) == kind
    # A saved and reloaded layer too: what the exporter reads back from model.keras.
    model = keras.Sequential([keras.Input((4, 2)), make_rnn(kind, 3, name="rnn")])
    model.save(tmp_path / "model.keras")
    reloaded = keras.saving.load_model(tmp_path / "model.keras")
    assert cell_kind(reloaded.get_layer("rnn").cell) == kind


def test_a_cell_of_no_kind_is_refused():
    with pytest.raises(ValueError, match="a StackedRNNCells is none of tfrnn's cells"):
        cell_kind(keras.layers.StackedRNNCells([keras.layers.LSTMCell(3)]))


def test_the_tutorial_kinds_are_the_first_three():
    assert TUTORIAL_CELL_KINDS == ("simple", "lstm", "concat")
    assert CELL_KINDS == (*TUTORIAL_CELL_KINDS, "gru", "lstmp")


def test_gru_and_lstmp_kinds_pass_their_options_to_the_cell():
    # TF1's GRUCell is Keras' GRUCell with the reset gate applied before the matmul.
    gru = make_cell("gru", 3, reset_after=False)
    assert isinstance(gru, keras.layers.GRUCell) and not gru.reset_after
    layer = make_rnn("lstmp", 4, projection_units=2, use_peepholes=True, return_state=True)
    assert isinstance(layer.cell, LSTMPCell) and layer.cell.use_peepholes
    output, h, c = layer(_random_sequence(batch=3, time=2, features=5))
    assert output.shape == h.shape == (3, 2) and c.shape == (3, 4)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_concat_cell_trains_inside_compiled_function(jit_compile):
    # The step is itself a tf.function; nesting it in a (possibly XLA-compiled) training
    # step must give the same gradients as eager execution.
    layer = make_rnn("concat", 3, return_sequences=True)
    inputs = _random_sequence(batch=2, time=4, features=2)
    layer(inputs)

    def gradients(sequence):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(layer(sequence)))
        return tape.gradient(loss, layer.trainable_variables)

    expected = gradients(inputs)
    compiled = tf.function(gradients, jit_compile=jit_compile)(tf.constant(inputs))
    for got, want in zip(compiled, expected, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_tutorial_c1_shapes_of_an_lstm_over_mnist_rows():
    # Tutorials C1/C4: batch 100 of 28 rows of 28 pixels into a 100-unit LSTM gives outputs
    # (100, 28, 100) and a final state pair of (100, 100) each, whose h is the last output.
    # TF1 ordered the pair (c, h); Keras returns [h, c].
    layer = make_rnn("lstm", 100, return_sequences=True, return_state=True)
    outputs, h, c = layer(np.random.default_rng(2).random((100, 28, 28), dtype="float32"))
    assert outputs.shape == (100, 28, 100)
    assert h.shape == c.shape == (100, 100)
    np.testing.assert_array_equal(h, outputs[:, -1])
    assert not np.allclose(c, h)


def _outputs_and_gradients(layer, inputs, jit_compile):
    def run(sequence):
        with tf.GradientTape() as tape:
            outputs = layer(sequence)
            loss = tf.reduce_sum(tf.square(outputs))
        return outputs, tape.gradient(loss, layer.trainable_variables)

    return tf.function(run, jit_compile=jit_compile)(tf.constant(inputs))


@pytest.mark.parametrize("kind", TUTORIAL_CELL_KINDS)
@pytest.mark.parametrize(
    "unroll, jit_compile", [(False, False), (False, True), (True, False), (True, True)]
)
def test_rnn_gives_the_numbers_of_keras_rnn_on_the_same_cell(kind, unroll, jit_compile):
    # tfrnn's RNN only moves where the weights are read: outputs and gradients are
    # keras.layers.RNN's, on one and the same cell (so the same weights).
    inputs = _random_sequence(batch=3, time=5, features=2, seed=3)
    ours = make_rnn(kind, 4, return_sequences=True, unroll=unroll)
    ours(inputs)
    theirs = keras.layers.RNN(ours.cell, return_sequences=True, unroll=unroll)
    (ours_out, ours_grads), (theirs_out, theirs_grads) = (
        _outputs_and_gradients(layer, inputs, jit_compile) for layer in (ours, theirs)
    )
    np.testing.assert_allclose(ours_out, theirs_out, atol=1e-6)
    for got, want in zip(ours_grads, theirs_grads, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)
    assert all(float(tf.reduce_sum(tf.abs(gradient))) > 0 for gradient in ours_grads)


@pytest.mark.parametrize("kind", TUTORIAL_CELL_KINDS)
def test_unrolled_rnn_with_final_states_and_carried_state_gives_keras_numbers(kind):
    # The unrolled loop is tfrnn's own: its last output, final states and a stateful
    # layer's carried state over two calls are keras.layers.RNN's on the same cell.
    inputs = _random_sequence(batch=2, time=4, features=3, seed=5)
    options = dict(return_state=True, stateful=True, unroll=True)
    ours = make_rnn(kind, 3, **options)
    ours(inputs)  # builds the cell
    ours.reset_state()
    theirs = keras.layers.RNN(ours.cell, **options)
    for _ in range(2):  # the second call starts from the state the first carried over
        for got, want in zip(ours(inputs), theirs(inputs), strict=True):
            np.testing.assert_allclose(got, want, atol=1e-6)
    assert not np.allclose(ours(inputs)[0], ours(inputs)[0])  # the state did carry


def _compiled_gradient_size(layer, time: int) -> int:
    """Instructions of the optimised XLA program of ``layer``'s weight gradients over a
    sequence of ``time`` steps."""
    inputs = tf.constant(_random_sequence(batch=3, time=time, features=2))

    @tf.function(jit_compile=True)
    def gradients(sequence):
        with tf.GradientTape() as tape:
            value = tf.reduce_sum(layer(sequence))
        return tape.gradient(value, layer.trainable_variables)

    program = gradients.experimental_get_compiler_ir(inputs)(stage="optimized_hlo")
    return sum(" = " in line for line in program.splitlines())


def test_unrolled_lstm_gradient_program_grows_linearly_with_the_steps():
    # XLA's CPU fusion recomputes cheap elementwise producers inside each consumer; through
    # the LSTM's cell-state gradient chain that made Keras' unrolled gradient quadratic in
    # the steps (6 -> 12 -> 24 steps: 850 -> 2,385 -> 7,617 instructions, each doubling
    # adding 3.4 times the last increase). tfrnn's unrolled loop stores that gradient once
    # per step: each doubling adds about twice the last increase, as a linear size does.
    layer = make_rnn("lstm", 4, unroll=True)
    sizes = [_compiled_gradient_size(layer, time) for time in (6, 12, 24)]
    assert sizes[2] - sizes[1] < 2.5 * (sizes[1] - sizes[0]), sizes


def _while_body_op_types(layer, inputs) -> set:
    """Op types in the body of ``layer``'s forward time loop, in the graph of its gradient."""

    def loss(sequence):
        with tf.GradientTape() as tape:
            value = tf.reduce_sum(layer(sequence))
        return tape.gradient(value, layer.trainable_variables)

    graph = tf.function(loss).get_concrete_function(tf.TensorSpec(inputs.shape)).graph
    library = {f.signature.name: f for f in graph.as_graph_def().library.function}
    forward_loops = [
        op
        for op in graph.get_operations()
        if op.type in ("While", "StatelessWhile") and not op.name.startswith("gradient_tape/")
    ]
    assert len(forward_loops) == 1
    body = library[forward_loops[0].get_attr("body").name]
    return {node.op for node in body.node_def}


@pytest.mark.parametrize("kind", TUTORIAL_CELL_KINDS)
def test_rnn_reads_the_weights_once_before_the_time_loop(kind):
    # Read inside the loop, a weight becomes a per-step intermediate that the gradient keeps
    # a copy of for every step; tfrnn's RNN hands the loop a value read before it.
    inputs = _random_sequence(batch=2, time=4, features=3)
    ours = make_rnn(kind, 5)
    ours(inputs)
    assert "ReadVariableOp" in _while_body_op_types(keras.layers.RNN(ours.cell), inputs)
    assert "ReadVariableOp" not in _while_body_op_types(ours, inputs)


def test_rnn_dropout_masks_still_change_from_call_to_call():
    # The loop runs in a keras.StatelessScope, which would hold back a seed generator's
    # update made inside it; Keras draws the dropout masks before the loop, so they change.
    layer = RNN(keras.layers.LSTMCell(8, dropout=0.5, recurrent_dropout=0.5))
    inputs = np.ones((4, 3, 6), dtype="float32")
    first, second = (np.asarray(layer(inputs, training=True)) for _ in range(2))
    assert not np.allclose(first, second)
    np.testing.assert_allclose(layer(inputs), layer(inputs), atol=0)
