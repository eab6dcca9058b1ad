"""What a cluster does to a run, on both commands: signals, a shared workdir, damaged
checkpoints, a full disk, a log that is not a terminal.

Each event happens to a real ``python -m tfrnn.experiments.…`` process where the process is
the point (signals, the lock, the disk, the log), at a fixed training step so the tests do
not depend on timing: a hook on the progress bar's update (called once per step, right after
it) does it. Runs are tiny: MNIST on 96 generated images in batches of 4 (24 steps an
epoch, calls of at most 20 steps), echo on a 400,000-step series (two runs of 100 windows an
epoch).
"""

import json
import os
import pathlib
import resource
import shutil
import signal
import subprocess
import sys

import keras
import pytest
import tensorflow as tf
from absl import flags
from command_testing import run_command, tiny_mnist_config, trained_in_process

from tfrnn.engine import checkpoints, reporting, workdir
from tfrnn.errors import UsageError
from tfrnn.tasks.mnist import train as mnist_train

REPO = pathlib.Path(__file__).resolve().parent.parent
# checkpoint_every 100: only the epochs' ends (24, 48) are checkpointed unless a stop asks.
MNIST_FLAGS = ["--units=8", "--batch_size=4", "--epochs=2", "--checkpoint_every=100"]
ECHO_FLAGS = ["--num_steps=10", "--state_size=16", "--epochs=2", "--series_length=400000"]
WALL_CLOCK = ("seconds", "epoch_seconds", "seconds_per_epoch")


def _mnist_config(data_dir):
    return tiny_mnist_config(data_dir, batch_size=4, epochs=2)


