"""The errors a user can fix, which every entry point reports in one line (``tfrnn.cli``),
and the few words that say why an operation failed."""

import os


class UsageError(Exception):
    """A problem the user can fix (bad flag, missing or corrupt file, NaN loss).

    Library code raises it with a message that names the input at fault; an entry point lets
    it propagate to :func:`tfrnn.cli.run`, which prints ``error: <message>`` on one line and
    exits with status 2, instead of a traceback from deep inside TensorFlow.
    """


def failure_reason(error: Exception) -> str:
    """Why an operation failed, in a few words: an OSError's ``strerror`` ("File too
    large"), else its message's first line without TensorFlow's file paths and op context
    ("<op>: <temporary file>; File too large [Op:SaveV2]" -> "File too large")."""
    text = getattr(error, "strerror", None) or getattr(error, "message", None) or str(error)
    lines = text.strip().splitlines()
    if not lines:
        return type(error).__name__
    return lines[0].rsplit("; ", 1)[-1].split(" [Op:")[0]


def check_folder(path: str, flag: str) -> None:
    """A one-line UsageError unless ``path``, given as ``flag``, is a folder: "``flag`` PATH
    does not exist", or "``flag`` PATH is a file, not a folder"."""
    if os.path.isdir(path):
        return
    if os.path.exists(path):
        raise UsageError(f"{flag} {path} is a file, not a folder")
    raise UsageError(f"{flag} {path} does not exist")
