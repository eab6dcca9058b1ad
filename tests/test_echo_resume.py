"""An echo run killed with SIGKILL and started again ends as a run never stopped.

The same command as ``python -m tfrnn.experiments.echo_deps --num_steps 10 --state_size 16
--epochs 3 --workdir W``, on a shorter series: two runs of 100 windows an epoch, a
checkpoint after every run. The process kills itself right after training step 4 (the last
run of epoch 2, before the epoch's end is recorded; at a fixed step, so the test does not
depend on timing): the last checkpoint is step 3, in the middle of epoch 2, so the resumed
run must restore the streams' carried state and the series position, and redo step 4 the
same way.
"""

import json
import pathlib
import signal

import keras
import numpy as np
import tensorflow as tf
from command_testing import run_command

from tfrnn.tasks.echo import train as echo_train
from tfrnn.tasks.echo.config import EchoConfig

REPO = pathlib.Path(__file__).resolve().parent.parent
CONFIG = EchoConfig(num_steps=10, state_size=16, epochs=3, series_length=400_000)
FLAGS = ["--num_steps=10", "--state_size=16", "--epochs=3", "--series_length=400000"]
CHECKPOINT_EVERY = 100  # windows: every run
WALL_CLOCK = ("epoch_seconds", "seconds_per_epoch")


def _run(workdir, kill_at_progress_update=None):
    """The echo command in a subprocess; optionally SIGKILLed right after the N-th step."""
    arguments = [*FLAGS, f"--checkpoint_every={CHECKPOINT_EVERY}", f"--workdir={workdir}"]
    return run_command("echo_deps", arguments, at_update=kill_at_progress_update, timeout=120)


def _without_wall_clock(metrics):
    return {key: value for key, value in metrics.items() if key not in WALL_CLOCK}


def test_sigkill_mid_epoch_then_same_command_ends_like_a_run_never_stopped(tmp_path):
    uninterrupted = tmp_path / "uninterrupted"
    expected = echo_train.train_and_evaluate(
        CONFIG, str(uninterrupted), verbose=0, checkpoint_every=CHECKPOINT_EVERY
    )
    workdir = tmp_path / "killed"
    killed = _run(workdir, kill_at_progress_update=4)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert tf.train.latest_checkpoint(str(workdir / "checkpoints")).endswith("ckpt-3")
    assert not (workdir / "model.keras").exists()
    killed_pid = int((workdir / "lock").read_text())  # the lock it could not release

    resumed = _run(workdir)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # The killed run could not release its workdir lock: the resumed run takes it over.
    takeover, resuming = resumed.stdout.splitlines()[:2]
    print(takeover, resuming, resumed.stdout.splitlines()[-1], sep="\n")  # pytest -s shows them
    assert takeover == f"taking over the lock of PID {killed_pid}, which ended without releasing it"
    assert "(step 3, 1 epochs done; a step is a run of 100 windows)" in resuming
    assert json.loads((workdir / "config.json").read_text())["task"] == "echo"
    got = json.loads((workdir / "metrics.json").read_text())
    assert len(got["curve"]) == 6 and len(got["epoch_seconds"]) == 3
    assert _without_wall_clock(got) == _without_wall_clock(expected)
    assert (workdir / "curve.png").stat().st_size > 1000
    trained = keras.saving.load_model(uninterrupted / "model.keras").get_weights()
    for got_weight, expected_weight in zip(
        keras.saving.load_model(workdir / "model.keras").get_weights(), trained, strict=True
    ):
        np.testing.assert_array_equal(got_weight, expected_weight)
