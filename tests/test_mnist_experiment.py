"""End-to-end tests of the MNIST experiment on tiny IDX files: outputs, SIGKILL + resume, errors.

The resume test kills a real ``python -m tfrnn.experiments.mnist`` process with SIGKILL in
the middle of an epoch (at a fixed training step, so the test does not depend on timing),
re-runs the same command, and requires the final weights and metrics of a run that was never
stopped.
"""

import dataclasses
import json
import os
import pathlib
import re
import shutil
import signal

import keras
import numpy as np
import pytest
import tensorflow as tf
from command_testing import (
    assert_time_line_adds_up,
    run_command,
    tiny_mnist_config,
    trained_in_process,
)

from tfrnn import cli
from tfrnn.data import mnist as mnist_data
from tfrnn.errors import UsageError
from tfrnn.tasks.mnist import train as mnist_train

REPO = pathlib.Path(__file__).resolve().parent.parent
# 96 training images in batches of 16: 6 steps an epoch, 18 in all, a checkpoint every 4.
FLAGS = ["--units", "8", "--batch_size", "16", "--epochs", "3", "--checkpoint_every", "4"]


def _config(data_dir):
    return tiny_mnist_config(data_dir, batch_size=16, epochs=3)


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    return trained_in_process(_config(data_dir), workdir, checkpoint_every=4)


def _metrics(workdir):
    with open(os.path.join(workdir, "metrics.json")) as handle:
        metrics = json.load(handle)
    for record in metrics["epochs"]:
        del record["seconds"], record["compile_seconds"]
    return metrics


def test_run_writes_metrics_model_and_export(uninterrupted, data_dir):
    metrics = _metrics(uninterrupted)
    fingerprint = mnist_data.load(data_dir=data_dir).fingerprint
    assert metrics["config"] == {"task": "mnist"} | dataclasses.asdict(_config(data_dir)) | {
        "data_fingerprint": fingerprint
    }
    assert [r["epoch"] for r in metrics["epochs"]] == [1, 2, 3]
    assert metrics["epochs"][-1]["train_loss"] < metrics["epochs"][0]["train_loss"]
    for name in ("curves.png", "config.json", "final.json", "model.keras", "export"):
        assert (uninterrupted / name).exists(), name
    assert json.loads((uninterrupted / "config.json").read_text())["task"] == "mnist"
    assert os.listdir(uninterrupted / "tensorboard")

    images = np.random.default_rng(1).uniform(size=(5, 28, 28)).astype("float32")
    model = keras.saving.load_model(uninterrupted / "model.keras")
    exported = tf.saved_model.load(str(uninterrupted / "export" / "1"))
    served = exported.signatures["serving_default"](rows=tf.constant(images))
    assert served["probabilities"].shape == (5, 10)
    np.testing.assert_allclose(served["probabilities"], tf.nn.softmax(model(images)), atol=1e-5)

    with open(uninterrupted / "final.json") as handle:
        final = json.load(handle)
    # 40 test images: the first 128 are all of them.
    assert final["test_accuracy"] == final["test_accuracy_first_128"]
    assert final["test_accuracy"] == pytest.approx(metrics["epochs"][-1]["test_accuracy"])


def _command(data_dir, workdir):
    return [*FLAGS, "--data_dir", data_dir, "--workdir", str(workdir)]


def _run(args, kill_at_progress_update=None):
    """Runs the experiment in a subprocess; optionally SIGKILLed right after the N-th step."""
    return run_command("mnist", args, at_update=kill_at_progress_update)


def test_sigkill_mid_epoch_then_same_command_ends_like_a_run_never_stopped(
    uninterrupted, data_dir, tmp_path
):
    # Killed right after step 11 (epoch 2 of 3); the last checkpoint is step 8, so steps 9-11
    # were trained, lost, and must be redone the same way.
    killed = _run(_command(data_dir, tmp_path), kill_at_progress_update=11)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-8")
    assert not (tmp_path / "model.keras").exists()

    resumed = _run(_command(data_dir, tmp_path))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "(step 8, 1 epochs done)" in resumed.stdout
    assert _metrics(tmp_path) == _metrics(uninterrupted)
    assert_time_line_adds_up(resumed.stdout)
    expected = keras.saving.load_model(uninterrupted / "model.keras").get_weights()
    got = keras.saving.load_model(tmp_path / "model.keras").get_weights()
    for got_weight, expected_weight in zip(got, expected, strict=True):
        np.testing.assert_array_equal(got_weight, expected_weight)


def test_a_moved_data_folder_resumes_and_other_data_is_refused(uninterrupted, data_dir, tmp_path):
    workdir, moved = tmp_path / "run", tmp_path / "moved"
    shutil.copytree(uninterrupted, workdir)
    shutil.copytree(data_dir, moved)
    config = dataclasses.replace(_config(data_dir), data_dir=str(moved))
    result = mnist_train.train_and_evaluate(config, str(workdir), verbose=False)
    assert result.resumed_from_step == 18  # the finished run, nothing trained again
    assert json.loads((workdir / "config.json").read_text())["data_dir"] == str(moved)

    # One pixel of one training image changed: other data, refused.
    path = str(moved / "train-images-idx3-ubyte.gz")
    images = mnist_data.read_idx(path, mnist_data.IMAGES_MAGIC).copy()
    images[0, 0, 0] ^= 1
    mnist_data.write_idx(path, images)
    with pytest.raises(UsageError) as error:
        mnist_train.train_and_evaluate(config, str(workdir), verbose=False)
    assert re.fullmatch(
        f"{re.escape(str(workdir))} holds a run with another configuration "
        r"\(data_fingerprint\.train-images-idx3-ubyte\.sha256: '[0-9a-f]{15}… -> '[0-9a-f]{15}…\);"
        " resume with the same flags, or pass another --workdir",
        str(error.value),
    )


def test_bad_data_is_one_line_error_and_exit_2(data_dir, tmp_path, capsys):
    # In-process through cli.run, the entry point's wrapper (a subprocess costs seconds).
    missing = tmp_path / "no_mnist_here"
    config = dataclasses.replace(_config(data_dir), data_dir=str(missing))

    def main(argv):
        mnist_train.train_and_evaluate(config, str(tmp_path / "run"), verbose=False)

    with pytest.raises(SystemExit) as exit_info:
        cli.run(main, argv=["mnist"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: --data_dir {missing} does not exist\n"
    assert not (tmp_path / "run").exists()  # nothing written before the data is read


def test_epochs_and_train_steps_together_are_refused_at_the_command_line(data_dir, tmp_path):
    conflicting = ["--preset", "C2", "--epochs", "1", "--train_steps", "5"]
    run = _run([*conflicting, "--data_dir", data_dir, "--workdir", str(tmp_path / "run")])
    assert run.returncode == 2
    assert run.stderr.splitlines()[-1] == (
        "error: --epochs 1 and --train_steps 5 both set the run's length; give one of them"
    )
    assert not (tmp_path / "run").exists()
