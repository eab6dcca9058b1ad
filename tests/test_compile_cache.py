"""Tests of tfrnn.engine.compile_cache: entries checked before TensorFlow reads them."""

import os

import pytest
from command_testing import run_command

from tfrnn.engine import compile_cache
from tfrnn.errors import UsageError

ECHO_RUN = ["--series_length=100000", "--epochs=1", "--mode=explicit"]


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protocol-buffer field (number and length under 128)."""
    return bytes([number << 3 | 2, len(payload)]) + payload


def test_an_entry_is_whole_only_up_to_its_last_byte():
    entry = _field(1, b"key" * 5) + _field(2, b"program" * 9) + _field(3, b"\x90" * 100)
    assert compile_cache.is_whole_entry(entry)
    cut_short = [entry[:length] for length in range(len(entry))]
    assert not any(compile_cache.is_whole_entry(data) for data in cut_short)
    assert not compile_cache.is_whole_entry(entry + b"\x0a")  # a field with no length


def test_damaged_entries_are_removed_and_compiled_again(tmp_path):
    # A run fills the cache; every entry is then cut short, as a damaged copy would be.
    # TensorFlow itself would fail the next run's first compiled call ("Read less bytes
    # than requested"); the command removes those entries and compiles them again.
    cache = tmp_path / "cache"
    first = run_command("echo_deps", [*ECHO_RUN, f"--workdir={tmp_path / 'a'}",
                                      f"--compile_cache={cache}"])  # fmt: skip
    assert first.returncode == 0, first.stderr
    entries = sorted(cache.glob("*.pb"))
    assert entries
    for entry in entries:
        entry.write_bytes(entry.read_bytes()[:-100])
    second = run_command("echo_deps", [*ECHO_RUN, f"--workdir={tmp_path / 'b'}",
                                       f"--compile_cache={cache}"])  # fmt: skip
    assert second.returncode == 0, second.stderr
    removed = [line for line in second.stderr.splitlines() if "damaged compiled" in line]
    assert len(removed) == len(entries)
    assert sorted(cache.glob("*.pb")) == entries  # written anew, whole
    assert all(compile_cache.is_whole_entry(entry.read_bytes()) for entry in entries)


def test_a_cache_folder_that_cannot_be_made_is_a_usage_error(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_XLA_FLAGS", raising=False)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UsageError, match="--compile_cache .*file/xla"):
        compile_cache.enable(str(blocker / "xla"))
    assert "TF_XLA_FLAGS" not in os.environ


def test_enable_sets_the_flag_once_and_leaves_a_users_choice(tmp_path, monkeypatch):
    monkeypatch.setenv("TF_XLA_FLAGS", "--tf_xla_auto_jit=0")
    compile_cache.enable("")
    assert os.environ["TF_XLA_FLAGS"] == "--tf_xla_auto_jit=0"
    compile_cache.enable(str(tmp_path / "mine"))
    chosen = os.environ["TF_XLA_FLAGS"]
    assert chosen == f"--tf_xla_auto_jit=0 --tf_xla_persistent_cache_directory={tmp_path}/mine"
    compile_cache.enable(str(tmp_path / "other"))
    assert os.environ["TF_XLA_FLAGS"] == chosen
    assert not (tmp_path / "other").exists()
