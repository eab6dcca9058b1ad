"""The echo command, ``python -m tfrnn.experiments.echo_deps``: its flags, help and ``main``.

Each kind of run has its own folder under runs/echo_deps/, so that no default run overwrites
another's results: a single run writes metrics.json, curve.png and model.keras to --workdir
(default runs/echo_deps/<config>); a suite keeps its runs and its table and plots in
--workdir (default runs/echo_deps/canonical or runs/echo_deps/styles). The recorded results
in experiments/echo_deps/ are refreshed only on request (make record-echo). The logic lives
in tfrnn.tasks.echo.train.
"""

import os

from absl import flags, logging

from tfrnn import cli
from tfrnn.engine import compile_cache, distribute, threads, timing
from tfrnn.engine import workdir as workdir_lib
from tfrnn.errors import UsageError
from tfrnn.tasks.echo import config as echo_config
from tfrnn.tasks.echo import train as echo_train
from tfrnn.tasks.echo.config import BOUNDS, EchoConfig

SUITES = ("none", "canonical", "styles")
ROOT = os.path.join("runs", "echo_deps")

# What --help says ({command}: how to run it from the current folder, tfrnn.cli.help_text).
USAGE = """\
Trains the echo-dependency task of r2rt's "RNNs in TensorFlow I": a recurrent network learns
a random binary series whose odds depend on the inputs 3 and 8 steps back, with truncated
backpropagation through time over windows of --num_steps steps. One run, or a suite of runs
with a table and plots, writes its results to --workdir; stopped at any point, the same
command resumes.

examples:
  {command}  # one run, the tutorial's (5, 4)
  {command} --num_steps 10 --state_size 16 --epochs 10
  {command} --suite canonical  # make echo-deps: (5, 4) and (10, 16)
  {command} --suite styles  # make echo-styles: TF-style n, 2n, true n
  {command} --strategy mirrored  # streams split over the local GPUs

More: docs/architecture.md (how a run flows), docs/scaling.md (strategies, preemption).
"""


def _bounded(name):
    low, high = BOUNDS[name]
    return f" In [{low}, {high}]."


FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags: one run's configuration, a suite, the strategy."""
    defaults = EchoConfig()
    flags.DEFINE_integer(
        "num_steps", defaults.num_steps, "Window length n." + _bounded("num_steps")
    )
    flags.DEFINE_integer(
        "state_size", defaults.state_size, "Units of the cell." + _bounded("state_size")
    )
    flags.DEFINE_string("cell", defaults.cell, "concat (the tutorial's), simple or lstm.")
    flags.DEFINE_string(
        "mode", defaults.mode, "How the state is carried: stateful, explicit or true (TBPTT)."
    )
    flags.DEFINE_integer(
        "epochs",
        None,
        "Epochs, a fresh series each. Default: 1 for one run; the suite's own for a suite."
        + _bounded("epochs"),
    )
    flags.DEFINE_integer(
        "batch_size",
        defaults.batch_size,
        "Streams trained side by side (global: split over the replicas of --strategy)."
        + _bounded("batch_size"),
    )
    flags.DEFINE_integer("seed", defaults.seed, "Seed of weights and series." + _bounded("seed"))
    flags.DEFINE_integer(
        "series_length",
        defaults.series_length,
        "Steps of the series drawn each epoch." + _bounded("series_length"),
    )
    flags.DEFINE_string(
        "workdir",
        None,
        "Output directory. Default: runs/echo_deps/<config> for one run, runs/echo_deps/<suite>"
        " for a suite (its runs in <config> folders, its table and plots beside them).",
    )
    flags.DEFINE_integer(
        "checkpoint_every",
        echo_train.CHECKPOINT_EVERY,
        "Checkpoint every this many windows (a multiple of 100) and at each epoch's end; the"
        " same command resumes from the last checkpoint in --workdir.",
    )
    flags.DEFINE_string(
        "suite",
        "none",
        "canonical: (5, 4) and (10, 16) with a table, summary.json and summary.png."
        " styles: TF-style n and 2n against true n for n in 3, 5, 8; table and plots to"
        " --styles_dir.",
    )
    distribute.define_flags(flags)
    flags.adopt_module_key_flags(distribute)  # --help lists --strategy and --cpu_replicas
    workdir_lib.define_flags(flags)
    flags.adopt_module_key_flags(workdir_lib)
    compile_cache.define_flags(flags)
    flags.adopt_module_key_flags(compile_cache)
    # A window is about a hundred tiny thunks: handing them between threads costs more than
    # it saves (tfrnn.engine.threads).
    threads.define_flags(flags, default=1)
    flags.adopt_module_key_flags(threads)
    flags.DEFINE_string(
        "styles_dir", None, "Where --suite styles writes its table and plots. Default: --workdir."
    )


def main(argv):
    if not FLAGS["verbosity"].present:
        # TensorFlow logs every checkpoint at INFO; --verbosity=0 shows them again.
        logging.set_verbosity(logging.WARNING)
    cli.refuse_arguments(argv)
    if FLAGS.suite not in SUITES:
        raise UsageError(f"--suite must be one of {', '.join(SUITES)}, got {FLAGS.suite!r}")
    config = EchoConfig(
        cell=FLAGS.cell,
        state_size=FLAGS.state_size,
        num_steps=FLAGS.num_steps,
        mode=FLAGS.mode,
        epochs=1 if FLAGS.epochs is None else FLAGS.epochs,
        seed=FLAGS.seed,
        series_length=FLAGS.series_length,
        batch_size=FLAGS.batch_size,
    )
    if FLAGS.suite != "none":
        for name in ("num_steps", "state_size"):
            if FLAGS[name].present:
                raise UsageError(f"--{name} is set by --suite {FLAGS.suite}; leave it out")
    # Every setting checked before anything is written (--epochs 0 is an error, not "default").
    config = echo_config.check_config(config)
    # Before anything starts TensorFlow's devices: --cpu_replicas splits the CPU.
    strategy = distribute.make_strategy(FLAGS.strategy, FLAGS.cpu_replicas)
    workdir = FLAGS.workdir or os.path.join(
        ROOT, config.name if FLAGS.suite == "none" else FLAGS.suite
    )
    workdir_lib.prepare(workdir)  # a bad --workdir is refused before any training
    with (
        distribute.lost_workers_as_usage_errors(),
        timing.measured() as phases,
    ):
        if FLAGS.suite == "canonical":
            echo_train.run_canonical(
                config, workdir, epochs=FLAGS.epochs, strategy=strategy, fresh=FLAGS.fresh
            )
        elif FLAGS.suite == "styles":
            echo_train.run_styles(
                config,
                workdir,
                FLAGS.styles_dir or workdir,
                epochs=FLAGS.epochs,
                strategy=strategy,
                fresh=FLAGS.fresh,
            )
        else:
            echo_train.train_and_evaluate(
                config,
                workdir,
                strategy=strategy,
                checkpoint_every=FLAGS.checkpoint_every,
                fresh=FLAGS.fresh,
            )
        print(phases.line(), flush=True)
