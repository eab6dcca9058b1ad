"""Tests of tfrnn.tasks.echo.tbptt: the three ways to carry the state, against each other."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrnn.data.echo import epoch_rng, epoch_windows, generate_series
from tfrnn.layers.cells import TUTORIAL_CELL_KINDS
from tfrnn.tasks.echo import tbptt
from tfrnn.tasks.echo.model import build_echo_model, state_sizes

BATCH = 4


def _epoch(epoch, num_steps, length=240):
    inputs, targets = epoch_windows(*generate_series(length, epoch_rng(0, epoch)), BATCH, num_steps)
    return tf.constant(inputs), tf.constant(targets)


def _train(mode, kind, num_steps, initial_weights, epochs=2, jit_compile=False):
    """Per-window losses of `epochs` epochs in `mode`, from `initial_weights`."""
    model = tbptt.build_training_model(mode, kind, 3, BATCH)
    model.set_weights(initial_weights)
    optimizer = keras.optimizers.Adagrad(0.1)
    run = tbptt.make_window_runner(mode, model, optimizer, jit_compile=jit_compile)
    losses = []
    for epoch in range(epochs):
        inputs, targets = _epoch(epoch, num_steps)
        carry = tbptt.start_epoch(mode, model, BATCH, num_steps)
        # Two calls an epoch, so the carry also crosses a call boundary.
        half = len(inputs) // 2
        for part in (slice(0, half), slice(half, None)):
            part_losses, carry = run(inputs[part], targets[part], carry)
            losses.append(np.asarray(part_losses))
    return np.concatenate(losses), model.get_weights()


def _initial_weights(kind, seed=0):
    keras.utils.set_random_seed(seed)
    return build_echo_model(kind, 3).get_weights()


@pytest.mark.parametrize("kind", TUTORIAL_CELL_KINDS)
def test_stateful_and_explicit_modes_give_the_same_losses(kind):
    weights = _initial_weights(kind)
    stateful_losses, stateful_weights = _train("stateful", kind, 5, weights)
    explicit_losses, explicit_weights = _train("explicit", kind, 5, weights)
    assert len(stateful_losses) == 2 * 12
    np.testing.assert_allclose(stateful_losses, explicit_losses, atol=1e-5, rtol=0)
    for stateful, explicit in zip(stateful_weights, explicit_weights, strict=True):
        np.testing.assert_allclose(stateful, explicit, atol=1e-5)
    assert np.all(np.isfinite(stateful_losses))
    # Training did something: the weights moved.
    assert not np.allclose(stateful_weights[0], weights[0])


@pytest.mark.parametrize("kind", TUTORIAL_CELL_KINDS)
def test_true_tbptt_with_one_step_is_tf_style_with_one_step(kind):
    # With windows of one step both styles backpropagate every error exactly one step.
    weights = _initial_weights(kind, seed=1)
    true_losses, _ = _train("true", kind, 1, weights)
    tf_style_losses, _ = _train("explicit", kind, 1, weights)
    np.testing.assert_allclose(true_losses, tf_style_losses, atol=1e-5, rtol=0)


def _brute_force_true_tbptt(model, kind, symbols, targets, window_start, num_steps):
    """Loss and gradients of one true-TBPTT window, one output at a time.

    For each output t of the window: the state after x_0 .. x_{t-n} from zeros (a constant),
    then the n inputs x_{t-n+1} .. x_t (fewer at the start of the series), then the loss of
    step t. The window's loss is the mean over the window's outputs and the batch.
    """
    batch = symbols.shape[0]
    symbols = tf.constant(symbols)
    zeros = [tf.zeros((batch, size)) for size in state_sizes(kind, 3)]
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        losses = []
        for t in range(window_start, window_start + num_steps):
            first = max(0, t - num_steps + 1)
            states = zeros
            if first > 0:
                _, *states = model([symbols[:, :first], *zeros])
                states = [tf.stop_gradient(state) for state in states]
            logits, *_ = model([symbols[:, first : t + 1], *states])
            losses.append(
                tf.nn.sparse_softmax_cross_entropy_with_logits(targets[:, t], logits[:, -1])
            )
        loss = tf.reduce_mean(tf.stack(losses))
    return float(loss), [np.asarray(g) for g in tape.gradient(loss, variables)]


@pytest.mark.parametrize("kind", TUTORIAL_CELL_KINDS)
def test_true_tbptt_backpropagates_every_error_exactly_n_steps(kind):
    num_steps = 3
    model = tbptt.build_training_model("true", kind, 3, BATCH)
    rng = np.random.default_rng(4)
    model.set_weights([rng.normal(0, 0.7, w.shape).astype("float32") for w in model.weights])
    symbols = rng.integers(0, 2, size=(BATCH, 3 * num_steps)).astype("int32")
    targets = rng.integers(0, 2, size=(BATCH, 3 * num_steps)).astype("int32")
    carry = tbptt.start_epoch("true", model, BATCH, num_steps)
    # Window 0 starts the epoch (fewer than n earlier steps); windows 1 and 2 use the carry.
    for window in range(3):
        columns = slice(window * num_steps, (window + 1) * num_steps)
        loss, gradients, carry = tbptt.true_tbptt_gradients(
            model, tf.constant(symbols[:, columns]), targets[:, columns], carry
        )
        expected_loss, expected_gradients = _brute_force_true_tbptt(
            model, kind, symbols, targets, window * num_steps, num_steps
        )
        assert float(loss) == pytest.approx(expected_loss, abs=1e-5)
        for gradient, expected in zip(gradients, expected_gradients, strict=True):
            np.testing.assert_allclose(gradient, expected, atol=1e-5)


def test_true_tbptt_differs_from_tf_style_beyond_one_step():
    # The same window, the same carry-free start: TF-style backpropagates the first output
    # one step, true TBPTT n steps, so their gradients differ (the test above is not vacuous).
    model = tbptt.build_training_model("true", "concat", 3, BATCH)
    symbols = tf.constant(np.random.default_rng(5).integers(0, 2, (BATCH, 6)), tf.int32)
    targets = tf.constant(np.random.default_rng(6).integers(0, 2, (BATCH, 6)), tf.int32)
    carry = tbptt.start_epoch("true", model, BATCH, 3)
    states = tbptt.start_epoch("explicit", model, BATCH, 3)
    for columns in (slice(0, 3), slice(3, 6)):
        _, true_gradients, carry = tbptt.true_tbptt_gradients(
            model, symbols[:, columns], targets[:, columns], carry
        )
        _, tf_style_gradients, states = tbptt.explicit_state_gradients(
            model, symbols[:, columns], targets[:, columns], states
        )
    assert not np.allclose(true_gradients[0], tf_style_gradients[0])


def test_start_epoch_resets_the_stateful_layer():
    model = tbptt.build_training_model("stateful", "lstm", 3, BATCH)
    model(np.ones((BATCH, 4), "int32"))
    assert any(np.any(np.asarray(state) != 0) for state in model.get_layer("rnn").states)
    assert tbptt.start_epoch("stateful", model, BATCH, 4) == ()
    for state in model.get_layer("rnn").states:
        np.testing.assert_array_equal(np.asarray(state), 0.0)


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="mode must be one of"):
        tbptt.build_training_model("tf1", "concat", 3, BATCH)
