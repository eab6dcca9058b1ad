"""Tests of tfrnn.engine.distribute and of both experiments under tf.distribute strategies.

MirroredStrategy runs over the two logical CPU devices conftest.py makes (its ``mirrored``
fixture); the multi-worker test starts two worker processes on 127.0.0.1. Every distributed
run is compared with the same run on one device: same global batch, same data, same numbers
to 1e-5.
"""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import time
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from command_testing import user_environment
from distribute_testing import free_ports, train_echo_windows

from tfrnn import cli
from tfrnn.data import mnist as mnist_data
from tfrnn.engine import distribute
from tfrnn.errors import UsageError
from tfrnn.tasks.echo import config as echo_config
from tfrnn.tasks.echo import tbptt
from tfrnn.tasks.echo import train as echo_train
from tfrnn.tasks.mnist import config as mnist_config
from tfrnn.tasks.mnist import train as mnist_train

REPO = pathlib.Path(__file__).resolve().parent.parent
# One training step an epoch (8 images, batch 8), so the per-epoch train loss is the loss of
# each step; on two replicas each gets 4 images a step.
MNIST_FLAGS = ["--cell", "simple", "--units", "8", "--batch_size", "8", "--epochs", "4"]
MNIST_FLAGS += ["--checkpoint_every", "100"]


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("idx")
    mnist_data.write_synthetic_idx(str(folder), 8, 8)
    return str(folder)


def _mnist_config(data_dir, **overrides):
    settings = dict(
        data_dir=data_dir, cell="simple", units=8, batch_size=8, epochs=4, jit_compile=False
    )
    return dataclasses.replace(mnist_config.Config(), **(settings | overrides))


@pytest.fixture(scope="module")
def one_device_mnist(mnist_dir, tmp_path_factory):
    """The MNIST run on one device, the reference of the distributed runs."""
    workdir = tmp_path_factory.mktemp("one_device")
    result = mnist_train.train_and_evaluate(
        _mnist_config(mnist_dir), str(workdir), checkpoint_every=100, verbose=False
    )
    return result


def _assert_same_weights(got, expected, atol=1e-5):
    assert len(got) == len(expected)
    for got_weight, expected_weight in zip(got, expected, strict=True):
        np.testing.assert_allclose(got_weight, expected_weight, atol=atol, rtol=0)


def _losses(history, split="train"):
    return [record[f"{split}_loss"] for record in history]


def test_mnist_on_two_mirrored_replicas_matches_one_device(
    mirrored, one_device_mnist, mnist_dir, tmp_path
):
    # The distributed path compiles each replica's forward and backward pass with XLA.
    result = mnist_train.train_and_evaluate(
        _mnist_config(mnist_dir, jit_compile=True),
        str(tmp_path),
        strategy=mirrored,
        checkpoint_every=100,
        verbose=False,
    )
    np.testing.assert_allclose(
        _losses(result.history), _losses(one_device_mnist.history), atol=1e-5, rtol=0
    )
    np.testing.assert_allclose(
        _losses(result.history, "test"), _losses(one_device_mnist.history, "test"), atol=1e-5
    )
    assert len(set(_losses(result.history))) == 4  # four different steps, not one repeated
    saved = keras.saving.load_model(tmp_path / "model.keras")
    _assert_same_weights(saved.get_weights(), one_device_mnist.model.get_weights())
    assert (tmp_path / "export" / "1" / "saved_model.pb").exists()


@pytest.mark.parametrize(
    "mode, jit_compile", [("stateful", True), ("explicit", False), ("true", False)]
)
def test_echo_on_two_mirrored_replicas_carries_each_rows_state_like_one_device(
    mirrored, mode, jit_compile
):
    one_losses, one_states, one_weights = train_echo_windows(
        mode, tf.distribute.get_strategy(), jit_compile=jit_compile
    )
    losses, states, weights = train_echo_windows(mode, mirrored, jit_compile=jit_compile)
    np.testing.assert_allclose(losses, one_losses, atol=1e-5, rtol=0)
    # Every stream's state (h and c, rows 0-1 from replica 0 and 2-3 from replica 1), after
    # each of the two calls, is the one-device state of the same stream.
    for call_states, one_call_states in zip(states, one_states, strict=True):
        for state, one_state in zip(call_states, one_call_states, strict=True):
            assert state.shape == (4, 3)
            np.testing.assert_allclose(state, one_state, atol=1e-5, rtol=0)
    assert not np.allclose(states[1][0][:2], states[1][0][2:])  # the rows differ: not vacuous
    _assert_same_weights(weights, one_weights)


