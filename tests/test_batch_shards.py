"""tfrnn.engine.training.fit's row shards: cutting each batch into shards trains the same model.

On one CPU device fit cuts each batch into row shards, one compiled call each, so that
several cores work at once (the speed is measured by ``make bench``, not here). What must
hold: the gradient is the one of the whole batch, so weights and metrics match an unsharded
run to float rounding, whether the shards are even or not, and a regularisation term is
counted once, not once per shard.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrnn.engine import training

EXAMPLES, BATCH, TIME, FEATURES, CLASSES = 40, 10, 5, 3, 4


def _task(regularized: bool) -> training.Task:
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(EXAMPLES, TIME, FEATURES)).astype("float32")
    labels = np.argmax(inputs.sum(axis=1), axis=-1).astype("int32") % CLASSES
    batches = tf.data.Dataset.from_tensor_slices((inputs, labels)).batch(BATCH)

    def make_model():
        keras.utils.set_random_seed(3)
        regularizer = keras.regularizers.L2(0.5) if regularized else None
        sequence = keras.Input((TIME, FEATURES))
        features = keras.layers.RNN(keras.layers.LSTMCell(6))(sequence)
        logits = keras.layers.Dense(CLASSES, kernel_regularizer=regularizer)(features)
        return keras.Model(sequence, logits)

    return training.Task(
        make_model=make_model,
        make_optimizer=lambda: keras.optimizers.SGD(0.5),
        per_example_loss=training.sparse_softmax_cross_entropy,
        train_batches=lambda epoch, skip: batches.skip(skip),
        eval_batches=lambda: batches,
        steps_per_epoch=EXAMPLES // BATCH,
        total_steps=2 * (EXAMPLES // BATCH),
        global_batch_size=BATCH,
    )


def _train(tmp_path, shards, regularized=False, jit_compile=False):
    result = training.fit(
        _task(regularized),
        str(tmp_path / f"shards{shards}_{regularized}_{jit_compile}"),
        {"shards": shards},
        shards=shards,
        jit_compile=jit_compile,
        verbose=False,
    )
    return result.model.get_weights(), result.history


@pytest.mark.parametrize("shards, regularized", [(2, False), (3, True)])
def test_sharded_training_matches_whole_batches(tmp_path, shards, regularized):
    # 3 shards of a batch of 10: rows 3, 3 and 4.
    whole_weights, whole_history = _train(tmp_path, 1, regularized)
    sharded_weights, sharded_history = _train(tmp_path, shards, regularized)
    for whole, sharded in zip(whole_weights, sharded_weights, strict=True):
        np.testing.assert_allclose(sharded, whole, atol=2e-5)
    for whole, sharded in zip(whole_history, sharded_history, strict=True):
        assert sharded["train_loss"] == pytest.approx(whole["train_loss"], abs=1e-5)
        assert sharded["train_accuracy"] == whole["train_accuracy"]
    # The sharded run trained (the weights moved) rather than matching by doing nothing.
    start = _task(regularized).make_model().get_weights()
    assert max(np.abs(w - s).max() for w, s in zip(whole_weights, start, strict=True)) > 1e-2


def test_sharded_training_matches_under_xla(tmp_path):
    whole_weights, _ = _train(tmp_path, 1, jit_compile=True)
    sharded_weights, _ = _train(tmp_path, 2, jit_compile=True)
    for whole, sharded in zip(whole_weights, sharded_weights, strict=True):
        np.testing.assert_allclose(sharded, whole, atol=2e-5)


def test_one_shard_per_core_on_the_default_strategy_only(mirrored):
    default_shards = training.batch_shards(tf.distribute.get_strategy())
    assert 1 <= default_shards <= training.MAX_BATCH_SHARDS
    assert training.batch_shards(mirrored) == 1  # its replicas already run side by side


def test_shards_must_be_positive(tmp_path):
    with pytest.raises(training.UsageError, match="shards must be positive"):
        training.fit(_task(False), str(tmp_path), {}, shards=0, verbose=False)
