"""Tests of tfrnn.cli: one-line errors, a quiet start-up in commands only, and --help."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tfrnn.cli import run
from tfrnn.errors import UsageError

REPO = Path(__file__).resolve().parents[1]


def test_usage_error_is_one_line_and_exit_2(capsys):
    def main(argv):
        raise UsageError("--num_steps must be positive, got 0")

    with pytest.raises(SystemExit) as exit_info:
        run(main, argv=["prog"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: --num_steps must be positive, got 0\n"


def test_a_flag_absl_cannot_parse_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(lambda argv: None, argv=["prog", "--no_such_flag=1"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: Unknown command line flag 'no_such_flag'\n"


def test_other_errors_are_not_hidden():
    def main(argv):
        raise RuntimeError("a bug, not a usage problem")

    with pytest.raises(RuntimeError, match="a bug"):
        run(main, argv=["prog"])


def _python(script: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=environment,
        cwd=REPO,
        timeout=120,
        check=True,
    )


def test_quiet_tensorflow_keeps_its_start_up_off_stderr():
    # What every command does first: its stderr holds only what tfrnn writes.
    script = (
        "from tfrnn import cli; cli.quiet_tensorflow(); import tensorflow as tf; "
        "print(float(tf.constant(2.0) + 1))"
    )
    result = _python(script)
    assert result.stdout == "3.0\n"
    assert result.stderr == ""


def test_importing_the_library_changes_neither_the_log_level_nor_stderr():
    modules = sorted(
        ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for path in (REPO / "tfrnn").rglob("*.py")
        if path.name != "__main__.py" and "torch_peer" not in path.name
    )
    script = (
        "import importlib, os, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "import tensorflow as tf\n"
        "tf.constant(1.0) + 1\n"
        "print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'))\n"
    )
    result = _python(script)
    assert result.stdout == "None\n"
    # TensorFlow's own start-up lines still reach the caller's stderr: nothing hid them.
    assert "tfrnn.cli" in modules and "tfrnn.serving.export" in modules
    assert result.stderr != ""


@pytest.mark.parametrize("module", ["tfrnn.experiments.mnist", "tfrnn.experiments.echo_deps"])
def test_help_of_each_experiment_lists_the_strategy_flags(module):
    # absl's --help exits with status 1 after printing the main module's key flags.
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    flag_lines = [line.strip() for line in result.stdout.splitlines()]
    for flag in ("--strategy:", "--cpu_replicas:"):
        assert any(line.startswith(flag) for line in flag_lines), flag


@pytest.mark.parametrize(
    "arguments, expected", [([], 1), (["--intra_op_threads=0"], 0), (["--intra_op_threads=3"], 3)]
)
def test_the_echo_command_sets_its_intra_op_threads_before_tensorflow_starts(arguments, expected):
    # The command's own main replaced by one that runs an op and reports the runtime's count.
    script = (
        "from tfrnn import cli\n"
        "from tfrnn.tasks.echo import main as echo_main\n"
        "import tensorflow as tf\n"
        "echo_main.main = lambda argv: print(float(tf.reduce_sum(tf.ones([4]))),"
        " tf.config.threading.get_intra_op_parallelism_threads())\n"
        f"cli.launch('tfrnn.tasks.echo.main', argv=['echo', *{arguments!r}])\n"
    )
    assert _python(script).stdout == f"4.0 {expected}\n"


def test_a_negative_intra_op_thread_count_is_one_line_and_exit_2():
    result = subprocess.run(
        [sys.executable, "-m", "tfrnn.experiments.echo_deps", "--intra_op_threads=-2"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --intra_op_threads must be 0 (one per core) or more, got -2"
    ]