def test_echo_experiment_on_two_mirrored_replicas_matches_one_device(mirrored, tmp_path):
    # 100 windows of 5 steps on 8 streams an epoch: each replica trains 4 streams.
    config = echo_config.EchoConfig(
        mode="stateful", cell="lstm", batch_size=8, series_length=4_000, epochs=2
    )
    one_device = echo_train.train_and_evaluate(config, str(tmp_path / "one"), verbose=0)
    two_replicas = echo_train.train_and_evaluate(
        config, str(tmp_path / "mirrored"), verbose=0, strategy=mirrored
    )
    np.testing.assert_allclose(two_replicas["curve"], one_device["curve"], atol=1e-5, rtol=0)
    _assert_same_weights(
        keras.saving.load_model(tmp_path / "mirrored" / "model.keras").get_weights(),
        keras.saving.load_model(tmp_path / "one" / "model.keras").get_weights(),
    )


def test_two_worker_processes_end_with_identical_weights_equal_to_one_process(
    one_device_mnist, mnist_dir, tmp_path
):
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    workdir, out = tmp_path / "run", tmp_path / "out"
    out.mkdir()
    mnist_flags = [*MNIST_FLAGS, "--data_dir", mnist_dir, "--workdir", str(workdir)]
    mnist_flags += ["--jit_compile=false"]
    processes, logs = [], []
    deadline = time.monotonic() + 240
    try:
        for index in range(2):
            environment = dict(
                os.environ,
                PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'tests'}",
                TF_CPP_MIN_LOG_LEVEL="2",
                TF_CONFIG=json.dumps(
                    {"cluster": cluster, "task": {"type": "worker", "index": index}}
                ),
            )
            log = open(tmp_path / f"worker_{index}.log", "w")  # noqa: SIM115 (closed below)
            logs.append(log)
            processes.append(
                subprocess.Popen(
                    [sys.executable, str(REPO / "tests" / "distribute_testing.py"), str(out)]
                    + mnist_flags,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=environment,
                )
            )
        for process in processes:
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for log in logs:
            log.close()
    for index, process in enumerate(processes):
        output = (tmp_path / f"worker_{index}.log").read_text()
        assert process.returncode == 0, f"worker {index}:\n{output[-3000:]}"

    mnist = [np.load(out / f"mnist_{index}.npz") for index in range(2)]
    for name in mnist[0].files:
        np.testing.assert_array_equal(mnist[0][name], mnist[1][name])
    _assert_same_weights(
        [mnist[0][name] for name in mnist[0].files], one_device_mnist.model.get_weights()
    )
    # Only the chief (worker 0) wrote results, and only its checkpoints are in the workdir.
    metrics = json.loads((workdir / "metrics.json").read_text())
    np.testing.assert_allclose(
        _losses(metrics["epochs"]), _losses(one_device_mnist.history), atol=1e-5
    )
    assert (workdir / "model.keras").exists() and (workdir / "export").exists()
    assert sorted(os.listdir(workdir / "checkpoints"))[0] == "checkpoint"
    assert all(
        name == "checkpoint" or name.startswith("ckpt-")
        for name in os.listdir(workdir / "checkpoints")
    )

    # Echo, stateful layer: each worker holds two of the four streams; gathered, both
    # workers see every stream's state, the one-process state.
    echo = [np.load(out / f"echo_{index}.npz") for index in range(2)]
    for name in echo[0].files:
        np.testing.assert_array_equal(echo[0][name], echo[1][name])
    one_losses, one_states, one_weights = train_echo_windows(
        "stateful", tf.distribute.get_strategy(), jit_compile=False
    )
    np.testing.assert_allclose(echo[0]["losses"], one_losses, atol=1e-5, rtol=0)
    for call, pair in enumerate(one_states):
        for index, state in enumerate(pair):
            np.testing.assert_allclose(echo[0][f"state_{call}_{index}"], state, atol=1e-5)
    _assert_same_weights(
        [echo[0][f"weight_{index}"] for index in range(len(one_weights))], one_weights
    )


@pytest.mark.parametrize(
    "tf_config, message",
    [
        (None, "--strategy multi_worker reads the cluster from TF_CONFIG, unset; e.g. {"),
        ("{bad", "TF_CONFIG is not valid JSON (Expecting property name enclosed in double"),
        ('{"task": {"type": "worker", "index": 0}}', 'TF_CONFIG: no "cluster" object'),
        (
            '{"cluster": {"worker": ["a:1"], "ps": ["b:2"]}, "task": {"type": "ps", "index": 0}}',
            "TF_CONFIG: cluster has 'ps'; MultiWorkerMirroredStrategy uses worker and chief",
        ),
        (
            '{"cluster": {"worker": ["a:1", "b"]}, "task": {"type": "worker", "index": 0}}',
            'TF_CONFIG: cluster "worker" address \'b\' is not "host:port"',
        ),
        (
            '{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}',
            'TF_CONFIG: task index 2 is not in [0, 2) for "worker"',
        ),
        (
            '{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}',
            "TF_CONFIG: task type 'chief' is not a job of the cluster",
        ),
    ],
)
def test_bad_tf_config_is_named_in_one_line(tf_config, message):
    with pytest.raises(UsageError) as error:
        distribute.check_tf_config(tf_config)
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)


