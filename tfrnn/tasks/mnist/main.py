"""MNIST row by row with an LSTM: ``python -m tfrnn.experiments.mnist --epochs 11``.

Every field of :class:`tfrnn.tasks.mnist.config.Config` is a flag; ``--preset C1|C2|C3`` starts from
a tutorial's configuration instead of the default one, and any other flag overrides it (an
explicit ``--epochs`` replaces the step count of C2 and C3).
Re-running the same command after an interruption resumes from the last checkpoint in
``--workdir``. Examples::

    python -m tfrnn.experiments.mnist --epochs 11 --data_dir /data/mnist   # the 4 IDX files
    python -m tfrnn.experiments.mnist --preset C2 --workdir runs/mnist_c2
    python -m tfrnn.experiments.mnist --dataset fashion_mnist --cell simple
    python -m tfrnn.experiments.mnist --strategy mirrored        # all local GPUs

``--strategy`` and ``--cpu_replicas`` (see :mod:`tfrnn.engine.distribute`) are not part of the
run's configuration: a run may resume under another strategy.
"""

import dataclasses
import typing

from absl import flags, logging

from tfrnn.engine import compile_cache, distribute
from tfrnn.engine import workdir as workdir_lib
from tfrnn.errors import UsageError
from tfrnn.tasks.mnist import config as mnist_config
from tfrnn.tasks.mnist import train as mnist_train

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags: the run's, the strategy's, and one per Config field."""
    flags.DEFINE_string(
        "preset", None, f"start from a tutorial's run: {', '.join(mnist_config.PRESETS)}"
    )
    flags.DEFINE_string(
        "workdir", "runs/mnist", "checkpoints, metrics, plots and the exported model"
    )
    flags.DEFINE_integer(
        "checkpoint_every", 200, "checkpoint every this many steps (and each epoch)"
    )
    distribute.define_flags(flags)
    flags.adopt_module_key_flags(distribute)  # --help lists --strategy and --cpu_replicas
    workdir_lib.define_flags(flags)
    flags.adopt_module_key_flags(workdir_lib)
    compile_cache.define_flags(flags)
    flags.adopt_module_key_flags(compile_cache)
    _define_config_flags()


def _define_config_flags():
    # One flag per Config field, default None: "not given" keeps the preset's value.
    hints = typing.get_type_hints(mnist_config.Config)
    for field in dataclasses.fields(mnist_config.Config):
        kind = hints[field.name]
        help_text = f"{field.metadata['help']} (default {field.default!r})"
        if kind is bool:
            flags.DEFINE_boolean(field.name, None, help_text)
        elif kind is int:
            flags.DEFINE_integer(field.name, None, help_text)
        elif kind is float:
            flags.DEFINE_float(field.name, None, help_text)
        else:
            flags.DEFINE_string(field.name, None, help_text)


def config_from_flags() -> mnist_config.Config:
    """The run's configuration: ``--preset``'s (or the default one) and the flags given."""
    overrides = {
        field.name: FLAGS[field.name].value for field in dataclasses.fields(mnist_config.Config)
    }
    return mnist_config.config_for(FLAGS.preset, **overrides)


def main(argv):
    if not FLAGS["verbosity"].present:
        # TensorFlow logs every checkpoint and export at INFO; --verbosity=0 shows them again.
        logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    # First: --cpu_replicas splits the CPU, which must happen before TensorFlow starts.
    strategy = distribute.make_strategy(FLAGS.strategy, FLAGS.cpu_replicas)
    config = config_from_flags()
    title = f"MNIST rows, preset {FLAGS.preset.upper()}" if FLAGS.preset else "MNIST rows"
    with distribute.lost_workers_as_usage_errors():
        mnist_train.train_and_evaluate(
            config,
            FLAGS.workdir,
            strategy=strategy,
            checkpoint_every=FLAGS.checkpoint_every,
            title=title,
            fresh=FLAGS.fresh,
        )
