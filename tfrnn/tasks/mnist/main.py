"""The MNIST command, ``python -m tfrnn.experiments.mnist``: its flags, help and ``main``.

Every field of :class:`tfrnn.tasks.mnist.config.Config` is a flag; ``--preset C1|C2|C3`` starts
from a tutorial's configuration instead of the default one, and any other flag overrides it
(an explicit ``--epochs`` replaces the step count of C2 and C3). ``--strategy`` and
``--cpu_replicas`` (see :mod:`tfrnn.engine.distribute`) are not part of the run's
configuration: a run may resume under another strategy. The run itself is
:func:`tfrnn.tasks.mnist.train.train_and_evaluate`.
"""

import dataclasses
import typing

from absl import flags, logging

from tfrnn import cli
from tfrnn.engine import compile_cache, distribute, timing
from tfrnn.engine import workdir as workdir_lib
from tfrnn.tasks.mnist import config as mnist_config
from tfrnn.tasks.mnist import train as mnist_train

FLAGS = flags.FLAGS

# What --help says ({command}: how to run it from the current folder, tfrnn.cli.help_text).
USAGE = """\
Trains an LSTM that reads MNIST digits row by row (the TF1 tutorials C1-C3), and writes its
checkpoints, metrics, plots, model.keras and a SavedModel to --workdir. Stopped at any point
(Ctrl-C, a kill), the same command resumes from the last checkpoint and ends as a run never
stopped.

examples:
  {command} --epochs 11  # make mnist: about 99.1% test accuracy
  {command} --epochs 11 --data_dir /data/mnist  # the four MNIST IDX files, no download
  {command} --preset C2 --workdir runs/mnist_c2  # tutorial C2's run
  {command} --dataset fashion_mnist --cell simple
  {command} --strategy mirrored  # every local GPU

More: docs/architecture.md (how a run flows), docs/scaling.md (strategies, preemption).
"""


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
    cli.refuse_arguments(argv)
    # First: --cpu_replicas splits the CPU, which must happen before TensorFlow starts.
    strategy = distribute.make_strategy(FLAGS.strategy, FLAGS.cpu_replicas)
    config = config_from_flags()
    # Every setting, then --workdir, checked before anything is written or the data loads.
    mnist_config.validate(config)
    workdir_lib.prepare(FLAGS.workdir)
    title = f"MNIST rows, preset {FLAGS.preset.upper()}" if FLAGS.preset else "MNIST rows"
    with (
        distribute.lost_workers_as_usage_errors(),
        timing.measured() as phases,
    ):
        mnist_train.train_and_evaluate(
            config,
            FLAGS.workdir,
            strategy=strategy,
            checkpoint_every=FLAGS.checkpoint_every,
            title=title,
            fresh=FLAGS.fresh,
        )
        print(phases.line(), flush=True)
