"""tfrnn.convert against the tutorials' own TF1 graphs, run side by side ("lockstep").

The TF1 side is ``experiments/tf1/tf1_graphs.py``: each tutorial's graph written with the TF1
API (``tf.compat.v1`` graph mode, placeholders, ``Session``, ``train.Saver``, ``static_rnn`` /
``dynamic_rnn``, the legacy ``BasicRNNCell`` / ``BasicLSTMCell``), at small sizes. It needs
``TF_USE_LEGACY_KERAS=1`` before TensorFlow's first import, so it runs once for this module in
a subprocess of the same Python (tf_keras from requirements-dev.txt). For every graph it saves
the initial checkpoint, trains K steps on batches this module wrote, saves the final
checkpoint, and records each step's loss and the logits of fixed inputs before and after.

Each graph is then checked twice:

(a) its initial and final checkpoints, converted, give the graph's logits on the same inputs;
(b) tfrnn's own training path, started from the converted initial checkpoint and fed the same
    batches, ends where the graph ended: the same loss at every step and the same weights.
    MNIST: ``training.fit`` with the preset's optimizer (``mnist_model.make_optimizer``:
    Adam with TF1's epsilon 1e-8), batches in the same order because the Task's
    ``train_batches(epoch, skip)`` hands out batch ``epoch`` of the ones TF1 was fed, with one
    step an epoch (so ``fit``'s per-epoch train loss is each step's loss). Echo: the window
    runner of ``tbptt`` (state carried from window to window, TF-style), over the same
    windows, with Adagrad 0.1, accumulators from 0.1 and no epsilon (TF1's; echo_train's Keras
    default adds 1e-7 inside the square root).
"""

import dataclasses
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from command_testing import user_environment

from tfrnn.data.echo import epoch_rng, epoch_windows, generate_series
from tfrnn.engine import training
from tfrnn.serving import export, tf_serving
from tfrnn.tasks.echo import tbptt
from tfrnn.tasks.mnist import config as mnist_config
from tfrnn.tasks.mnist import model as mnist_model
from tfrnn.tf1 import convert, tutorials
from tfrnn.tf1.checkpoint import read_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TF1_GRAPHS = os.path.join(ROOT, "experiments", "tf1", "tf1_graphs.py")
ENV = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}

# Outputs of a converted checkpoint against the graph's, and the two trainings against each
# other (losses and weights, relative). The echo runner and fit's XLA programs order float
# sums differently from TF1's kernels, which is what is left.
OUTPUT_TOLERANCE = 1e-5
TRAINING_RTOL = 1e-5
BATCH = 16
ECHO_BATCH = 8

JOBS = {
    # name: the graph and its sizes; "mode" is the tbptt mode that trains the echo graphs
    "echo_handbuilt": dict(graph="handbuilt", state_size=4, num_steps=5, steps=12, mode="stateful"),
    "echo_static": dict(graph="static", state_size=16, num_steps=10, steps=8, mode="explicit"),
    "echo_dynamic": dict(graph="dynamic", state_size=4, num_steps=5, steps=12, mode="stateful"),
    # C1 at its own 100 units: recognised without --tutorial.
    "c1": dict(graph="C1", units=100, learning_rate=1e-4, steps=5),
    # 12 units are neither C1's nor C2's: converted with --tutorial C2.
    "c2": dict(graph="C2", units=12, learning_rate=1e-3, steps=5, tutorial="C2"),
    "c3": dict(graph="C3", units=16, learning_rate=1e-3, steps=5),
    # A BasicLSTMCell with another forget_bias, converted with --forget_bias 0.5.
    "c1_forget_bias": dict(
        graph="C1", units=8, learning_rate=1e-3, steps=5, tutorial="C1", forget_bias=0.5
    ),
}
ECHO_JOBS = [name for name in JOBS if name.startswith("echo")]


def _echo_data(job, seed):
    """K windows of the tutorial's batching, and fixed inputs to compare outputs on."""
    steps, num_steps = job["steps"], job["num_steps"]
    inputs, targets = epoch_windows(
        *generate_series(ECHO_BATCH * num_steps * steps, epoch_rng(seed, 0)), ECHO_BATCH, num_steps
    )
    eval_inputs = epoch_rng(seed, 1).integers(0, 2, size=(ECHO_BATCH, num_steps), dtype=np.int32)
    return inputs, targets, eval_inputs


