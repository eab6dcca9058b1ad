"""Tests of tfrnn.cli: a UsageError becomes one line on stderr and exit status 2."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tfrnn.cli import UsageError, run


def test_usage_error_is_one_line_and_exit_2(capsys):
    def main(argv):
        raise UsageError("--num_steps must be positive, got 0")

    with pytest.raises(SystemExit) as exit_info:
        run(main, argv=["prog"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: --num_steps must be positive, got 0\n"


def test_other_errors_are_not_hidden():
    def main(argv):
        raise RuntimeError("a bug, not a usage problem")

    with pytest.raises(RuntimeError, match="a bug"):
        run(main, argv=["prog"])


def test_importing_cli_first_keeps_tensorflow_start_up_quiet():
    # The point of the module: a tfrnn command's stderr holds only what tfrnn writes.
    environment = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    script = "import tfrnn.cli, tensorflow as tf; print(float(tf.constant(2.0) + 1))"
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=environment,
        cwd=Path(__file__).resolve().parents[1],
        timeout=120,
        check=True,
    )
    assert result.stdout == "3.0\n"
    assert result.stderr == ""


@pytest.mark.parametrize("module", ["tfrnn.experiments.mnist", "tfrnn.experiments.echo_deps"])
def test_help_of_each_experiment_lists_the_strategy_flags(module):
    # absl's --help exits with status 1 after printing the main module's key flags.
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=120,
    )
    flag_lines = [line.strip() for line in result.stdout.splitlines()]
    for flag in ("--strategy:", "--cpu_replicas:"):
        assert any(line.startswith(flag) for line in flag_lines), flag
