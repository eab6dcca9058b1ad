"""MNIST read row by row: the model and its optimiser.

Each 28x28 image is a sequence of 28 time steps of 28 pixels (one row a step, layout
(batch, time, features)). A recurrent layer from :mod:`tfrnn.layers.cells` reads the rows; its last
output (or, the same thing for these cells, its final state h) goes through Dense(10) to the
logits:

    images (batch, 28, 28) float32 in [0, 1]
      -> [standardise with the MNIST pixel mean/std]      (config.normalize)
      -> [Dense(input_projection) on every row]           (config.input_projection > 0)
      -> RNN(cell, units)  -> (batch, units)
      -> Dense(10)         -> logits (batch, 10)

The input contract is pixels / 255; any further normalisation is a layer of the model, so an
exported model takes the same input as training does.

The configuration (:class:`tfrnn.tasks.mnist.config.Config`) lives in
:mod:`tfrnn.tasks.mnist.config`, training in :mod:`tfrnn.tasks.mnist.train`.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from tfrnn.data import mnist as mnist_data
from tfrnn.layers.cells import make_rnn
from tfrnn.tasks.mnist.config import Config

# Pixel statistics of the MNIST training set, as fractions of 255 (see the dataset README).
PIXEL_MEAN = 0.1307
PIXEL_STD = 0.3081


def _recurrent_initializers(config: Config, input_dim: int) -> dict:
    if config.recurrent_init == "keras":
        return {}
    # TF1 cells multiply [x; h] by ONE matrix of (input_dim + units, gates * units) with the
    # default glorot-uniform initialiser; Keras splits it into kernel and recurrent_kernel,
    # so both get that matrix's limit, each from its own seed (one seed would repeat the
    # kernel's numbers in the recurrent kernel's first rows).
    gates = 4 if config.cell == "lstm" else 1
    limit = math.sqrt(6.0 / (input_dim + config.units + gates * config.units))

    def uniform(seed_offset):
        return keras.initializers.RandomUniform(-limit, limit, seed=config.seed + seed_offset)

    if config.cell == "concat":  # already one matrix over [x; h]
        return {"kernel_initializer": uniform(3)}
    return {"kernel_initializer": uniform(3), "recurrent_initializer": uniform(4)}


def _dense_initializers(name: str, seed: int) -> dict:
    """A Dense layer's initialiser arguments for one of :data:`CLASSIFIER_INITS`."""
    if name == "keras":
        return {}
    if name == "truncated_normal":
        return dict(
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.1, seed=seed),
            bias_initializer=keras.initializers.Constant(0.1),
        )
    kernel = keras.initializers.RandomNormal(stddev=1.0, seed=seed)
    if name == "random_normal":
        bias = keras.initializers.RandomNormal(stddev=1.0, seed=seed + 1)
    else:  # random_normal_bias_0.1
        bias = keras.initializers.Constant(0.1)
    return dict(kernel_initializer=kernel, bias_initializer=bias)


def build_model(config: Config) -> keras.Model:
    """The row-by-row classifier: (batch, 28, 28) float32 in [0, 1] -> logits (batch, 10)."""
    size = mnist_data.IMAGE_SIZE
    images = keras.Input(shape=(size, size), dtype="float32", name="images")
    rows = images
    if config.normalize:
        rows = keras.layers.Normalization(
            mean=PIXEL_MEAN, variance=PIXEL_STD**2, name="standardize"
        )(rows)
    input_dim = size
    if config.input_projection:
        rows = keras.layers.Dense(
            config.input_projection,
            name="input_projection",
            # Its own seeds: Keras initialisers given one seed draw the same leading numbers
            # whatever the shape, so each layer's seeds differ (classifier +0 and +1,
            # projection +2, recurrent kernels +3 and +4).
            **_dense_initializers(config.projection_init, config.seed + 2),
        )(rows)
        input_dim = config.input_projection
    recurrent = make_rnn(
        config.cell,
        config.units,
        return_state=config.classifier_reads == "final_state",
        unroll=config.unroll,
        name="rnn",
        **_recurrent_initializers(config, input_dim),
    )
    if config.classifier_reads == "final_state":
        _, *states = recurrent(rows)
        features = states[0]  # h: [h] for simple/concat, [h, c] for lstm
    else:
        features = recurrent(rows)
    classifier_init = _dense_initializers(config.classifier_init, config.seed)
    logits = keras.layers.Dense(mnist_data.NUM_CLASSES, name="logits", **classifier_init)(features)
    return keras.Model(images, logits, name="mnist_rows")


def make_optimizer(config: Config, total_steps: int) -> keras.optimizers.Optimizer:
    learning_rate = config.learning_rate
    if config.schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(learning_rate, total_steps)
    return keras.optimizers.Adam(learning_rate, epsilon=config.adam_epsilon)


def accuracy(model: keras.Model, dataset: tf.data.Dataset) -> float:
    """Fraction of correctly classified examples of ``dataset`` (batches of images, labels)."""
    correct = total = 0
    for images, labels in dataset:
        predictions = np.argmax(model(images, training=False), axis=-1)
        correct += int(np.sum(predictions == labels.numpy()))
        total += len(predictions)
    return correct / total
