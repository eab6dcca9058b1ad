"""Tests of tfrnn.tasks.mnist.model: shapes, input contract, presets against the tutorials."""

import dataclasses
import math
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrnn.errors import UsageError
from tfrnn.layers.cells import TUTORIAL_CELL_KINDS
from tfrnn.tasks.mnist import config as mnist_config
from tfrnn.tasks.mnist import model as mnist_model


def _images(batch=3, seed=0):
    return np.random.default_rng(seed).uniform(size=(batch, 28, 28)).astype("float32")


def _small(**overrides):
    return dataclasses.replace(mnist_config.Config(), units=6, **overrides)


@pytest.mark.parametrize("kind", TUTORIAL_CELL_KINDS)
def test_rows_in_logits_out_for_every_cell(kind):
    model = mnist_model.build_model(_small(cell=kind))
    assert model.input_shape == (None, 28, 28)
    assert model.inputs[0].dtype == "float32"
    assert model(_images()).shape == (3, 10)
    # 28 rows of 28 pixels: the recurrent layer's kernel reads 28 features.
    assert model.get_layer("rnn").cell.kernel.shape[0] in (28, 28 + 6)


def test_default_model_gives_the_numbers_of_keras_rnn_of_lstm_cell():
    # The default path (tfrnn.layers.cells.RNN, weights read before the time loop) must stay the
    # model a Keras user writes: keras.layers.RNN(LSTMCell) on the same weights gives the
    # same logits and gradients in the XLA training step.
    model = mnist_model.build_model(mnist_config.Config())
    images = keras.Input((28, 28))
    rows = model.get_layer("standardize")(images)
    features = keras.layers.RNN(model.get_layer("rnn").cell)(rows)
    plain = keras.Model(images, model.get_layer("logits")(features))
    labels = tf.constant([3, 1, 4, 1, 5, 9])

    @tf.function(jit_compile=True)
    def logits_and_gradients(classifier, batch):
        with tf.GradientTape() as tape:
            logits = classifier(batch, training=True)
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
            )
        return logits, tape.gradient(loss, model.trainable_variables)

    batch = tf.constant(_images(batch=6, seed=4))
    ours_logits, ours_gradients = logits_and_gradients(model, batch)
    plain_logits, plain_gradients = logits_and_gradients(plain, batch)
    np.testing.assert_allclose(ours_logits, plain_logits, atol=1e-6)
    for ours, theirs in zip(ours_gradients, plain_gradients, strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_standardisation_is_inside_the_model():
    # The model takes pixels / 255; standardising is its first layer, so a model with it
    # equals one without it fed standardised pixels (same weights otherwise).
    images = _images()
    with_norm = mnist_model.build_model(_small(normalize=True))
    without = mnist_model.build_model(_small(normalize=False))
    without.set_weights(with_norm.get_weights()[-5:])  # Normalization holds mean, var, count
    standardised = (images - mnist_model.PIXEL_MEAN) / mnist_model.PIXEL_STD
    np.testing.assert_allclose(with_norm(images), without(standardised), atol=1e-5)


def test_classifier_reading_final_state_h_equals_reading_last_output():
    images = _images()
    last_output = mnist_model.build_model(_small(classifier_reads="last_output"))
    final_state = mnist_model.build_model(_small(classifier_reads="final_state"))
    final_state.set_weights(last_output.get_weights())
    np.testing.assert_allclose(final_state(images), last_output(images), atol=1e-6)


def test_input_projection_and_unroll():
    model = mnist_model.build_model(_small(input_projection=5, unroll=True))
    assert model.get_layer("input_projection").kernel.shape == (28, 5)
    assert model.get_layer("rnn").cell.kernel.shape == (5, 4 * 6)
    assert model.get_layer("rnn").unroll
    looped = mnist_model.build_model(_small(input_projection=5))
    looped.set_weights(model.get_weights())
    np.testing.assert_allclose(model(_images()), looped(_images()), atol=1e-5)


def test_presets_are_the_tutorials_runs():
    c1, c2, c3 = (mnist_config.PRESETS[name] for name in ("C1", "C2", "C3"))
    spec = lambda c: (c.cell, c.units, c.batch_size, c.learning_rate, c.schedule)  # noqa: E731
    assert spec(c1) == ("lstm", 100, 100, 1e-4, "constant")
    assert spec(c2) == ("lstm", 128, 128, 1e-3, "constant")
    assert spec(c3) == ("lstm", 128, 128, 1e-3, "constant")
    assert (c1.epochs, c1.train_steps, c2.train_steps, c3.train_steps) == (11, 0, 800, 1000)
    assert (c1.classifier_reads, c2.classifier_reads, c3.classifier_reads) == (
        "final_state",
        "last_output",
        "final_state",
    )
    assert (c1.unroll, c2.unroll, c3.unroll) == (False, True, False)
    assert (c1.input_projection, c2.input_projection, c3.input_projection) == (0, 0, 128)
    for preset in (c1, c2, c3):
        # TF1's reader: 55,000 training images, pixels in [0, 1] fed as they are.
        assert (preset.validation_size, preset.normalize) == (5000, False)
        assert preset.recurrent_init == "tf1"
        assert preset.adam_epsilon == 1e-8  # TF1's AdamOptimizer; Keras' default is 1e-7
    assert (c1.classifier_init, c2.classifier_init, c3.classifier_init) == (
        "truncated_normal",
        "random_normal",
        "random_normal_bias_0.1",
    )
    assert (c1.projection_init, c2.projection_init, c3.projection_init) == (
        "keras",
        "keras",
        "random_normal_bias_0.1",
    )


def test_c1_classifier_is_truncated_normal_with_bias_0_1():
    model = mnist_model.build_model(mnist_config.PRESETS["C1"])
    kernel, bias = model.get_layer("logits").get_weights()
    assert kernel.shape == (100, 10)
    np.testing.assert_array_equal(bias, np.full(10, 0.1, np.float32))
    assert np.abs(kernel).max() <= 0.2 + 1e-6  # truncated at two sigma
    assert 0.07 < kernel.std() < 0.1  # a 2-sigma truncated normal of sigma 0.1 has std 0.088


def _is_standard_normal(values):
    # 1,280 or more draws of N(0, 1): mean within 0.1 and std within 0.1 of 1 by a wide margin.
    return abs(values.mean()) < 0.1 and abs(values.std() - 1.0) < 0.1


def test_c2_classifier_weight_and_bias_are_random_normal_sigma_1():
    model = mnist_model.build_model(mnist_config.PRESETS["C2"])
    kernel, bias = model.get_layer("logits").get_weights()
    assert kernel.shape == (128, 10) and _is_standard_normal(kernel)
    assert bias.std() > 0.3  # drawn too (10 numbers: a loose check), not a constant
    assert not np.any(np.isin(bias, kernel))  # its own draws, not the kernel's first numbers


def test_c3_projection_and_classifier_weights_random_normal_biases_0_1():
    model = mnist_model.build_model(mnist_config.PRESETS["C3"])
    projection, classifier = model.get_layer("input_projection"), model.get_layer("logits")
    assert projection.kernel.shape == (28, 128) and classifier.kernel.shape == (128, 10)
    for layer in (projection, classifier):
        assert _is_standard_normal(layer.kernel.numpy())
        np.testing.assert_array_equal(layer.bias.numpy(), np.full(layer.bias.shape, 0.1, "f"))
    assert not np.any(np.isin(projection.kernel.numpy()[0], classifier.kernel.numpy()))


def test_tf1_recurrent_init_is_one_glorot_uniform_over_x_and_h():
    model = mnist_model.build_model(mnist_config.PRESETS["C1"])
    cell = model.get_layer("rnn").cell
    limit = math.sqrt(6 / (28 + 100 + 4 * 100))
    for matrix in (cell.kernel.numpy(), cell.recurrent_kernel.numpy()):
        assert np.abs(matrix).max() <= limit
        assert np.abs(matrix).max() > 0.95 * limit
    # Two independent draws, as the rows of TF1's one matrix are.
    assert not np.any(cell.kernel.numpy() == cell.recurrent_kernel.numpy()[:28])
    forget_bias = cell.bias.numpy()[100:200]  # Keras gate order i, f, c, o
    np.testing.assert_array_equal(forget_bias, np.ones(100))


def test_config_for_preset_and_overrides():
    config = mnist_config.config_for("c2", units=64, learning_rate=None)
    assert (config.units, config.learning_rate, config.train_steps) == (64, 1e-3, 800)
    assert mnist_config.config_for(None) == mnist_config.Config()
    with pytest.raises(UsageError, match="--preset must be one of C1, C2, C3"):
        mnist_config.config_for("C9")


def test_an_explicit_epochs_replaces_a_presets_train_steps():
    config = mnist_config.config_for("C2", epochs=1, train_steps=None)
    assert (config.epochs, config.train_steps) == (1, 0)
    assert mnist_config.config_for("C2", epochs=2, train_steps=0).train_steps == 0
    assert mnist_config.config_for("C3", train_steps=5).train_steps == 5
    with pytest.raises(UsageError, match="--epochs 2 and --train_steps 5 both set the run's"):
        mnist_config.config_for(None, epochs=2, train_steps=5)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"units": 0}, "--units must be in [1, 4096], got 0"),
        ({"batch_size": -1}, "--batch_size must be in [1, 65536], got -1"),
        ({"units": 5000}, "--units must be in [1, 4096], got 5000"),
        ({"seed": 2**32}, "--seed must be in [0, 2147483647], got 4294967296"),
        ({"learning_rate": float("nan")}, "--learning_rate must be a positive number"),
        ({"cell": "gru"}, "--cell must be one of simple, lstm, concat, got 'gru'"),
        ({"schedule": "step"}, "--schedule must be one of constant, cosine"),
        ({"train_steps": -5}, "--train_steps must be in [0, 100000000], got -5"),
        ({"adam_epsilon": 0.0}, "--adam_epsilon must be a positive number, got 0.0"),
        ({"projection_init": "zeros"}, "--projection_init must be one of keras, random_normal"),
        ({"classifier_init": "ones"}, "--classifier_init must be one of keras, truncated_normal"),
    ],
)
def test_validate_rejects_bad_values(overrides, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        mnist_config.validate(dataclasses.replace(mnist_config.Config(), **overrides))


def test_cosine_schedule_decays_to_zero_over_the_run():
    optimizer = mnist_model.make_optimizer(mnist_config.Config(), total_steps=100)
    for step, expected in ((0, 2e-3), (50, 1e-3), (100, 0.0)):
        optimizer.iterations.assign(step)
        assert float(optimizer.learning_rate) == pytest.approx(expected, abs=1e-9)
    constant = mnist_model.make_optimizer(mnist_config.PRESETS["C2"], total_steps=100)
    constant.iterations.assign(99)
    assert float(constant.learning_rate) == pytest.approx(1e-3)
    assert constant.epsilon == 1e-8 and optimizer.epsilon == 1e-7
