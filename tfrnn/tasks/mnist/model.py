"""MNIST read row by row: the model, the tutorials' presets, and ``train_and_evaluate``.

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

:data:`PRESETS` reproduce the three MNIST tutorials (C1-C3 in the README); :class:`Config`
with no preset is the best configuration found for 11 epochs on a 2-core CPU.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil

import keras
import numpy as np
import tensorflow as tf

from tfrnn.data import mnist as mnist_data
from tfrnn.engine import distribute, training
from tfrnn.errors import UsageError
from tfrnn.layers.cells import CELL_KINDS, make_rnn
from tfrnn.serving import export

# Pixel statistics of the MNIST training set, as fractions of 255 (see the dataset README).
PIXEL_MEAN = 0.1307
PIXEL_STD = 0.3081
SCHEDULES = ("constant", "cosine")
RECURRENT_INITS = ("keras", "tf1")
# Initialisers of a Dense layer (classifier, input projection), weights then bias:
# keras: glorot-uniform, 0; truncated_normal: truncated normal sigma 0.1, 0.1 (tutorial C1);
# random_normal: normal sigma 1 for both (tf.random_normal, C2's classifier);
# random_normal_bias_0.1: normal sigma 1, 0.1 (C3's projection and classifier).
CLASSIFIER_INITS = ("keras", "truncated_normal", "random_normal", "random_normal_bias_0.1")
PROJECTION_INITS = ("keras", "random_normal_bias_0.1")
CLASSIFIER_READS = ("last_output", "final_state")


def _field(default, help_text):
    return dataclasses.field(default=default, metadata={"help": help_text})


@dataclasses.dataclass
class Config:
    """Everything that determines a run's result. Every field is a command-line flag."""

    dataset: str = _field(
        "mnist",
        "TFDS dataset of 28x28 grayscale images (mnist, kmnist...); with --data_dir, the set"
        " its files hold: " + ", ".join(mnist_data.IDX_DATASETS),
    )
    data_dir: str | None = _field(None, "folder of the four MNIST IDX files (.gz or not)")
    validation_size: int = _field(0, "leave out the first N training images (TF1 held out 5000)")
    cell: str = _field("lstm", "recurrent cell: " + ", ".join(CELL_KINDS))
    units: int = _field(128, "units of the recurrent cell")
    input_projection: int = _field(0, "units of a Dense layer on each row before the RNN; 0: none")
    normalize: bool = _field(True, "standardise pixels with the MNIST mean/std inside the model")
    recurrent_init: str = _field(
        "keras", "keras (glorot/orthogonal) or tf1 (one glorot-uniform over [x; h], as TF1 cells)"
    )
    classifier_init: str = _field(
        "keras",
        "keras (glorot, bias 0), truncated_normal (sigma 0.1, bias 0.1: C1), random_normal "
        "(sigma 1, bias too: C2) or random_normal_bias_0.1 (sigma 1, bias 0.1: C3)",
    )
    projection_init: str = _field(
        "keras", "input projection: keras (glorot, bias 0) or random_normal_bias_0.1 (C3)"
    )
    classifier_reads: str = _field("last_output", "last_output or final_state (h)")
    unroll: bool = _field(False, "unroll the 28 steps like TF1 static_rnn instead of a loop")
    batch_size: int = _field(128, "global batch size")
    learning_rate: float = _field(2e-3, "Adam learning rate (initial, with the cosine schedule)")
    adam_epsilon: float = _field(1e-7, "Adam's epsilon (Keras 1e-7; TF1's AdamOptimizer 1e-8)")
    schedule: str = _field("cosine", "learning-rate schedule: constant, or cosine decay to 0")
    epochs: int = _field(11, "training epochs")
    train_steps: int = _field(0, "training steps in all, instead of --epochs; 0: use --epochs")
    seed: int = _field(0, "seed of the initial weights and of the shuffles")
    jit_compile: bool = _field(True, "compile the training step with XLA")


