"""TensorFlow's intra-op threads: how many threads one op, or one compiled program, may use.

TensorFlow's default is one thread per core. A compiled XLA program runs its independent
parts (its thunks) side by side on those threads, which pays when the parts are large (the
MNIST step's row shards) and costs when they are tiny: each hand-over wakes a thread, and a
window of the echo task is about a hundred thunks of a few microseconds each. Its runs of
windows take 15-35% less time on one thread (experiments/bench/README.md), so the echo
command defaults to one (``--intra_op_threads``).

The number is fixed when TensorFlow's runtime starts: :func:`tfrnn.cli.launch` sets it
before absl's ``app.run``, as it does the compilation cache.
"""

from __future__ import annotations

import tensorflow as tf

from tfrnn.errors import UsageError


def define_flags(flags, default: int) -> None:
    """Defines ``--intra_op_threads`` (default ``default``) on an absl ``flags`` module."""
    flags.DEFINE_integer(
        "intra_op_threads",
        default,
        "Threads TensorFlow gives one op or one compiled program; 0: one per core"
        " (TensorFlow's default).",
    )


def set_intra_op_threads(count: int) -> None:
    """Makes this process's TensorFlow use ``count`` intra-op threads (0: one per core).

    Raises:
      UsageError: ``count`` is negative, or TensorFlow's runtime has already started.
    """
    if count < 0:
        raise UsageError(f"--intra_op_threads must be 0 (one per core) or more, got {count}")
    try:
        tf.config.threading.set_intra_op_parallelism_threads(count)
    except RuntimeError as error:  # "... cannot be modified after initialization."
        raise UsageError(f"--intra_op_threads {count}: {error}") from None
