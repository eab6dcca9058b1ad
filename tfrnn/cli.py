"""What every tfrnn command-line entry point shares: a quiet start-up, its help, one-line
errors and a one-line Ctrl-C.

An entry point (``python -m tfrnn.…``) calls :func:`launch` with the module that holds its
flags, ``main`` and ``USAGE`` (what ``--help`` says, for a user). On a machine without CUDA,
TensorFlow prints several lines about missing drivers and cuInit while it is imported, which
would bury the program's own output, so :func:`quiet_tensorflow` imports it first with those
lines silenced, and only then is the command's module (and TensorFlow with it) loaded.
Importing this module changes nothing.
"""

from __future__ import annotations

import importlib
import os
import re
import sys

from tfrnn.errors import UsageError

# What a shell reports for a process that SIGINT (Ctrl-C) ended: 128 + 2.
INTERRUPTED_STATUS = 130
# absl's help flags: --help and its aliases, and --helpfull.
HELP_FLAGS = ("-h", "-?", "-help", "--help", "--helpshort")
FULL_HELP_FLAGS = ("-helpfull", "--helpfull")
# The modules whose flags --helpfull lists beside tfrnn's: absl's logging and app basics,
# not the test, TPU and tracing flags that importing TensorFlow defines.
ABSL_BASICS = ("absl.logging", "absl.app")


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


def refuse_arguments(argv) -> None:
    """For a command that takes flags only: UsageError if ``argv`` holds anything after the
    program's name (absl leaves there what is not a flag)."""
    if len(argv) > 1:
        raise UsageError(
            f"unexpected arguments: {' '.join(argv[1:])} (the command takes flags only; "
            "--help lists them)"
        )


def python_command() -> str:
    """This Python as the user types it from the current folder: ``.venv/bin/python`` in the
    checkout after ``make``, else its full path (for the examples in ``--help``)."""
    relative = os.path.relpath(sys.executable)
    return sys.executable if relative.startswith("..") else relative


def _parse_flags(argv):
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except flags.Error as error:  # absl's own report is two lines and exit 1
        _exit_with(required_flags_message(error, flags.FLAGS) or error)


def required_flags_message(error: Exception, flag_values) -> str | None:
    """absl's report of required flags of ``flag_values`` left out (a line per flag), as one
    sentence; None for any other error."""
    names = re.findall(r"Flag --(\w+) must have a value other than None", str(error))
    if not names:
        return None
    if len(names) == 1:
        return f"--{names[0]} is required: {flag_values[names[0]].help}"
    listed = " and ".join(f"--{name}" for name in names)
    return f"{listed} are required (--help describes them)"


def _exit_with(error) -> None:
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
        flags.FLAGS(list(argv), known_only=True)
        for name, apply in defined.items():
            apply(flags.FLAGS[name].value)
    except (flags.Error, UsageError) as error:
        _exit_with(error)


def _help_asked(argv) -> str | None:
    """``"short"`` for ``--help`` (or an alias), ``"full"`` for ``--helpfull``, else None;
    arguments after ``--`` are not flags."""
    arguments = argv[1 : argv.index("--")] if "--" in argv else argv[1:]
    if any(argument in FULL_HELP_FLAGS for argument in arguments):
        return "full"
    if any(argument in HELP_FLAGS for argument in arguments):
        return "short"
    return None


def help_text(module, *, full: bool = False) -> str:
    """What ``--help`` prints: the module's ``USAGE`` (its ``{command}`` filled in with how to
    run it from here) and its flags; ``full``: also the flags of tfrnn's other modules the
    command uses, and absl's logging and app flags (:data:`ABSL_BASICS`)."""
    from absl import app, flags

    app.define_help_flags()  # absl.app's flags, so that --helpfull can list them
    command = f"{python_command()} -m {_entry_point(module)}"
    lines = [_usage(module).format(command=command).rstrip(), "", "flags:"]
    lines += _flag_lines(module.__name__)
    if full:
        modules = flags.FLAGS.flags_by_module_dict()
        shown = set(flags.FLAGS.get_key_flags_for_module(module.__name__))
        others = sorted(name for name in modules if name.startswith("tfrnn."))
        for name in [*others, *ABSL_BASICS]:
            if not set(modules.get(name, ())) <= shown:  # a module's flags not listed yet
                lines += ["", f"{name}:", *_flag_lines(name)]
    else:
        lines += ["", "--helpfull lists every flag, absl's logging flags too."]
    return "\n".join(lines) + "\n"


def _flag_lines(module_name: str) -> list[str]:
    """absl's description of the module's key flags, without its heading."""
    from absl import flags

    return flags.FLAGS.module_help(module_name).splitlines()[2:]


def _usage(module) -> str:
    """The module's ``USAGE``; without one, its docstring's first paragraph, with the Sphinx
    markup of a developer's docstring (````x````, ``:mod:`x```) taken out."""
    usage = getattr(module, "USAGE", None)
    if usage:
        return usage
    summary = (module.__doc__ or "").strip().split("\n\n")[0]
    summary = re.sub(r":\w+:`~?([^`]+)`", r"\1", summary).replace("``", "")
    return summary.replace("{", "{{").replace("}", "}}")


def _entry_point(module) -> str:
    """The module ``python -m`` ran (``tfrnn.export``), else the one behind it."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is None:
        return module.__name__
    return spec.name.removesuffix(".__main__")  # a package run as `python -m tfrnn.bench`


def launch(module_name: str, argv=None) -> None:
    """The whole of an entry point: quiets TensorFlow, then imports ``module_name``, defines
    its flags (its ``define_flags()``, if it has one), answers ``--help`` (exit 0), applies
    its start-up flags (:func:`_configure_runtime`), and runs its ``main(argv)``.

    Ctrl-C at any moment outside training (which stops at a checkpoint, see
    :mod:`tfrnn.engine.loop`) ends the command with one line and exit 130: whatever it was
    writing is written whole or not at all (every file is written under a temporary name and
    renamed), so the same command can simply be run again.
    """
    try:
        argv = list(sys.argv if argv is None else argv)
        quiet_tensorflow()
        module = importlib.import_module(module_name)
        if hasattr(module, "define_flags"):
            module.define_flags()
        asked = _help_asked(argv)
        if asked:
            print(help_text(module, full=asked == "full"), end="")
            sys.exit(0)
        _configure_runtime(argv)
        run(module.main, argv)
    except KeyboardInterrupt:
        print("interrupted by Ctrl-C (SIGINT); run the same command again", file=sys.stderr)
        sys.exit(INTERRUPTED_STATUS)
    except SystemExit as done:
        if done.code in (None, 0) and "TF_CONFIG" not in os.environ:
            exit_at_once()
        raise


def exit_at_once() -> None:
    """Ends a command that succeeded without Python's and TensorFlow's finalisation, which
    spends about a second in native destructors and writes nothing of the command's: every
    file a command writes is closed (and renamed into place) before its ``main`` returns.
    Under several workers (``TF_CONFIG``) a command exits as usual, so that the cluster's
    coordination service shuts down in order."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
