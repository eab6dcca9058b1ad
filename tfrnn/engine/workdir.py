"""One run per workdir: the folder checked before any work, the lock a run holds on it,
``--fresh``, and ``model.keras`` written whole or not at all.

:func:`prepare` makes the workdir, or refuses it in one line before the data loads: a path
that is a file or lies under one, a folder that cannot be made, or a workdir that
``python -m tfrnn.convert`` wrote (its ``conversion.json``): training would replace the
converted TF1 model, so it is refused with or without ``--fresh``, and the way to keep it is
another ``--workdir``.

:func:`hold` takes ``workdir/lock`` with ``fcntl.flock`` and writes the holder's PID in it.
The kernel drops a flock when its process ends, however it ends, so a lock left by a killed
run (SIGKILL, a lost machine) is never held: the next run takes it over and says whose it
was. A second run while the first is alive is refused with the holder's PID. A run that ends
normally empties the file, so only a killed run's PID is left to report. Under
``multi_worker`` only the chief takes it: the other workers write nothing to the workdir.

``--fresh`` (:func:`define_flags`, both commands) discards a workdir's checkpoints and
configuration before a run, which then starts from step 0; without it a workdir whose
checkpoints are all damaged is refused (:class:`tfrnn.engine.checkpoints.Checkpoints`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys

from tfrnn.errors import UsageError

LOCK_NAME = "lock"
# What python -m tfrnn.convert writes beside the model it converted from a TF1 checkpoint.
CONVERSION_RECORD = "conversion.json"
MODEL_NAME = "model.keras"


def define_flags(flags) -> None:
    """Defines ``--fresh`` on an absl ``flags`` module."""
    flags.DEFINE_boolean(
        "fresh",
        False,
        "Start afresh: delete --workdir's checkpoints and config.json first instead of"
        " resuming (needed when every checkpoint there is damaged).",
    )


@contextlib.contextmanager
def hold(workdir: str, *, chief: bool = True):
    """Holds ``workdir``'s lock for the ``with`` block (the chief's only; others: no-op).

    Raises:
      UsageError: another live process holds it (the message names its PID), or
        :func:`prepare` refuses the workdir.
    """
    if not chief:
        yield
        return
    prepare(workdir)
    path = os.path.join(workdir, LOCK_NAME)
    handle = open(path, "a+")  # noqa: SIM115 (held open for the whole block)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(
                f"{workdir} is in use by PID {_pid_in(handle) or 'unknown'} (it holds {path});"
                " wait for that run to end, or pass another --workdir"
            ) from None
        # Held: a PID still in the file is that of a run killed before it could empty it.
        stale = _pid_in(handle)
        if stale and stale != os.getpid():
            print(f"taking over the lock of PID {stale}, which ended without releasing it")
            sys.stdout.flush()
        _write_pid(handle, f"{os.getpid()}\n")
        try:
            yield
        finally:
            _write_pid(handle, "")  # however the block ends: this run released the lock
    finally:
        handle.close()  # closing the last descriptor releases the flock


def _write_pid(handle, text: str) -> None:
    handle.seek(0)
    handle.truncate()
    handle.write(text)
    handle.flush()


def _pid_in(handle) -> int | None:
    handle.seek(0)
    text = handle.read().strip()
    return int(text) if text.isdigit() else None


def discard_run(workdir: str) -> None:
    """Deletes what makes ``workdir`` resume (checkpoints, config.json): ``--fresh``."""
    shutil.rmtree(os.path.join(workdir, "checkpoints"), ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(workdir, "config.json"))


def prepare(workdir: str) -> None:
    """Makes ``workdir`` (and the folders above it) for a training run.

    Raises:
      UsageError: ``workdir`` is a file or lies under one, cannot be made (no permission,
        a read-only file system), or holds a model ``python -m tfrnn.convert`` wrote.
    """
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as error:
        raise UsageError(_why_not_a_folder(workdir, error)) from None
    record = os.path.join(workdir, CONVERSION_RECORD)
    if os.path.exists(record):
        raise UsageError(
            f"{workdir} holds a model converted from a TF1 checkpoint ({record}), which"
            " training would replace, with --fresh too: to keep it, train in another --workdir"
        )


def _why_not_a_folder(path: str, error: OSError) -> str:
    """Why ``os.makedirs(path)`` failed, in one line that names the file in the way."""
    existing = path
    while existing and not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if existing == path:
        return f"--workdir {path} is a file, not a folder"
    if existing and not os.path.isdir(existing):
        return f"--workdir {path} lies under {existing}, which is a file, not a folder"
    return f"cannot create --workdir {path} ({error.strerror})"


def save_model(model, workdir: str) -> str:
    """Writes ``model`` to ``workdir/model.keras`` whole or not at all; returns the path.

    The model is saved under a temporary name in ``workdir`` and renamed into place, so an
    interruption (Ctrl-C, a full disk) leaves the previous ``model.keras``, or none, never
    half a file.
    """
    path = os.path.join(workdir, MODEL_NAME)
    # Hidden, this process's own, and ending in .keras as Keras requires.
    partial = os.path.join(workdir, f".model-partial-{os.getpid()}.keras")
    try:
        model.save(partial)
        os.replace(partial, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(partial)
    return path