def _mnist_data(job, seed):
    """K batches of blob images in [0, 1] with random labels, and fixed inputs."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.0, 0.3, size=(job["steps"] + 1, BATCH, 28, 28)).astype(np.float32)
    for image in images.reshape(-1, 28, 28):
        top, left = rng.integers(0, 20, size=2)
        image[top : top + 8, left : left + 4] = 1.0
    labels = rng.integers(0, 10, size=(job["steps"], BATCH), dtype=np.int32)
    return images[:-1], labels, images[-1]


@pytest.fixture(scope="module")
def tf1_runs(tmp_path_factory):
    """{job name: (job, folder with initial/final checkpoints, results, inputs)}: every
    graph run by the TF1 script in one subprocess."""
    root = tmp_path_factory.mktemp("tf1")
    jobs = []
    for seed, (name, job) in enumerate(JOBS.items()):
        make_data = _echo_data if name in ECHO_JOBS else _mnist_data
        inputs, targets, eval_inputs = make_data(job, seed)
        np.savez(
            root / f"{name}.npz",
            train_inputs=inputs[: job["steps"]],
            train_targets=targets[: job["steps"]],
            eval_inputs=eval_inputs,
        )
        jobs.append({**job, "name": name, "seed": seed, "data": f"{name}.npz"})
    (root / "jobs.json").write_text(json.dumps(jobs))
    finished = subprocess.run(
        [sys.executable, TF1_GRAPHS, "lockstep", str(root)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    runs = {}
    for job in jobs:
        data = np.load(root / job["data"])
        results = np.load(root / job["name"] / "results.npz")
        runs[job["name"]] = (job, root / job["name"], dict(results), dict(data))
    return runs


def _convert(job, prefix):
    variables = read_checkpoint(str(prefix))
    return tutorials.recognise(variables, job.get("tutorial"), job.get("forget_bias"))


def _relative_error(actual, expected):
    """max |actual - expected| / max |expected|: the error relative to the tensor's scale."""
    return float(np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-30))


@pytest.mark.parametrize("name", list(JOBS))
def test_converted_checkpoint_gives_the_graphs_outputs(tf1_runs, name):
    job, folder, results, data = tf1_runs[name]
    for checkpoint in ("initial", "final"):
        conversion = _convert(job, folder / checkpoint)
        assert conversion.tutorial == job.get(
            "tutorial", "A" if name in ECHO_JOBS else job["graph"]
        )
        model = tutorials.build_model(conversion)
        logits = np.asarray(model(data["eval_inputs"], training=False))
        expected = results[f"logits_{checkpoint}"]
        assert logits.shape == expected.shape
        np.testing.assert_allclose(logits, expected, atol=OUTPUT_TOLERANCE, rtol=0)
    # Training moved the weights, so the final check was not the initial one again.
    assert not np.allclose(results["logits_initial"], results["logits_final"], atol=1e-4)


def _fit_mnist(job, conversion, data, workdir):
    """tfrnn.engine.training.fit from ``conversion``'s weights over the TF1 run's batches."""
    steps = job["steps"]
    config = dataclasses.replace(
        mnist_config.Config(**conversion.config()), batch_size=BATCH, train_steps=steps
    )
    images, labels = data["train_inputs"], data["train_targets"]

    def train_batches(epoch, skip):  # one step an epoch: epoch k trains on TF1's batch k
        return tf.data.Dataset.from_tensor_slices(
            (images[epoch : epoch + 1], labels[epoch : epoch + 1])
        ).skip(skip)

    task = training.Task(
        make_model=lambda: tutorials.build_model(conversion),
        make_optimizer=lambda: mnist_model.make_optimizer(config, steps),
        per_example_loss=training.sparse_softmax_cross_entropy,
        train_batches=train_batches,
        eval_batches=lambda: tf.data.Dataset.from_tensor_slices((images[0], labels[0])).batch(
            BATCH
        ),
        steps_per_epoch=1,
        total_steps=steps,
        global_batch_size=BATCH,
    )
    result = training.fit(
        task,
        str(workdir),
        dataclasses.asdict(config),
        jit_compile=config.jit_compile,
        verbose=False,
    )
    return [record["train_loss"] for record in result.history], result.model


