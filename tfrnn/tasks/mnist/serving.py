"""MNIST's serving spec: one signature from pixel rows to class probabilities.

``serving_default`` takes ``rows`` float32 [None, 28, 28], pixels scaled to [0, 1]
(pixel / 255, as in training; any standardisation is a layer of the model), and returns
``probabilities`` float32 [None, 10] and ``classes`` int64 [None].
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tfrnn.data.mnist import IMAGE_SIZE
from tfrnn.errors import UsageError
from tfrnn.layers.cells import RNN, ConcatRNNCell
from tfrnn.layers.serving_rnn import ServingRNN
from tfrnn.serving import checks
from tfrnn.serving.spec import ServingSpec
from tfrnn.serving.tf_serving import DEFAULT_SIGNATURE

INPUTS = (
    "rows: float32 [batch, 28, 28], one 28x28 grayscale image per row of the batch, "
    "white digit on black, pixels scaled to [0, 1] (pixel / 255) as in training"
)


def check_model(model: keras.Model) -> None:
    """UsageError unless ``model`` takes float images (batch, 28, 28)."""
    inputs = [(tensor.dtype, tuple(tensor.shape)) for tensor in model.inputs]
    # One input, of that kind of dtype and shape.
    if [("float" in dtype, shape[1:]) for dtype, shape in inputs] != [
        (True, (IMAGE_SIZE, IMAGE_SIZE))
    ]:
        takes = ", ".join(f"{dtype} {shape}" for dtype, shape in inputs)
        raise UsageError(f"the model takes {takes}: not an MNIST model (float32 (batch, 28, 28))")


def _checked(rows) -> tf.Tensor:
    """``rows`` (batch, 28, 28) once its shape, size, values and range have passed."""
    (rows,) = checks.after(
        [
            lambda: checks.has_shape(
                rows, "rows", (None, IMAGE_SIZE, IMAGE_SIZE), "[batch, 28, 28]"
            ),
            lambda: checks.not_empty(rows, "rows is an empty batch: send at least one image"),
            lambda: checks.finite(rows, "rows"),
            lambda: checks.in_range(
                rows, "rows", 0.0, 1.0, "pixels scaled to [0, 1] (pixel / 255)"
            ),
        ],
        rows,
    )
    return rows


def serving_copy(model: keras.Model) -> keras.Model:
    """``model`` with the same weights, each recurrent layer unrolled over the 28 rows.

    A one-image request is a few hundred small ops; served as a while loop, TensorFlow's
    executor also runs each iteration's frame. Unrolled it has none. tfrnn's recurrent
    layers become :class:`~tfrnn.layers.serving_rnn.ServingRNN`, which also runs an LSTM's
    batches of up to 128 rows as one ``BlockLSTMV2`` op (outputs equal to float32 rounding;
    the p99 of a one-image request about halves, experiments/bench/README.md); Keras' own
    recurrent layers keep their class, unrolled.
    """

    def clone(layer):
        config = layer.get_config()
        if isinstance(layer, keras.layers.RNN):
            config["unroll"] = True
            if type(layer) is RNN:
                return ServingRNN.from_config(config)
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def archive(model: keras.Model) -> keras.export.ExportArchive:
    """The MNIST serving module: ``serving_default`` (rows) -> probabilities, classes, served
    by the model's :func:`serving_copy`."""
    model = serving_copy(model)
    export_archive = keras.export.ExportArchive()
    # Tracking the model exports its variables: a signature that only closed over them would
    # load in TF2 but not in TF Serving's (TF1 session) loader.
    export_archive.track(model)

    def serve(rows):
        probabilities = tf.nn.softmax(model(_checked(rows), training=False), axis=-1)
        return {"probabilities": probabilities, "classes": tf.argmax(probabilities, axis=-1)}

    export_archive.add_endpoint(
        DEFAULT_SIGNATURE,
        serve,
        input_signature=[tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE], tf.float32, name="rows")],
    )
    return export_archive


def example_inputs(declared: dict) -> dict[str, dict[str, np.ndarray]]:
    """The example request: one image (1, 28, 28) of a vertical stroke, roughly a handwritten 1."""
    del declared  # one fixed input
    image = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.float32)
    image[4:24, 13:15] = 1.0
    return {DEFAULT_SIGNATURE: {"rows": image[None]}}


def keras_reference(model: keras.Model, signature: str, inputs: dict) -> dict[str, np.ndarray]:
    """The Keras model's probabilities (batch, 10) and classes (batch,) for ``inputs["rows"]``."""
    del signature  # the only one
    probabilities = keras.ops.softmax(model(inputs["rows"], training=False), axis=-1)
    return {"probabilities": np.asarray(probabilities), "classes": np.argmax(probabilities, -1)}


SPEC = ServingSpec(
    task="mnist",
    layers=(RNN, ConcatRNNCell),
    inputs=INPUTS,
    check_model=check_model,
    archive=archive,
    example_inputs=example_inputs,
    keras_reference=keras_reference,
)
