"""XLA's persistent compilation cache: a run's compiled programs kept on disk for the next run.

Compiling the training step with XLA costs a run about a second before its first step (echo's
window runner: about 0.65 s of its 1.2 s of start-up, experiments/bench/README.md). TensorFlow
can store each compiled program in a folder (``--tf_xla_persistent_cache_directory`` in
``TF_XLA_FLAGS``) and load it in a later process whose program is the same (the key is a
fingerprint of the program and the device), so a second run of the same configuration skips
the compilation. :func:`enable` turns it on for the process; :func:`tfrnn.cli.launch` calls
it for the commands that define ``--compile_cache`` (the experiments and the bench).

TensorFlow writes an entry to a temporary file and renames it, but it reads an entry without
checking it: one cut short (a copied or damaged folder) fails the first compiled call with
``Read less bytes than requested``. So :func:`enable` first checks that each entry is whole
(:func:`is_whole_entry`) and removes those that are not; TensorFlow then compiles those
programs again and writes them anew.
"""

from __future__ import annotations

import os
import sys

from tfrnn.errors import UsageError, failure_reason

_FLAG = "--tf_xla_persistent_cache_directory"
ENTRY_SUFFIX = ".pb"
EXECUTABLE_FIELD = 3


def default_directory() -> str:
    """``$XDG_CACHE_HOME/tfrnn/xla`` (``~/.cache/tfrnn/xla`` without XDG_CACHE_HOME)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "tfrnn", "xla")


def define_flags(flags) -> None:
    """Defines ``--compile_cache`` on an absl ``flags`` module."""
    flags.DEFINE_string(
        "compile_cache",
        default_directory(),
        "Folder where XLA keeps compiled programs for later runs of the same configuration"
        " (TensorFlow's persistent compilation cache); empty: compile every run afresh.",
    )


def enable(directory: str) -> list[str]:
    """Makes this process's XLA compilations use the cache in ``directory``.

    Call it before the first compiled call: TensorFlow reads ``TF_XLA_FLAGS`` once. An empty
    ``directory`` does nothing, and so does a ``TF_XLA_FLAGS`` that names a cache already
    (the user's choice stands). Creates ``directory`` and removes its damaged entries, with
    one line on stderr for each.

    Returns:
      The paths of the entries removed.

    Raises:
      UsageError: ``directory`` cannot be created or read.
    """
    existing = os.environ.get("TF_XLA_FLAGS", "")
    if not directory or _FLAG in existing:
        return []
    try:
        os.makedirs(directory, exist_ok=True)
        removed = remove_damaged_entries(directory)
    except OSError as error:
        raise UsageError(
            f"--compile_cache {directory}: {failure_reason(error)} (an empty value turns the"
            " cache off)"
        ) from None
    for path in removed:
        print(f"removed a damaged compiled program from the cache: {path}", file=sys.stderr)
    os.environ["TF_XLA_FLAGS"] = f"{existing} {_FLAG}={directory}".strip()
    return removed


def remove_damaged_entries(directory: str) -> list[str]:
    """Deletes the entries of ``directory`` that are not whole; returns their paths."""
    removed = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if not name.endswith(ENTRY_SUFFIX) or not os.path.isfile(path):
            continue
        with open(path, "rb") as entry:
            whole = is_whole_entry(entry.read())
        if not whole:
            os.remove(path)
            removed.append(path)
    return removed


def is_whole_entry(data: bytes) -> bool:
    """Whether ``data`` is a whole cache entry: a protocol-buffer message (TensorFlow's
    ``XlaSerializedCacheEntry``: the key, field 1; the program, 2; the compiled executable,
    3, written in that order) whose top-level fields all end inside it, the executable among
    them. Cut short anywhere, an entry either ends inside a field or lacks the executable."""
    position, fields = 0, set()
    try:
        while position < len(data):
            key, position = _varint(data, position)
            fields.add(key >> 3)
            wire_type = key & 7
            if wire_type == 0:
                _, position = _varint(data, position)
            elif wire_type == 2:
                length, position = _varint(data, position)
                position += length
            elif wire_type in (1, 5):
                position += 8 if wire_type == 1 else 4
            else:
                return False  # groups (3, 4) are not used here; 6 and 7 do not exist
    except IndexError:
        return False
    return position == len(data) and EXECUTABLE_FIELD in fields


def _varint(data: bytes, position: int) -> tuple[int, int]:
    """The base-128 integer at ``position`` and the position after it; IndexError past the end."""
    value = shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, position
