"""Tests of tfrnn.cli: one-line errors, a quiet start-up in commands only, --help, and
Ctrl-C."""

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
from absl import flags
from command_testing import user_environment

from tfrnn import cli
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
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=user_environment(),
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


@pytest.mark.parametrize(
    "command, flag",
    [
        ("tfrnn.experiments.mnist", "--strategy:"),
        ("tfrnn.export", "--export_dir:"),
    ],
)
def test_help_exits_0_with_what_the_command_does_examples_and_its_flags(command, flag):
    result = subprocess.run(
        [sys.executable, "-m", command, "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0] and not lines[0].startswith(" ")  # the description, first
    # Examples a user can paste: the interpreter as typed here (.venv/bin/python after make).
    python = os.path.relpath(sys.executable, REPO)
    python = sys.executable if python.startswith("..") else python
    assert f"  {python} -m {command} --" in result.stdout
    assert any(line.strip().startswith(flag) for line in lines[lines.index("flags:") :])
    for markup in ("``", ":mod:", ":class:", ":func:"):  # a developer's docstring is not help
        assert markup not in result.stdout


def test_helpfull_adds_absl_basics_but_not_the_flags_tensorflow_and_absltest_define(
    echo_command,
):
    assert "test_tmpdir" in flags.FLAGS and "tt_check_filter" in flags.FLAGS  # both defined
    short = cli.help_text(echo_command)
    full = cli.help_text(echo_command, full=True)
    assert "\nexamples:\n" in short and "``" not in short and "--cpu_replicas:" in short
    assert full.startswith(short.split("\nflags:")[0])
    assert "--verbosity" in full and "--verbosity" not in short
    for module in ("absl.logging:", "absl.app:"):
        assert module in full
    for name in ("--test_tmpdir", "--tt_check_filter", "--hbm_oom_exit", "absltest", "tensorflow."):
        assert name not in full
    assert full.count("--strategy:") == 1  # an adopted module's flags are not listed twice


def test_the_help_of_a_module_without_usage_is_its_docstrings_first_paragraph_plain():
    module = types.ModuleType("tfrnn.some_command")
    module.__doc__ = "Reads ``model.keras``, see :mod:`tfrnn.serving` ({braces}).\n\nMore."
    assert cli.help_text(module).splitlines()[0] == (
        "Reads model.keras, see tfrnn.serving ({braces})."
    )


def test_required_flags_left_out_are_one_sentence():
    values = flags.FlagValues()
    flags.DEFINE_string("workdir", None, "training workdir", flag_values=values)
    flags.DEFINE_string("export_dir", None, "base folder", flag_values=values)
    flags.mark_flags_as_required(["workdir"], flag_values=values)
    with pytest.raises(flags.Error) as error:
        values(["prog"])
    assert cli.required_flags_message(error.value, values) == (
        "--workdir is required: training workdir"
    )
    flags.mark_flags_as_required(["export_dir"], flag_values=values)
    with pytest.raises(flags.Error) as error:
        values(["prog"])
    assert cli.required_flags_message(error.value, values) == (
        "--workdir and --export_dir are required (--help describes them)"
    )
    assert cli.required_flags_message(flags.Error("Unknown flag"), values) is None


def test_a_command_of_flags_only_refuses_arguments():
    cli.refuse_arguments(["prog"])
    with pytest.raises(UsageError, match=r"^unexpected arguments: extra more \(the command"):
        cli.refuse_arguments(["prog", "extra", "more"])


def _sigint_script(patch: str) -> str:
    """The MNIST command, with ``patch`` (Python source; os and signal imported) run first."""
    return (
        "import os, runpy, signal, sys\n"
        f"{patch}\n"
        "sys.argv = ['mnist'] + sys.argv[1:]\n"
        "runpy.run_module('tfrnn.experiments.mnist', run_name='__main__')\n"
    )


def _interrupted(script, *args):
    result = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        env=user_environment(),
        timeout=240,
    )
    assert result.returncode == 130, result.stderr[-3000:]
    assert result.stderr.splitlines() == [
        "interrupted by Ctrl-C (SIGINT); run the same command again"
    ]
    return result


def test_ctrl_c_while_a_command_starts_is_one_line_and_exit_130(tmp_path):
    # SIGINT once the flags are read, while the strategy is made: nothing is written yet.
    patch = (
        "from tfrnn import cli\n"
        "cli.quiet_tensorflow()\n"  # as the command does, before distribute imports TensorFlow
        "from tfrnn.engine import distribute\n"
        "make = distribute.make_strategy\n"
        "def interrupted(*args):\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    return make(*args)\n"
        "distribute.make_strategy = interrupted"
    )
    _interrupted(_sigint_script(patch), f"--workdir={tmp_path / 'run'}")
    assert not (tmp_path / "run").exists()


def test_ctrl_c_while_the_model_is_saved_leaves_no_half_written_model_or_export(data_dir, tmp_path):
    # SIGINT after the first entry of model.keras's zip is written: the save stops halfway.
    patch = (
        "import zipfile\n"
        "write = zipfile.ZipFile.writestr\n"
        "def interrupted(self, *args, **kwargs):\n"
        "    write(self, *args, **kwargs)\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "zipfile.ZipFile.writestr = interrupted"
    )
    workdir = tmp_path / "run"
    args = ["--units=8", "--batch_size=32", "--epochs=1", "--jit_compile=false"]
    _interrupted(_sigint_script(patch), *args, f"--data_dir={data_dir}", f"--workdir={workdir}")
    assert (workdir / "checkpoints").is_dir()  # trained to its end, then stopped saving
    assert not (workdir / "model.keras").exists()
    assert [path.name for path in workdir.iterdir() if path.name.startswith(".")] == []
    assert not (workdir / "export").exists() or not any((workdir / "export").iterdir())


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


def test_a_command_that_succeeded_exits_without_finalisation_unless_in_a_cluster():
    # Python's and TensorFlow's finalisation takes about a second and writes nothing of the
    # command's; under TF_CONFIG the cluster's coordination needs the ordinary exit.
    script = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('finalised'))\n"
        "sys.argv = ['predict', '--help']\n"
        "from tfrnn import cli\n"
        "cli.launch('tfrnn.serving.predict')\n"
    )
    environments = {
        "alone": dict(os.environ),
        "cluster": {**os.environ, "TF_CONFIG": '{"cluster": {"worker": ["localhost:1"]}}'},
    }
    running = {
        name: subprocess.Popen(
            [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True
        )
        for name, env in environments.items()
    }
    outputs = {name: process.communicate(timeout=120)[0] for name, process in running.items()}
    assert all(process.returncode == 0 for process in running.values())
    assert "examples:" in outputs["alone"]  # stdout was flushed before the exit
    assert "finalised" not in outputs["alone"]
    assert outputs["cluster"].rstrip().endswith("finalised")