def _train_echo(job, conversion, data):
    """tbptt's window runner from ``conversion``'s weights over the TF1 run's windows."""
    model = tbptt.build_training_model(job["mode"], conversion.cell, conversion.units, ECHO_BATCH)
    model.set_weights(tutorials.build_model(conversion).get_weights())
    # TF1's AdagradOptimizer(0.1): accumulators from 0.1, no epsilon.
    optimizer = keras.optimizers.Adagrad(0.1, initial_accumulator_value=0.1, epsilon=0.0)
    run = tbptt.make_window_runner(job["mode"], model, optimizer)
    carry = tbptt.start_epoch(job["mode"], model, ECHO_BATCH, job["num_steps"])
    losses, _ = run(tf.constant(data["train_inputs"]), tf.constant(data["train_targets"]), carry)
    # The stateless model with the trained weights: the same weight order as the converted one.
    trained = tutorials.build_model(conversion)
    trained.set_weights(model.get_weights())
    return np.asarray(losses), trained


@pytest.mark.parametrize("name", [name for name in JOBS if name != "c1_forget_bias"])
def test_tfrnn_training_follows_the_graph_step_by_step(tf1_runs, name, tmp_path):
    job, folder, results, data = tf1_runs[name]
    initial = _convert(job, folder / "initial")
    if name in ECHO_JOBS:
        losses, model = _train_echo(job, initial, data)
    else:
        losses, model = _fit_mnist(job, initial, data, tmp_path / "run")
    expected_losses = results["losses"]
    assert len(losses) == job["steps"]
    np.testing.assert_allclose(losses, expected_losses, rtol=TRAINING_RTOL)
    final = tutorials.build_model(_convert(job, folder / "final"))
    moved = 0
    for trained, graph_final, start in zip(
        model.weights, final.weights, tutorials.build_model(initial).weights, strict=True
    ):
        assert trained.name == graph_final.name
        error = _relative_error(np.asarray(trained), np.asarray(graph_final))
        assert error < TRAINING_RTOL, f"{trained.path}: relative error {error:.2e}"
        moved += not np.array_equal(np.asarray(graph_final), np.asarray(start))
    assert moved == len(model.weights)  # every weight was trained, so every one was compared


def _run(*command):
    finished = subprocess.run(
        [sys.executable, "-m", *command],
        env=user_environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    return finished.stdout


def test_commands_convert_export_and_predict_a_tf1_checkpoint(tf1_runs, tmp_path):
    # C2's trained graph (12 units: --tutorial C2) through the three commands a user runs.
    _, folder, results, data = tf1_runs["c2"]
    workdir, models = tmp_path / "run", tmp_path / "models" / "mnist"
    printed = _run(
        "tfrnn.convert",
        "--tf1_checkpoint",
        str(folder / "final"),
        "--workdir",
        str(workdir),
        "--tutorial",
        "C2",
    )
    assert "(tutorial C2: lstm cell, 12 units)" in printed
    _run("tfrnn.export", "--workdir", str(workdir), "--export_dir", str(models))
    np.save(tmp_path / "images.npy", data["eval_inputs"])
    answered = _run("tfrnn.predict", "--model", str(models), str(tmp_path / "images.npy"))
    model_line, lines = answered.split("\n", 1)
    assert model_line == f"model {models}, version 1"
    predicted = [int(line.split(": ")[1].split()[0]) for line in lines.strip().splitlines()]
    assert predicted == list(np.argmax(results["logits_final"], axis=1))
    # The probabilities the server answers are the graph's softmax.
    probabilities = [
        float(line.split("probability ")[1].rstrip(")")) for line in lines.splitlines()
    ]
    graph_softmax = np.asarray(tf.nn.softmax(results["logits_final"]))
    np.testing.assert_allclose(probabilities, graph_softmax.max(axis=1), atol=1e-3)  # printed %.3f


def test_converted_echo_checkpoint_serves_the_graphs_probabilities(tf1_runs, tmp_path):
    _, folder, results, data = tf1_runs["echo_handbuilt"]
    workdir = tmp_path / "run"
    convert.convert(str(folder / "final"), str(workdir))
    export.export_workdir(str(workdir), str(tmp_path / "models"), version=1)
    served = tf_serving.run_like_tf_serving(
        str(tmp_path / "models" / "1"), "serving_default", {"symbols": data["eval_inputs"]}
    )
    graph_softmax = np.asarray(tf.nn.softmax(results["logits_final"]))
    np.testing.assert_allclose(served["probabilities"], graph_softmax, atol=OUTPUT_TOLERANCE)