# The tutorials' runs. TF1's read_data_sets kept 55,000 training images (validation_size 5000)
# and fed pixels in [0, 1] without standardisation; its AdamOptimizer's epsilon was 1e-8; its
# cells initialised one glorot-uniform matrix over [x; h] (recurrent_init tf1) and
# BasicLSTMCell added forget_bias 1 (Keras' unit_forget_bias, on by default in tfrnn.layers.cells'
# lstm).
_TUTORIAL = dict(
    adam_epsilon=1e-8,
    validation_size=5000,
    normalize=False,
    recurrent_init="tf1",
    classifier_init="keras",
    schedule="constant",
    input_projection=0,
    unroll=False,
)
PRESETS = {
    # C1 "network structure": 100 units, batch 100, Adam 1e-4, 11 epochs, classifier on
    # final_state.h with truncated-normal(0.1) weights and bias 0.1.
    "C1": Config(
        **_TUTORIAL | dict(classifier_init="truncated_normal", classifier_reads="final_state"),
        cell="lstm",
        units=100,
        batch_size=100,
        learning_rate=1e-4,
        epochs=11,
    ),
    # C2 "basic LSTM on MNIST": 128 units, batch 128, Adam 1e-3, 800 iterations, static_rnn
    # over an unstacked list (unroll), classifier on outputs[-1], its weight and bias
    # tf.random_normal (sigma 1).
    "C2": Config(
        **_TUTORIAL | dict(unroll=True, classifier_init="random_normal"),
        classifier_reads="last_output",
        cell="lstm",
        units=128,
        batch_size=128,
        learning_rate=1e-3,
        train_steps=800,
    ),
    # C3 "RNN on handwriting": a Dense 28->128 input projection, 128 units, batch 128,
    # Adam 1e-3, 1,000 iterations, classifier on the final state h; projection and
    # classifier weights tf.random_normal (sigma 1), their biases 0.1.
    "C3": Config(
        **_TUTORIAL
        | dict(
            input_projection=128,
            projection_init="random_normal_bias_0.1",
            classifier_init="random_normal_bias_0.1",
        ),
        classifier_reads="final_state",
        cell="lstm",
        units=128,
        batch_size=128,
        learning_rate=1e-3,
        train_steps=1000,
    ),
}
# What each tutorial reported, for the summary line and the README.
TUTORIAL_CLAIMS = {
    "C1": "test accuracy printed after each of 11 epochs (no figure given)",
    "C2": "99.21% test accuracy, on the first 128 test images only",
    "C3": "about 97% test accuracy",
}


def config_for(preset: str | None = None, **overrides) -> Config:
    """The preset's config (or the default one) with ``overrides`` (None values ignored).

    The run's length is ``epochs`` or ``train_steps``: an ``epochs`` override without a
    ``train_steps`` one clears the preset's train_steps (C2 and C3 count steps), and the two
    given together, train_steps > 0, are refused.
    """
    if preset is None:
        base = Config()
    else:
        key = preset.upper()
        if key not in PRESETS:
            raise UsageError(f"--preset must be one of {', '.join(PRESETS)}; got {preset!r}")
        base = PRESETS[key]
    given = {name: value for name, value in overrides.items() if value is not None}
    if "epochs" in given and given.get("train_steps"):
        raise UsageError(
            f"--epochs {given['epochs']} and --train_steps {given['train_steps']} both set the"
            " run's length; give one of them"
        )
    if "epochs" in given:
        given.setdefault("train_steps", 0)
    return dataclasses.replace(base, **given)


def validate(config: Config) -> None:
    """Raises a one-line UsageError for any field out of range."""

    def check(condition, message):
        if not condition:
            raise UsageError(message)

    check(config.cell in CELL_KINDS, f"--cell must be one of {', '.join(CELL_KINDS)}")
    for name in ("units", "batch_size", "epochs"):
        value = getattr(config, name)
        check(value > 0, f"--{name} must be positive, got {value}")
    for name in ("input_projection", "train_steps", "validation_size", "seed"):
        value = getattr(config, name)
        check(value >= 0, f"--{name} must be >= 0, got {value}")
    for name in ("learning_rate", "adam_epsilon"):
        value = getattr(config, name)
        check(
            math.isfinite(value) and value > 0, f"--{name} must be a positive number, got {value}"
        )
    for name, allowed in (
        ("schedule", SCHEDULES),
        ("recurrent_init", RECURRENT_INITS),
        ("classifier_init", CLASSIFIER_INITS),
        ("projection_init", PROJECTION_INITS),
        ("classifier_reads", CLASSIFIER_READS),
    ):
        value = getattr(config, name)
        check(value in allowed, f"--{name} must be one of {', '.join(allowed)}; got {value!r}")


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


