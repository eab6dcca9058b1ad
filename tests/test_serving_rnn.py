"""Tests of tfrnn.layers.serving_rnn: the fused op against Keras' LSTM; which batches take it."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrnn.layers.cells import RNN, make_rnn
from tfrnn.layers.serving_rnn import ServingRNN, fusable
from tfrnn.tasks.mnist.serving import serving_copy

UNITS, TIME, FEATURES = 4, 6, 3


def _sequences(batch, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, TIME, FEATURES)).astype("float32")


def _pair(kind="lstm", fused_max_rows=None, go_backwards=False, **options):
    """(tfrnn's unrolled RNN, a ServingRNN with the same config and weights); a non-zero bias."""
    reference = make_rnn(kind, UNITS, unroll=True, **options)
    if go_backwards:  # not an argument of make_rnn
        reference = RNN.from_config(reference.get_config() | {"go_backwards": True})
    reference(_sequences(1))
    weights = reference.get_weights()
    weights[-1] = np.linspace(-0.5, 0.5, weights[-1].size).astype("float32")
    reference.set_weights(weights)
    serving = ServingRNN.from_config(reference.get_config())
    serving(_sequences(1))
    serving.set_weights(weights)
    if fused_max_rows is not None:
        serving.fused_max_rows = fused_max_rows
    return reference, serving


def _op_types(function, *specs) -> set[str]:
    """The op types of ``function``'s graph for ``specs``, nested functions (tf.cond's
    branches) included."""
    graph = function.get_concrete_function(*specs).graph.as_graph_def()
    nested = [node for inner in graph.library.function for node in inner.node_def]
    return {node.op for node in [*graph.node, *nested]}


@pytest.mark.parametrize(
    "options",
    [{}, {"return_sequences": True}, {"return_state": True}, {"unit_forget_bias": False}],
)
def test_fused_op_gives_keras_lstm_outputs_and_states(options):
    reference, serving = _pair(**options)
    sequences = _sequences(3)
    expected = tf.nest.flatten(reference(sequences))
    got = tf.nest.flatten(serving(sequences))
    assert len(got) == len(expected)
    for got_tensor, expected_tensor in zip(got, expected, strict=True):
        np.testing.assert_allclose(got_tensor, expected_tensor, atol=1e-6, rtol=0)
    assert "BlockLSTMV2" in _op_types(tf.function(serving), tf.TensorSpec((3, TIME, FEATURES)))


def test_a_static_batch_chooses_by_its_rows():
    _, serving = _pair(fused_max_rows=2)
    function = tf.function(serving)
    assert "BlockLSTMV2" in _op_types(function, tf.TensorSpec((2, TIME, FEATURES)))
    assert "BlockLSTMV2" not in _op_types(function, tf.TensorSpec((3, TIME, FEATURES)))


def test_a_dynamic_batch_takes_either_path_with_keras_numbers():
    reference, serving = _pair(fused_max_rows=2, return_state=True)
    function = tf.function(serving, input_signature=[tf.TensorSpec((None, TIME, FEATURES))])
    assert "BlockLSTMV2" in _op_types(function)
    for batch in (1, 2, 3, 5):
        sequences = _sequences(batch, seed=batch)
        for got, expected in zip(function(sequences), reference(sequences), strict=True):
            np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "kind, options",
    [
        ("simple", {}),
        ("concat", {}),
        ("lstm", {"activation": "relu"}),
        ("lstm", {"recurrent_activation": "hard_sigmoid"}),
        ("lstm", {"go_backwards": True}),
    ],
)
def test_layers_the_op_cannot_run_keep_their_steps(kind, options):
    reference, serving = _pair(kind, **options)
    assert not fusable(serving)
    sequences = _sequences(3)
    np.testing.assert_array_equal(serving(sequences), reference(sequences))
    assert "BlockLSTMV2" not in _op_types(tf.function(serving), tf.TensorSpec((3, TIME, FEATURES)))


def test_training_keeps_the_steps():
    reference, serving = _pair()
    sequences = _sequences(3)
    with tf.GradientTape() as tape:
        output = serving(sequences, training=True)
    gradients = tape.gradient(output, serving.trainable_weights)
    assert all(gradient is not None for gradient in gradients)
    np.testing.assert_array_equal(output, reference(sequences, training=True))
    training_graph = tf.function(lambda inputs: serving(inputs, training=True))
    assert "BlockLSTMV2" not in _op_types(training_graph, tf.TensorSpec((3, TIME, FEATURES)))


def test_the_served_copy_of_a_model_runs_through_it():
    inputs = keras.Input((TIME, FEATURES))
    model = keras.Model(inputs, keras.layers.Dense(2)(make_rnn("lstm", UNITS)(inputs)))
    copy = serving_copy(model)
    (recurrent,) = [layer for layer in copy.layers if isinstance(layer, keras.layers.RNN)]
    assert type(recurrent) is ServingRNN and recurrent.unroll
    sequences = _sequences(4)
    np.testing.assert_allclose(copy(sequences), model(sequences), atol=1e-6, rtol=0)
    assert "BlockLSTMV2" in _op_types(tf.function(copy), tf.TensorSpec((4, TIME, FEATURES)))