@pytest.fixture(scope="module")
def mnist_uninterrupted(data_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("mnist_uninterrupted")
    return trained_in_process(_mnist_config(data_dir), workdir, checkpoint_every=100)


def _mnist_args(data_dir, workdir, *extra):
    return [*MNIST_FLAGS, f"--data_dir={data_dir}", f"--workdir={workdir}", *extra]


def _without_wall_clock(value):
    if isinstance(value, dict):
        return {k: _without_wall_clock(v) for k, v in value.items() if k not in WALL_CLOCK}
    if isinstance(value, list):
        return [_without_wall_clock(item) for item in value]
    return value


def _metrics(workdir):
    return _without_wall_clock(json.loads((pathlib.Path(workdir) / "metrics.json").read_text()))


def _latest(workdir):
    return os.path.basename(tf.train.latest_checkpoint(str(pathlib.Path(workdir) / "checkpoints")))


def test_sigterm_stops_mnist_at_the_step_reached_and_the_same_command_ends_the_same(
    mnist_uninterrupted, data_dir, tmp_path
):
    # SIGTERM during the first call (steps 1-20): the call ends at step 20, checkpointed
    # there though no checkpoint was due (every 100 steps, and at 24).
    stopped = run_command(
        "mnist",
        _mnist_args(data_dir, tmp_path),
        at_update=5,
        action="os.kill(os.getpid(), signal.SIGTERM)",
    )
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    assert stopped.stderr.splitlines()[-1].startswith("stopped by SIGTERM after step 20: ")
    assert _latest(tmp_path) == "ckpt-20"
    assert not (tmp_path / "model.keras").exists()

    resumed = run_command("mnist", _mnist_args(data_dir, tmp_path))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "(step 20, 0 epochs done)" in resumed.stdout
    assert _metrics(tmp_path) == _metrics(mnist_uninterrupted)

    # Item 6: stdout is a pipe here, so the log is plain lines: no bar redraws.
    for output in (stopped.stdout, resumed.stdout):
        assert "\x1b" not in output and "\r" not in output
    lines = resumed.stdout.splitlines()
    assert "epoch 1/2 24/24 loss" in "\n".join(lines)  # the rest of epoch 1: its end
    assert [line for line in lines if line.startswith("epoch 2/2 ")][-1].startswith(
        "epoch 2/2 24/24 loss "
    )


def test_sigint_stops_echo_mid_epoch_and_the_same_command_ends_the_same(tmp_path):
    # The reference is the command too: in this process (the CPU split in two by conftest,
    # other tests' XLA programs) the last float digits of a step can differ from a fresh one.
    uninterrupted = run_command(
        "echo_deps", [*ECHO_FLAGS, f"--workdir={tmp_path / 'uninterrupted'}"]
    )
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-2000:]
    workdir = tmp_path / "stopped"
    args = [*ECHO_FLAGS, f"--workdir={workdir}"]
    # SIGINT (Ctrl-C) after the first run of 100 windows: checkpoint 1, mid-epoch.
    stopped = run_command(
        "echo_deps", args, at_update=1, action="os.kill(os.getpid(), signal.SIGINT)"
    )
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    assert stopped.stderr.splitlines()[-1].startswith("stopped by SIGINT after step 1: ")
    assert _latest(workdir) == "ckpt-1"

    resumed = run_command("echo_deps", args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "(step 1, 0 epochs done)" in resumed.stdout
    assert _metrics(workdir) == _metrics(tmp_path / "uninterrupted")
    # The plain log: a line per 100 windows.
    assert "\x1b" not in resumed.stdout and "\r" not in resumed.stdout
    assert "epoch 2/2 100/200 loss " in resumed.stdout


def test_a_workdir_in_use_is_refused_naming_its_pid_and_a_killed_runs_lock_taken_over(
    data_dir, tmp_path, capsys
):
    with workdir.hold(str(tmp_path)):  # this process is the run in progress
        second = run_command("mnist", _mnist_args(data_dir, tmp_path))
    assert second.returncode == 2
    assert second.stderr.splitlines()[-1] == (
        f"error: {tmp_path} is in use by PID {os.getpid()} (it holds {tmp_path / 'lock'}); wait"
        " for that run to end, or pass another --workdir"
    )
    assert not (tmp_path / "checkpoints").exists()

    # A run SIGKILLed while it holds the lock leaves its PID in the file, and no flock.
    killed = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, signal, sys\nfrom tfrnn.engine import workdir\n"
            "with workdir.hold(sys.argv[1]):\n    os.kill(os.getpid(), signal.SIGKILL)\n",
            str(tmp_path),
        ],
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    killed.wait(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    capsys.readouterr()
    with workdir.hold(str(tmp_path)):
        assert (tmp_path / "lock").read_text() == f"{os.getpid()}\n"
    assert capsys.readouterr().out == (
        f"taking over the lock of PID {killed.pid}, which ended without releasing it\n"
    )
    assert (tmp_path / "lock").read_text() == ""  # released: the next run says nothing


def _damage(prefix: pathlib.Path, part: str) -> None:
    if part == "data":  # truncated, as by a full disk or a copy cut short
        data = next(prefix.parent.glob(prefix.name + ".data-*"))
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    else:  # overwritten with bytes of the same length
        index = prefix.parent / (prefix.name + ".index")
        index.write_bytes(bytes(range(256)) * (index.stat().st_size // 256 + 1))


@pytest.mark.parametrize("part", ["data", "index"])
def test_a_damaged_newest_checkpoint_is_named_and_the_one_before_resumed(
    part, mnist_uninterrupted, data_dir, tmp_path, capsys
):
    shutil.copytree(mnist_uninterrupted / "checkpoints", tmp_path / "checkpoints")
    shutil.copy(mnist_uninterrupted / "config.json", tmp_path)
    _damage(tmp_path / "checkpoints" / "ckpt-48", part)
    assert checkpoints.damage(str(tmp_path / "checkpoints" / "ckpt-48"))
    mnist_train.train_and_evaluate(_mnist_config(data_dir), str(tmp_path), checkpoint_every=100)
    lines = capsys.readouterr().out.splitlines()
    damaged = f"checkpoint {tmp_path}/checkpoints/ckpt-48 is damaged ("
    assert [line for line in lines if line.startswith(damaged)]
    assert f"resuming from {tmp_path}/checkpoints/ckpt-24 (step 24, 1 epochs done)" in lines
    assert _metrics(tmp_path) == _metrics(mnist_uninterrupted)
    assert checkpoints.damage(str(tmp_path / "checkpoints" / "ckpt-48")) is None  # rewritten


def test_no_intact_checkpoint_is_refused_unless_fresh(
    mnist_uninterrupted, data_dir, tmp_path, capsys
):
    shutil.copytree(mnist_uninterrupted / "checkpoints", tmp_path / "checkpoints")
    shutil.copy(mnist_uninterrupted / "config.json", tmp_path)
    _damage(tmp_path / "checkpoints" / "ckpt-48", "data")
    _damage(tmp_path / "checkpoints" / "ckpt-24", "index")
    config = _mnist_config(data_dir)
    with pytest.raises(UsageError, match=r"no intact checkpoint in .*ckpt-48, ckpt-24 damaged"):
        mnist_train.train_and_evaluate(config, str(tmp_path), verbose=False)
    assert "pass --fresh to delete them and start afresh" in str(
        pytest.raises(UsageError, mnist_train.train_and_evaluate, config, str(tmp_path)).value
    )
    mnist_train.train_and_evaluate(
        config, str(tmp_path), checkpoint_every=100, verbose=False, fresh=True
    )
    assert _metrics(tmp_path) == _metrics(mnist_uninterrupted)


def test_both_commands_take_fresh(echo_command):
    flags.FLAGS(["echo_deps", "--fresh"])
    assert flags.FLAGS.fresh is True
    source = (REPO / "tfrnn" / "tasks" / "mnist" / "main.py").read_text()
    assert "workdir_lib.define_flags(flags)" in source  # the same definition, both commands


# A write past this many bytes fails with EFBIG, as on a full disk: the kernel's per-process
# file size limit (RLIMIT_FSIZE), which binds root too, where a read-only folder would not.
FULL_DISK = (
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
    "resource.setrlimit(resource.RLIMIT_FSIZE, (64, resource.RLIM_INFINITY))"
)


def test_a_full_disk_while_checkpointing_is_one_line_and_the_last_checkpoint_stays(
    data_dir, tmp_path
):
    args = _mnist_args(data_dir, tmp_path, "--checkpoint_every=10")
    # The disk fills during the call of steps 11-20: checkpoint 20 cannot be written.
    failed = run_command("mnist", args, at_update=11, action=FULL_DISK)
    assert failed.returncode == 2, failed.stderr[-2000:]
    last = failed.stderr.splitlines()[-1]
    assert last.startswith(f"error: cannot write checkpoint 20 to {tmp_path}/checkpoints (")
    assert f"the last one written ({tmp_path}/checkpoints/ckpt-10) is intact" in last
    assert _latest(tmp_path) == "ckpt-10"
    assert checkpoints.damage(str(tmp_path / "checkpoints" / "ckpt-10")) is None


def test_a_full_disk_while_writing_metrics_is_one_line_and_the_file_stays(tmp_path):
    path = tmp_path / "metrics.json"
    reporting.write_json_atomically(str(path), {"epochs": [1]})
    before = path.read_bytes()
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    previous_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64, previous_limit[1]))
    try:
        with pytest.raises(UsageError) as error:
            reporting.write_json_atomically(str(path), {"epochs": list(range(100))})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, previous_limit)
        signal.signal(signal.SIGXFSZ, previous_handler)
    assert str(error.value) == (
        f"cannot write {path} (File too large); it is as it was before: free space or fix"
        " permissions and run the same command again"
    )
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["metrics.json"]  # no temporary file left


def test_a_terminal_gets_the_live_bar_and_a_pipe_plain_lines(monkeypatch, capsys):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    assert isinstance(reporting.progress_bar(10, ("loss",), True), keras.utils.Progbar)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    plain = reporting.progress_bar(250, ("loss",), True, label="epoch 1/2")
    for step in range(1, 251):
        plain.update(step, [("loss", 1 / step)])
    assert capsys.readouterr().out == (
        "epoch 1/2 100/250 loss 0.0100\nepoch 1/2 200/250 loss 0.0050\n"
        "epoch 1/2 250/250 loss 0.0040\n"
    )
