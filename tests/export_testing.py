"""What the export and predict tests share: tiny trained-looking workdirs, REST conversion.

Not a test module: helpers imported by tests/test_export*.py and tests/test_predict.py.
"""

import json
import os

import keras
import numpy as np
import tensorflow as tf

from tfrnn.layers.cells import make_rnn


def save_workdir(workdir, model: keras.Model, config: dict) -> str:
    """Writes what a training run leaves for the exporter: model.keras, and ``config`` (whose
    "task" names the serving spec) as config.json and in metrics.json."""
    os.makedirs(workdir, exist_ok=True)
    model.save(os.path.join(workdir, "model.keras"))
    with open(os.path.join(workdir, "config.json"), "w") as handle:
        json.dump(config, handle)
    with open(os.path.join(workdir, "metrics.json"), "w") as handle:
        json.dump({"config": config, "epochs": []}, handle)
    return str(workdir)


def mnist_model(seed: int = 0) -> keras.Model:
    """An MNIST-shaped model: (batch, 28, 28) in [0, 1] -> standardise -> LSTM(8) -> 10 logits."""
    keras.utils.set_random_seed(seed)
    images = keras.Input((28, 28), name="images")
    rows = keras.layers.Normalization(mean=0.13, variance=0.09)(images)
    logits = keras.layers.Dense(10, name="logits")(make_rnn("lstm", 8, name="rnn")(rows))
    return keras.Model(images, logits)


def random_images(count: int, seed: int = 0) -> np.ndarray:
    """float32 (count, 28, 28) in [0, 1], with blobs so that the classes differ."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.0, 0.3, size=(count, 28, 28)).astype(np.float32)
    for image in images:
        top, left = rng.integers(0, 20, size=2)
        image[top : top + 8, left : left + 4] = 1.0
    return images


def rest_to_tensors(body: dict, signature) -> dict[str, tf.Tensor]:
    """A TF Serving REST body converted to tensors through ``signature``'s input specs.

    Follows the REST API's two forms: ``instances`` (a list of rows; each row is the value
    of the only input, or a {input name: value} dict) and ``inputs`` (columns: the value of
    the only input, or {input name: whole batch}). Values get the spec's dtype.
    """
    specs = signature.structured_input_signature[1]
    if "instances" in body:
        rows = body["instances"]
        if all(isinstance(row, dict) for row in rows):
            columns = {name: [row[name] for row in rows] for name in specs}
        else:
            (name,) = specs
            columns = {name: rows}
    else:
        inputs = body["inputs"]
        columns = inputs if isinstance(inputs, dict) else {next(iter(specs)): inputs}
    return {
        name: tf.constant(np.asarray(columns[name], dtype=spec.dtype.as_numpy_dtype))
        for name, spec in specs.items()
    }
