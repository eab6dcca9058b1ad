"""What every tfrnn command-line entry point shares: quiet start-up and one-line errors.

Import this module *before* TensorFlow in an entry point (``python -m tfrnn.…``): it sets
``TF_CPP_MIN_LOG_LEVEL=2`` so that TensorFlow's CUDA/cuInit start-up lines do not bury the
program's own output. Set ``TF_CPP_MIN_LOG_LEVEL=0`` in the environment to see them again.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


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
