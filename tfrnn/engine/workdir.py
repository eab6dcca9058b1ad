"""One run per workdir: the lock a run holds on its workdir, and ``--fresh``.

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
      UsageError: another live process holds it (the message names its PID).
    """
    if not chief:
        yield
        return
    os.makedirs(workdir, exist_ok=True)
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
