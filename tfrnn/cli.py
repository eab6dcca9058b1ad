"""What every tfrnn command-line entry point shares: a quiet start-up and one-line errors.

An entry point (``python -m tfrnn.…``) calls :func:`launch` with the module that holds its
flags and ``main``. On a machine without CUDA, TensorFlow prints several lines about missing
drivers and cuInit while it is imported, which would bury the program's own output, so
:func:`quiet_tensorflow` imports it first with those lines silenced, and only then is the
command's module (and TensorFlow with it) loaded. Importing this module changes nothing.
"""

from __future__ import annotations

import importlib
import os
import sys

from tfrnn.errors import UsageError


def quiet_tensorflow() -> None:
    """Imports TensorFlow with its start-up lines silenced, unless the user chose a level.

    Sets ``TF_CPP_MIN_LOG_LEVEL=3`` if it is unset and imports TensorFlow with the process's
    stderr sent to /dev/null for the length of the import (some lines are written before
    TensorFlow reads its log level). ``TF_CPP_MIN_LOG_LEVEL=0`` in the environment shows them
    again. Python errors are never hidden: a failing import raises after stderr is restored.
    """
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


def run(main, argv=None) -> None:
    """Runs an absl ``main``; a :class:`UsageError`, or a flag absl cannot parse, becomes
    ``error: …`` on one line and exit 2."""
    from absl import app

    def guarded(args):
        try:
            return main(args)
        except UsageError as error:
            _exit_with(error)

    app.run(guarded, argv=argv, flags_parser=_parse_flags)


def _parse_flags(argv):
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except flags.Error as error:  # absl's own report is two lines and exit 1
        _exit_with(error)


def _exit_with(error: Exception):
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)


def _configure_runtime(argv) -> None:
    """Applies the command's start-up flags, those it defines of ``--compile_cache``
    (:mod:`tfrnn.engine.compile_cache`) and ``--intra_op_threads``
    (:mod:`tfrnn.engine.threads`), before absl's ``app.run``: importing TensorFlow registers
    a start-up callback of absl's (it counts the GPUs) that starts TensorFlow's runtime,
    which reads both then. A command that defines neither parses nothing here."""
    from absl import flags

    from tfrnn.engine import compile_cache, threads

    appliers = {
        "compile_cache": compile_cache.enable,
        "intra_op_threads": threads.set_intra_op_threads,
    }
    defined = {name: apply for name, apply in appliers.items() if name in flags.FLAGS}
    if not defined:
        return
    try:
        flags.FLAGS(list(sys.argv if argv is None else argv), known_only=True)
        for name, apply in defined.items():
            apply(flags.FLAGS[name].value)
    except (flags.Error, UsageError) as error:
        _exit_with(error)


def launch(module_name: str, argv=None) -> None:
    """The whole of an entry point: quiets TensorFlow, then imports ``module_name``, defines
    its flags (its ``define_flags()``, if it has one), applies its start-up flags
    (:func:`_configure_runtime`), and runs its ``main(argv)``."""
    from absl import flags

    quiet_tensorflow()
    module = importlib.import_module(module_name)
    if hasattr(module, "define_flags"):
        module.define_flags()
    _configure_runtime(argv)
    # --help prints the docstring of __main__ and the key flags of the program's file
    # (sys.argv[0]), here the thin entry point: give it those of the module behind it.
    sys.modules["__main__"].__doc__ = module.__doc__
    for flag in flags.FLAGS.get_key_flags_for_module(module):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    run(module.main, argv)