def train_and_evaluate(
    config: Config,
    workdir: str,
    *,
    strategy: tf.distribute.Strategy | None = None,
    checkpoint_every: int = 200,
    verbose: bool = True,
    title: str = "",
) -> training.Result:
    """Trains on ``config``'s data, resuming from ``workdir``, then saves and exports the model.

    The configuration recorded (and compared on resume) is ``config`` and ``data_fingerprint``,
    each IDX file's size and sha256 (:func:`tfrnn.data.mnist.idx_digest`): a resume may read
    the same files from another ``data_dir``, not other data.

    Writes to ``workdir`` what :func:`tfrnn.engine.training.fit` writes, plus ``model.keras``, the
    servable SavedModel ``export/1/`` (:func:`tfrnn.serving.export.export_workdir`: signature
    ``serving_default`` from ``rows`` to ``probabilities`` and ``classes``), and
    ``final.json`` with the final test
    accuracy on all test images and on the first 128 (tutorial C2's measure). Under a
    multi-worker ``strategy`` only the chief writes these (see :mod:`tfrnn.engine.distribute`).
    """
    validate(config)
    if config.data_dir:
        # Recorded as an absolute path: where the run read its data, from any directory.
        config = dataclasses.replace(config, data_dir=os.path.abspath(config.data_dir))
    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()
    data = mnist_data.load(config.dataset, config.data_dir, config.validation_size)
    steps_per_epoch = mnist_data.steps_per_epoch(data.train, config.batch_size)
    if steps_per_epoch == 0:
        raise UsageError(
            f"--batch_size {config.batch_size} is larger than the {data.train.num_examples} "
            "training images"
        )
    total_steps = config.train_steps or config.epochs * steps_per_epoch
    task = training.Task(
        make_model=lambda: build_model(config),
        make_optimizer=lambda: make_optimizer(config, total_steps),
        per_example_loss=training.sparse_softmax_cross_entropy,
        train_batches=lambda epoch, skip: mnist_data.train_batches(
            data.train, config.batch_size, epoch, config.seed, skip
        ),
        eval_batches=lambda: mnist_data.test_batches(data.test, 500),
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        global_batch_size=config.batch_size,
    )
    if verbose:
        print(
            f"data: {data.source}, {data.train.num_examples} train / {data.test.num_examples} "
            f"test images; {total_steps} steps of {config.batch_size} "
            f"({steps_per_epoch} a full epoch)",
            flush=True,
        )
    result = training.fit(
        task,
        workdir,
        # What the data is, so that a resume may read the same files from another folder.
        dataclasses.asdict(config) | {"data_fingerprint": data.fingerprint},
        strategy=strategy,
        checkpoint_every=checkpoint_every,
        jit_compile=config.jit_compile,
        verbose=verbose,
        title=title,
    )
    model = result.model
    if not distribute.is_chief(strategy or tf.distribute.get_strategy()):
        return result  # the chief saves, exports and evaluates the same weights
    model.save(os.path.join(workdir, "model.keras"))
    export_dir = os.path.join(workdir, "export")
    # The workdir's export mirrors its model.keras: a re-run replaces it rather than adding
    # versions (exports meant for a server go to their own folder: python -m tfrnn.export).
    shutil.rmtree(export_dir, ignore_errors=True)
    export.export_workdir(workdir, export_dir, version=1)
    final = {
        "test_accuracy": accuracy(model, mnist_data.test_batches(data.test, 500)),
        "test_accuracy_first_128": accuracy(model, mnist_data.test_batches(data.test, 128, 128)),
        "test_images": data.test.num_examples,
    }
    with open(os.path.join(workdir, "final.json"), "w") as handle:
        json.dump(final, handle, indent=2)
    if verbose:
        print(
            f"final test accuracy {100 * final['test_accuracy']:.2f}% on "
            f"{final['test_images']} images, {100 * final['test_accuracy_first_128']:.2f}% on "
            f"the first 128; model in {workdir}/model.keras, SavedModel in {export_dir}/1",
            flush=True,
        )
    return result
