"""tbptt.ResetStateAtEpochStart: model.fit over the windows in order is the stateful runner."""

import keras
import numpy as np

from tfrnn.data.echo import epoch_rng, epoch_windows, generate_series
from tfrnn.tasks.echo import tbptt

BATCH, NUM_STEPS, STATE = 4, 5, 3


def _epoch_windows(epoch):
    return epoch_windows(
        *generate_series(BATCH * NUM_STEPS * 12, epoch_rng(0, epoch)), BATCH, NUM_STEPS
    )


def _runner_losses(weights, epochs):
    model = tbptt.build_training_model("stateful", "concat", STATE, BATCH)
    model.set_weights(weights)
    run = tbptt.make_window_runner(
        "stateful", model, keras.optimizers.Adagrad(0.1), jit_compile=False
    )
    losses = []
    for epoch in range(epochs):
        carry = tbptt.start_epoch("stateful", model, BATCH, NUM_STEPS)
        inputs, targets = _epoch_windows(epoch)
        epoch_losses, carry = run(inputs, targets, carry)
        losses.append(np.asarray(epoch_losses))
    return losses


def _fit_epoch_losses(weights, epochs, callbacks):
    """Each epoch's mean loss from model.fit, one fresh series an epoch, windows in order."""
    model = tbptt.build_training_model("stateful", "concat", STATE, BATCH)
    model.set_weights(weights)
    model.compile(
        keras.optimizers.Adagrad(0.1),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    means = []
    for epoch in range(epochs):
        inputs, targets = _epoch_windows(epoch)
        history = model.fit(
            inputs.reshape(-1, NUM_STEPS),
            targets.reshape(-1, NUM_STEPS),
            batch_size=BATCH,
            shuffle=False,
            epochs=epoch + 1,
            initial_epoch=epoch,
            callbacks=callbacks,
            verbose=0,
        )
        means.append(history.history["loss"][0])
    return np.array(means)


def test_fit_with_the_callback_gives_the_window_runners_losses():
    keras.utils.set_random_seed(0)
    weights = tbptt.build_training_model("stateful", "concat", STATE, BATCH).get_weights()
    runner = [epoch.mean() for epoch in _runner_losses(weights, 3)]
    with_reset = _fit_epoch_losses(weights, 3, [tbptt.ResetStateAtEpochStart()])
    np.testing.assert_allclose(with_reset, runner, atol=1e-5)
    # Without it, epochs 2 and 3 start from the previous epoch's last state: other losses.
    without_reset = _fit_epoch_losses(weights, 3, [])
    np.testing.assert_allclose(without_reset[0], runner[0], atol=1e-5)
    assert np.abs(without_reset[1:] - runner[1:]).max() > 1e-4
