"""The engine's parts on their own, with tiny shapes: schedule, checkpoints, run log, loop."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tfrnn.engine import checkpoints, loop, reporting
from tfrnn.errors import UsageError


def test_schedule_ends_calls_at_checkpoints_and_epoch_ends():
    schedule = loop.Schedule(
        steps_per_epoch=5, total_steps=12, checkpoint_every=3, steps_per_call=20
    )
    assert schedule.num_epochs == 3
    assert [schedule.epoch_steps(epoch) for epoch in range(3)] == [5, 5, 2]
    assert schedule.call_steps(0, 5) == 3  # to the checkpoint at step 3
    assert schedule.call_steps(3, 2) == 2  # to the epoch's end
    assert loop.Schedule(5, 10, 100, 4).call_steps(0, 5) == 4  # at most steps_per_call
    with pytest.raises(UsageError, match="--checkpoint_every must be positive, got 0"):
        loop.Schedule(5, 10, 0, 4)


def test_checkpoints_restore_what_was_saved_and_workers_write_to_a_temporary_folder(tmp_path):
    value = tf.Variable([1.0, 2.0])
    chief = checkpoints.Checkpoints(str(tmp_path), {"value": value}, chief=True)
    assert chief.restore() is None and chief.describe_latest().startswith("none yet")
    chief.save(7)
    value.assign([0.0, 0.0])
    assert chief.restore().endswith("ckpt-7")
    np.testing.assert_array_equal(value.numpy(), [1.0, 2.0])

    worker = checkpoints.Checkpoints(str(tmp_path), {"value": value}, chief=False)
    worker.save(9)
    assert worker.latest().endswith("ckpt-7")  # every worker restores the chief's
    assert os.path.isdir(worker.write_dir) and worker.write_dir != worker.directory
    worker.close()
    assert not os.path.exists(worker.write_dir)
    assert checkpoints.all_finite([value]) and not checkpoints.all_finite([tf.Variable(np.nan)])


def test_a_workdir_keeps_one_configuration_and_records_a_moved_input(tmp_path):
    checkpoints.check_same_config(str(tmp_path), {"task": "t", "data_dir": "/a"}, write=True)
    checkpoints.check_same_config(str(tmp_path), {"task": "t", "data_dir": "/b"}, write=True)
    assert json.loads((tmp_path / "config.json").read_text())["data_dir"] == "/b"
    with pytest.raises(UsageError, match=r"another configuration \(task: 't' -> 'u'\)"):
        checkpoints.check_same_config(str(tmp_path), {"task": "u", "data_dir": "/b"}, write=True)


def test_run_log_travels_in_the_checkpoint_and_summarizes_each_record_once(tmp_path):
    log = reporting.RunLog(str(tmp_path), chief=True)
    log.add("steps", {"step": 2, "train_loss": 0.5})
    log.before_checkpoint()
    log.summarize()
    log.summarize()  # nothing new: nothing written twice
    restored = reporting.RunLog(str(tmp_path), chief=True)
    restored.variable.assign(log.variable)
    restored.restored()
    assert restored.records == {"epochs": [], "steps": [{"step": 2, "train_loss": 0.5}]}
    (event_file,) = os.listdir(tmp_path / "tensorboard")
    events = tf.compat.v1.train.summary_iterator(str(tmp_path / "tensorboard" / event_file))
    tags = [(value.tag, event.step) for event in events for value in event.summary.value]
    assert tags == [("train/running_loss", 2)]
    reporting.RunLog(str(tmp_path / "worker"), chief=False).write_json("metrics.json", {})
    assert not (tmp_path / "worker").exists()  # only the chief writes


class CountingSteps:
    """Steps whose weight counts the steps trained; its loss is NaN from step ``nan_at`` on."""

    step_name = "batch"
    progress_names = ("loss",)
    progress_scale = 1

    def __init__(self, nan_at=None):
        self.weight = tf.Variable(0.0)
        self.nan_at, self.epochs_started = nan_at, []

    def checkpoint_items(self):
        return {"weight": self.weight}

    def weights(self):
        return [self.weight]

    def before_checkpoint(self):
        pass

    def start_epoch(self, epoch, skip):
        self.epochs_started.append((epoch, skip))

    def train(self, num_steps):
        running = []
        for _ in range(num_steps):  # stops after the first non-finite loss, as a task must
            self.weight.assign_add(1.0)
            loss = np.nan if self.nan_at and self.weight >= self.nan_at else 1.0
            running.append([("loss", loss)])
            if np.isnan(loss):
                break
        return loop.Call(loss, running, {"train_loss": loss})

    def compile_seconds(self):
        return {"training": 0.0, "evaluation": 0.0}

    def end_epoch(self, epoch):
        return {"train_loss": 1.0}

    def epoch_summary(self, record):
        return None


def _controller(steps, workdir, **kwargs):
    schedule = loop.Schedule(steps_per_epoch=4, total_steps=8, checkpoint_every=3, steps_per_call=2)
    return loop.Controller(steps, schedule, str(workdir), chief=True, verbose=False, **kwargs)


def test_controller_checkpoints_records_and_resumes_where_it_stopped(tmp_path):
    written = []
    controller = _controller(CountingSteps(), tmp_path, on_records=written.append)
    assert controller.restore() == 0
    history = controller.train()
    assert [(record["epoch"], record["step"]) for record in history] == [(1, 4), (2, 8)]
    # Calls end at the checkpoints (3, 6) and epoch ends (4, 8).
    assert [point["step"] for point in controller.log.records["steps"]] == [2, 3, 4, 6, 8]
    assert len(written) == 2
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-8")

    steps = CountingSteps()
    resumed = _controller(steps, tmp_path)
    assert resumed.restore() == 8 and float(steps.weight) == 8
    assert resumed.train() == history and steps.epochs_started == []


def test_controller_stops_at_a_nan_loss_keeping_the_last_good_checkpoint(tmp_path):
    written = []
    controller = _controller(CountingSteps(nan_at=5), tmp_path, on_records=written.append)
    with pytest.raises(loop.TrainingDiverged) as error:
        controller.train()
    assert str(error.value).startswith("loss became nan at step 5 (epoch 2, batch 1);")
    assert "ckpt-4" in str(error.value)
    assert written  # the records so far reach metrics.json before the stop

    steps = CountingSteps()
    resumed = _controller(steps, tmp_path)
    assert resumed.restore() == 4
    resumed.train()
    assert steps.epochs_started == [(1, 0)]


def test_the_config_guard_names_three_differences_at_most_each_value_cut_short(tmp_path):
    def config(digit):
        return {
            "task": "t",
            "data_fingerprint": {f"f{i}": {"sha256": digit * 64} for i in range(4)},
        }

    checkpoints.check_same_config(str(tmp_path), config("a"), write=True)
    with pytest.raises(UsageError) as error:
        checkpoints.check_same_config(str(tmp_path), config("b"), write=True)
    a, b = "'" + "a" * 15 + "…", "'" + "b" * 15 + "…"
    assert str(error.value) == (
        f"{tmp_path} holds a run with another configuration (data_fingerprint.f0.sha256: {a} ->"
        f" {b}, data_fingerprint.f1.sha256: {a} -> {b}, data_fingerprint.f2.sha256: {a} -> {b}"
        " and 1 more); resume with the same flags, or pass another --workdir"
    )


class RunsOfWindows(CountingSteps):
    """Steps of 100 progress units each, as echo's runs of 100 windows."""

    step_name = "run of 100 windows"
    progress_scale = 100


def test_the_resume_line_says_what_a_step_is_where_it_is_not_one_unit(tmp_path, capsys):
    schedule = loop.Schedule(steps_per_epoch=4, total_steps=8, checkpoint_every=3, steps_per_call=2)
    for steps, unit in (
        (CountingSteps(), ""),
        (RunsOfWindows(), "; a step is a run of 100 windows"),
    ):
        workdir = tmp_path / steps.step_name
        loop.Controller(steps, schedule, str(workdir), chief=True, verbose=False).train()
        resumed = loop.Controller(steps, schedule, str(workdir), chief=True, verbose=True)
        resumed.restore()
        assert capsys.readouterr().out == (
            f"resuming from {workdir}/checkpoints/ckpt-8 (step 8, 2 epochs done{unit})\n"
        )
