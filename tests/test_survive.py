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
import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from command_testing import (
    assert_time_line_adds_up,
    command_script,
    run_command,
    tiny_mnist_config,
    trained_in_process,
)
from distribute_testing import free_ports

from tfrnn.engine import checkpoints, reporting, workdir
from tfrnn.errors import UsageError
from tfrnn.tasks.mnist import train as mnist_train

REPO = pathlib.Path(__file__).resolve().parent.parent
# checkpoint_every 100: only the epochs' ends (24, 48) are checkpointed unless a stop asks.
MNIST_FLAGS = ["--units=8", "--batch_size=4", "--epochs=2", "--checkpoint_every=100"]
ECHO_FLAGS = ["--num_steps=10", "--state_size=16", "--epochs=2", "--series_length=400000"]
WALL_CLOCK = ("seconds", "compile_seconds", "epoch_seconds", "seconds_per_epoch")


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


def _run_two_workers(args, logs, sigterm_worker_1_at=None):
    """The MNIST command as both workers of a two-process multi_worker cluster on this
    machine; worker 1 sends itself SIGTERM after training step ``sigterm_worker_1_at``.
    Returns each worker's (exit status, stdout, stderr)."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    processes, results = [], []
    try:
        for index in range(2):
            at_update = sigterm_worker_1_at if index == 1 else None
            script = command_script("mnist", at_update, "os.kill(os.getpid(), signal.SIGTERM)")
            task = {"type": "worker", "index": index}
            env = dict(
                os.environ,
                PYTHONPATH=str(REPO),
                TF_CPP_MIN_LOG_LEVEL="2",
                TF_CONFIG=json.dumps({"cluster": cluster, "task": task}),
            )
            out, err = (open(logs / f"worker_{index}.{name}", "w+") for name in ("out", "err"))
            processes.append(
                (
                    subprocess.Popen(
                        [sys.executable, "-c", script, "--strategy=multi_worker", *args],
                        stdout=out,
                        stderr=err,
                        env=env,
                    ),
                    out,
                    err,
                )
            )
        for process, out, err in processes:
            process.wait(timeout=240)
            out.seek(0), err.seek(0)
            results.append((process.returncode, out.read(), err.read()))
    finally:
        for process, out, err in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
            out.close(), err.close()
    return results


def _numbers(records):
    """metrics.json's training and epoch records as arrays by key, wall-clock fields aside."""
    return {
        (kind, key): np.array([record[key] for record in records[kind]])
        for kind in ("steps", "epochs")
        for key in records[kind][0]
        if key not in WALL_CLOCK
    }


def test_sigterm_to_one_of_two_workers_stops_both_at_one_step_and_they_end_the_same(
    mnist_uninterrupted, data_dir, tmp_path
):
    # Worker 1 gets SIGTERM after step 22 (in the call of steps 21-24, epoch 1's last). Its
    # PreemptionCheckpointHandler claims the next check, after epoch 1's end (step 24), and
    # names the call after it for the save: every worker saves after step 44 and exits 143.
    args = _mnist_args(data_dir, tmp_path / "run", "--jit_compile=false")
    stopped = _run_two_workers(args, tmp_path, sigterm_worker_1_at=22)
    for index, (status, _, stderr) in enumerate(stopped):
        assert status == 143, f"worker {index}: {stderr[-3000:]}"
        assert stderr.splitlines()[-1].startswith(
            f"stopped by SIGTERM after step 44: checkpoint {tmp_path / 'run'}/checkpoints/"
            "ckpt-44 written; run the same command to go on"
        )
    assert _latest(tmp_path / "run") == "ckpt-44"
    assert not (tmp_path / "run" / "model.keras").exists()

    resumed = _run_two_workers(args, tmp_path)
    for index, (status, stdout, stderr) in enumerate(resumed):
        assert status == 0, f"worker {index}: {stderr[-3000:]}"
        assert "(step 44, 1 epochs done)" in stdout
    # The same records as the one-process run, to float32 rounding across processes.
    got = json.loads((tmp_path / "run" / "metrics.json").read_text())
    expected = json.loads((mnist_uninterrupted / "metrics.json").read_text())
    got, expected = _numbers(got), _numbers(expected)
    assert got.keys() == expected.keys()
    for key, values in expected.items():
        np.testing.assert_allclose(got[key], values, atol=1e-5, rtol=0, err_msg=str(key))


def test_sigint_stops_echo_mid_epoch_and_the_same_command_ends_the_same(tmp_path):
    # The reference is the command too: in this process (the CPU split in two by conftest,
    # other tests' XLA programs) the last float digits of a step can differ from a fresh one.
    uninterrupted = run_command(
        "echo_deps", [*ECHO_FLAGS, f"--workdir={tmp_path / 'uninterrupted'}"]
    )
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-2000:]
    assert_time_line_adds_up(uninterrupted.stdout)
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
    assert "(step 1, 0 epochs done; a step is a run of 100 windows)" in resumed.stdout
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