def test_a_good_tf_config_passes_and_worker_0_is_chief_without_a_chief(mirrored):
    config = '{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}'
    assert distribute.check_tf_config(config)["task"]["index"] == 1
    assert distribute.is_chief(tf.distribute.get_strategy())
    assert distribute.is_chief(mirrored)

    def worker(cluster, task_type, task_id):
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(cluster), task_type=task_type, task_id=task_id
        )
        return types.SimpleNamespace(cluster_resolver=resolver)

    workers = {"worker": ["a:1", "b:2"]}
    assert distribute.is_chief(worker(workers, "worker", 0))
    assert not distribute.is_chief(worker(workers, "worker", 1))
    with_chief = {"chief": ["c:3"], **workers}
    assert distribute.is_chief(worker(with_chief, "chief", 0))
    assert not distribute.is_chief(worker(with_chief, "worker", 0))


@pytest.mark.parametrize(
    "arguments, message",
    [
        (
            "--strategy=tpu",
            "error: --strategy must be one of default, mirrored, multi_worker, got 'tpu'",
        ),
        (
            "--cpu_replicas=2",
            "error: --cpu_replicas works with --strategy mirrored only, not default",
        ),
        (
            "--strategy=mirrored --cpu_replicas=2 --batch_size=5",
            "error: --batch_size 5 does not split evenly over 2 replicas; use a multiple of 2",
        ),
        (
            "--strategy=mirrored",
            "error: --strategy mirrored found no GPU; pass --cpu_replicas N to mirror over N",
        ),
        (
            "--strategy=multi_worker",
            "error: --strategy multi_worker reads the cluster from TF_CONFIG, unset; e.g. {",
        ),
    ],
)
def test_echo_command_refuses_bad_strategies_in_one_line(
    arguments, message, echo_command, capsys, tmp_path, monkeypatch
):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        cli.run(echo_command.main, argv=["echo_deps", *arguments.split(), f"--workdir={tmp_path}"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith(message) and error.count("\n") == 1
    assert not os.listdir(tmp_path)  # refused before anything was written


def test_mnist_command_refuses_a_bad_tf_config_in_one_line(mnist_dir, tmp_path):
    environment = user_environment(PYTHONPATH=str(REPO), TF_CONFIG='{"cluster": 3}')
    command = [sys.executable, "-m", "tfrnn.experiments.mnist", "--strategy", "multi_worker"]
    finished = subprocess.run(
        [*command, "--data_dir", mnist_dir, "--workdir", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
    )
    assert finished.returncode == 2
    assert finished.stderr == 'error: TF_CONFIG: no "cluster" object\n'
    assert not (tmp_path / "run").exists()


def test_a_batch_that_does_not_split_over_the_replicas_is_refused(mirrored, mnist_dir, tmp_path):
    with pytest.raises(UsageError, match="--batch_size 7 does not split evenly over 2"):
        mnist_train.train_and_evaluate(
            _mnist_config(mnist_dir, batch_size=7), str(tmp_path), strategy=mirrored
        )
    assert not (tmp_path / "config.json").exists()
    with pytest.raises(UsageError, match="--batch_size 3 does not split evenly over 2"):
        tbptt.start_epoch(
            "explicit", tbptt.build_training_model("explicit", "simple", 2, 3), 3, 2, mirrored
        )


def test_a_lost_worker_becomes_one_line_saying_what_to_do():
    lost = tf.errors.UnavailableError(
        None,
        None,
        "Collective ops is aborted by: The following tasks are unhealthy (stopped sending"
        " heartbeats):\n/job:worker/replica:0/task:1\nThe tasks have crashed.",
    )
    with pytest.raises(UsageError) as error, distribute.lost_workers_as_usage_errors():
        raise lost
    assert str(error.value) == (
        "lost a worker of the cluster (The following tasks are unhealthy (stopped sending"
        " heartbeats):); start every worker again with the same command: training resumes"
        " from the chief's last checkpoint"
    )
    with pytest.raises(ValueError), distribute.lost_workers_as_usage_errors():
        raise ValueError("not a lost worker: not hidden")
