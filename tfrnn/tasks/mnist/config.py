"""The MNIST experiment's configuration: :class:`Config`, the tutorials' presets, validation.

Every field of :class:`Config` is a command-line flag of ``python -m tfrnn.experiments.mnist``;
:data:`PRESETS` reproduce the three MNIST tutorials (C1-C3 in the README), and :class:`Config`
with no preset is the best configuration found for 11 epochs on a 2-core CPU.
"""

from __future__ import annotations

import dataclasses
import math

from tfrnn.data import mnist as mnist_data
from tfrnn.errors import UsageError
from tfrnn.layers.cells import TUTORIAL_CELL_KINDS

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
    cell: str = _field("lstm", "recurrent cell: " + ", ".join(TUTORIAL_CELL_KINDS))
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
            raise UsageError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
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


# The range of each integer field. The upper bounds keep a typo from reaching TensorFlow as
# an allocation it cannot make; seeds are what NumPy and TensorFlow both accept.
BOUNDS = {
    "units": (1, 4096),
    "input_projection": (0, 4096),
    "batch_size": (1, 65_536),
    "epochs": (1, 10_000),
    "train_steps": (0, 100_000_000),
    "validation_size": (0, 59_999),
    "seed": (0, 2**31 - 1),
}


def validate(config: Config) -> None:
    """Raises a one-line UsageError for any field out of range."""

    def check(condition, message):
        if not condition:
            raise UsageError(message)

    check(
        config.cell in TUTORIAL_CELL_KINDS,
        f"--cell must be one of {', '.join(TUTORIAL_CELL_KINDS)}, got {config.cell!r}",
    )
    for name, (low, high) in BOUNDS.items():
        value = getattr(config, name)
        check(low <= value <= high, f"--{name} must be in [{low}, {high}], got {value}")
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
        check(value in allowed, f"--{name} must be one of {', '.join(allowed)}, got {value!r}")
