"""What every tfrnn command-line entry point shares: quiet start-up and one-line errors.

Import this module *before* TensorFlow in an entry point (``python -m tfrnn.…``): on a
machine without CUDA, TensorFlow prints several lines about missing drivers and cuInit that
would bury the program's own output. Unless ``TF_CPP_MIN_LOG_LEVEL`` is already set, this
module sets it to 3 and imports TensorFlow with the process's stderr silenced for the length of
the import (some of those lines are written before TensorFlow's log level is read). Set
``TF_CPP_MIN_LOG_LEVEL=0`` in the environment to see them again. Python errors are never
hidden: a failing import raises after stderr is restored.
"""

from __future__ import annotations

import os
import sys


def _import_tensorflow_quietly() -> None:
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ or "tensorflow" in sys.modules:
        return  # the user chose a level, or it is too late to quiet the import
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    sys.stderr.flush()
    saved_stderr = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import tensorflow  # noqa: F401
    finally:
        os.dup2(saved_stderr, 2)
        os.close(saved_stderr)


_import_tensorflow_quietly()


class UsageError(Exception):
    """A problem the user can fix (bad flag, missing or corrupt file, NaN loss).

    Entry points let it propagate to :func:`run`, which prints its message on one line and
    exits non-zero, instead of a traceback from deep inside TensorFlow.
    """


def run(main, argv=None) -> None:
    """Runs an absl ``main`` and turns a :class:`UsageError` into ``error: …`` and exit 2."""
    from absl import app

    def guarded(args):
        try:
            return main(args)
        except UsageError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)

    app.run(guarded, argv=argv)
