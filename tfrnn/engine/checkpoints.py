"""Checkpoint bookkeeping: what a run saves, where each worker saves it, and the config guard.

:class:`Checkpoints` saves a dict of trackables (weights, optimiser, the loop's counters and
records, a task's own state) with a ``tf.train.CheckpointManager`` that keeps the last three.
Saving is a collective step under ``MultiWorkerMirroredStrategy``, so every worker saves;
only the chief writes to ``workdir/checkpoints``, the others to a temporary folder removed by
:meth:`Checkpoints.close`. Every worker restores from the chief's folder, so on several
machines the workdir must be one they all see.

:func:`check_same_config` keeps a workdir to one configuration: a resume with another one is
refused, and ``config.json`` records the run's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile

import tensorflow as tf

from tfrnn.engine import distribute
from tfrnn.engine.reporting import write_json_atomically
from tfrnn.errors import UsageError, failure_reason


class Checkpoints:
    """Saves and restores ``items`` (name -> trackable) under ``workdir/checkpoints``."""

    def __init__(self, workdir: str, items: dict, *, chief: bool, max_to_keep: int = 3):
        self.directory = os.path.join(workdir, "checkpoints")
        self.checkpoint = tf.train.Checkpoint(**items)
        self.write_dir = (
            self.directory if chief else tempfile.mkdtemp(prefix="tfrnn_worker_checkpoints_")
        )
        self._temporary = not chief
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, self.write_dir, max_to_keep=max_to_keep
        )

    def latest(self) -> str | None:
        """The chief's newest checkpoint, or None."""
        return tf.train.latest_checkpoint(self.directory)

    def describe_latest(self) -> str:
        """The newest checkpoint for a message: its path, or that there is none."""
        return self.latest() or "none yet, the run starts afresh"

    def restore(self, *, fresh: bool = False) -> str | None:
        """Restores the newest intact checkpoint, if any; returns its path.

        A damaged one (its .index or .data truncated or overwritten: a tensor that no longer
        reads back with its checksum) is named in one line and passed over for the next
        newest. Every item must match. ``fresh``: restore nothing.

        Raises:
          UsageError: there are checkpoints and none is intact (``--fresh`` starts afresh).
        """
        if fresh:
            return None
        damaged = []
        for path in self._candidates():
            reason = damage(path)
            if reason is None:
                self.checkpoint.restore(path).assert_existing_objects_matched()
                return path
            print(f"checkpoint {path} is damaged ({reason}); trying the one before it")
            damaged.append(os.path.basename(path))
        if damaged:
            raise UsageError(
                f"no intact checkpoint in {self.directory} ({', '.join(damaged)} damaged);"
                " pass --fresh to delete them and start afresh"
            )
        return None

    def _candidates(self) -> list[str]:
        """The chief's checkpoint prefixes, newest first, from their files (not from the
        ``checkpoint`` state file, which may itself be damaged or name a damaged one)."""
        numbers = set()
        for name in os.listdir(self.directory) if os.path.isdir(self.directory) else ():
            match = re.fullmatch(r"ckpt-(\d+)\.(index|data-\d+-of-\d+)", name)
            if match:
                numbers.add(int(match.group(1)))
        return [os.path.join(self.directory, f"ckpt-{n}") for n in sorted(numbers, reverse=True)]

    def save(self, number: int) -> None:
        """Writes checkpoint ``number``; a failed write (full disk, no permission) is a
        one-line UsageError. The previous checkpoints stay intact: a save writes new files
        and only then names them in the ``checkpoint`` state file."""
        try:
            self.manager.save(checkpoint_number=number)
        except (OSError, tf.errors.OpError) as error:
            raise UsageError(
                f"cannot write checkpoint {number} to {self.write_dir} ({failure_reason(error)}); "
                f"the last one written ({self.describe_latest()}) is intact: free space or "
                "fix permissions and run the same command again"
            ) from None

    def close(self) -> None:
        """Removes a non-chief worker's temporary folder."""
        if self._temporary:
            shutil.rmtree(self.write_dir, ignore_errors=True)


def damage(path: str) -> str | None:
    """Why checkpoint ``path`` cannot be restored, or None if every tensor reads back.

    Reading a tensor checks its crc32c, so this finds a truncated or overwritten .data file
    as well as an unreadable .index.
    """
    try:
        reader = tf.train.load_checkpoint(path)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except (tf.errors.OpError, ValueError, IndexError, OSError) as error:
        return failure_reason(error)
    return None


def all_finite(variables) -> bool:
    """True when every floating-point variable holds finite numbers only."""
    return all(
        bool(tf.reduce_all(tf.math.is_finite(v)))
        for v in variables
        if tf.as_dtype(v.dtype).is_floating
    )


def check_workers_agree(strategy: tf.distribute.Strategy, global_step: tf.Variable) -> None:
    """Every worker must resume from the same step, or the collectives would never match."""
    if distribute.is_default(strategy):
        return
    steps = distribute.gather_rows(
        strategy,
        strategy.experimental_distribute_values_from_function(
            lambda _: tf.reshape(tf.identity(global_step), [1])
        ),
    )
    lowest, highest = int(tf.reduce_min(steps)), int(tf.reduce_max(steps))
    if lowest != highest:
        raise UsageError(
            f"the workers restored different steps ({lowest} to {highest}): every worker must "
            "see the chief's --workdir (a shared file system), or start afresh in an empty one"
        )


# Config keys that say where an input lies, not what it holds: a resume may change them, and
# config.json then records the new value. What the input holds belongs in the config too
# (MNIST records its IDX files' sha256 as data_fingerprint).
LOCATION_KEYS = ("data_dir",)


def _differences(saved: dict, config: dict, prefix: str = ""):
    """(key, saved value, new value) for each difference; nested dicts by dotted key."""
    for key in sorted(set(saved) | set(config)):
        old, new = saved.get(key), config.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            yield from _differences(old, new, f"{prefix}{key}.")
        elif old != new:
            yield prefix + key, old, new


def _short(value) -> str:
    """A config value for a one-line message: its repr, or, when that is longer than 24
    characters, its first 16 and an ellipsis (a sha256 is told apart by its first dozen
    digits)."""
    text = repr(value)
    return text if len(text) <= 24 else text[:16] + "…"


def check_same_config(workdir: str, config: dict, *, write: bool) -> None:
    """Refuses a ``workdir`` whose config.json holds another run; records ``config`` there.

    Keys of :data:`LOCATION_KEYS` may differ (the new value is recorded). ``write``: whether
    this process writes config.json (the chief).
    """
    path = os.path.join(workdir, "config.json")
    if os.path.exists(path):
        with open(path) as handle:
            saved = json.load(handle)
        changed = [item for item in _differences(saved, config) if item[0] not in LOCATION_KEYS]
        if changed:
            details = ", ".join(
                f"{key}: {_short(old)} -> {_short(new)}" for key, old, new in changed[:3]
            )
            if len(changed) > 3:
                details += f" and {len(changed) - 3} more"
            raise UsageError(
                f"{workdir} holds a run with another configuration ({details}); "
                "resume with the same flags, or pass another --workdir"
            )
        if saved == config:
            return
    if write:
        write_json_atomically(path, config)
