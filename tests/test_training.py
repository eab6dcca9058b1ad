"""Tests of tfrnn.engine.training.fit on a tiny task: outputs, exact resume, NaN, strategies."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrnn.engine import loop, reporting, training
from tfrnn.errors import UsageError
from tfrnn.layers.cells import make_rnn

NUM_EXAMPLES, BATCH, TIME, FEATURES, CLASSES = 64, 16, 4, 3, 3
STEPS_PER_EPOCH = NUM_EXAMPLES // BATCH  # 4
CONFIG = {"task": "synthetic", "epochs": 3}


def _synthetic_examples():
    # The class is the feature with the largest sum over time: learnable by a small RNN.
    inputs = np.random.default_rng(0).normal(size=(NUM_EXAMPLES, TIME, FEATURES))
    labels = np.argmax(inputs.sum(axis=1), axis=-1)
    return inputs.astype("float32"), labels.astype("int32")


def make_task(epochs=3, corrupt=None):
    """A 3-class sequence task; ``corrupt(epoch, skip, batches)`` may alter an epoch's batches."""
    inputs, labels = _synthetic_examples()
    examples = tf.data.Dataset.from_tensor_slices((inputs, labels))

    def make_model():
        keras.utils.set_random_seed(1)
        sequence = keras.Input((TIME, FEATURES))
        return keras.Model(sequence, keras.layers.Dense(CLASSES)(make_rnn("simple", 8)(sequence)))

    def train_batches(epoch, skip):
        shuffled = examples.shuffle(NUM_EXAMPLES, seed=100 + epoch, reshuffle_each_iteration=False)
        batches = shuffled.batch(BATCH, drop_remainder=True).skip(skip)
        return corrupt(epoch, skip, batches) if corrupt else batches

    return training.Task(
        make_model=make_model,
        make_optimizer=lambda: keras.optimizers.Adam(0.05),
        per_example_loss=training.sparse_softmax_cross_entropy,
        train_batches=train_batches,
        eval_batches=lambda: examples.batch(24),
        steps_per_epoch=STEPS_PER_EPOCH,
        total_steps=epochs * STEPS_PER_EPOCH,
        global_batch_size=BATCH,
    )


def _scalars(workdir):
    """{tag: [(step, value), ...]} over every TensorBoard event file of ``workdir``."""
    scalars = {}
    for path in sorted((workdir / "tensorboard").iterdir()):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append(
                    (event.step, float(tf.make_ndarray(value.tensor)))
                )
    return scalars


def _event_files(workdir):
    return sorted(os.listdir(workdir / "tensorboard"))


def _without_seconds(history):
    return [
        {k: v for k, v in record.items() if k not in ("seconds", "compile_seconds")}
        for record in history
    ]


def _fit(task, workdir, **kwargs):
    kwargs.setdefault("checkpoint_every", 3)
    kwargs.setdefault("jit_compile", False)  # compiling costs more than these tiny steps
    return training.fit(task, str(workdir), CONFIG, verbose=False, **kwargs)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run, shared by the tests that compare against it."""
    workdir = tmp_path_factory.mktemp("reference")
    result = _fit(make_task(), workdir)
    return workdir, result


def test_fit_learns_and_writes_metrics_summaries_plot_and_checkpoints(reference):
    workdir, result = reference
    with open(workdir / "metrics.json") as handle:
        metrics = json.load(handle)
    assert metrics["config"] == CONFIG
    assert metrics["epochs"] == result.history
    assert [record["epoch"] for record in result.history] == [1, 2, 3]
    for record in result.history:
        assert set(record) == {
            "epoch",
            "step",
            "train_loss",
            "train_accuracy",
            "test_loss",
            "test_accuracy",
            "seconds",
            "compile_seconds",
        }
    assert [record["step"] for record in result.history] == [4, 8, 12]
    # The first epoch compiled the step and the evaluation; the others ran them compiled (an
    # estimate: the steady rate it is measured against moves a little as steps accrue).
    first = result.history[0]["compile_seconds"]
    assert first > 0
    assert all(record["compile_seconds"] < first / 10 for record in result.history[1:])
    # One training point per call: calls end at checkpoints (every 3 steps) and epoch ends.
    assert [point["step"] for point in metrics["steps"]] == [3, 4, 6, 8, 9, 12]
    assert metrics["steps"][0]["train_loss"] > metrics["steps"][-1]["train_loss"]
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.history[-1]["test_accuracy"] > 0.6  # chance is 1/3
    assert (workdir / "curves.png").stat().st_size > 1000
    assert len(_event_files(workdir)) == 1
    assert tf.train.latest_checkpoint(str(workdir / "checkpoints")).endswith("ckpt-12")
    # Evaluation reproduces the recorded test accuracy from the returned model.
    inputs, labels = _synthetic_examples()
    predictions = np.argmax(result.model(inputs), axis=-1)
    assert np.mean(predictions == labels) == pytest.approx(result.history[-1]["test_accuracy"])


def test_interrupted_run_resumes_to_the_same_weights_and_metrics(reference, tmp_path):
    _, uninterrupted = reference

    def interrupt_in_epoch_2(epoch, skip, batches):
        # Three batches of epoch 2 (steps 5-7), then the input pipeline fails. The checkpoint
        # of step 6 is the last one; step 7 is lost and must be redone identically.
        if epoch != 1:
            return batches
        failing = batches.take(1).map(
            lambda x, y: (tf.debugging.check_numerics(x * np.nan, "interrupted"), y)
        )
        return batches.take(3).concatenate(failing)

    with pytest.raises(tf.errors.InvalidArgumentError, match="interrupted"):
        _fit(make_task(corrupt=interrupt_in_epoch_2), tmp_path)
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-6")
    resumed = _fit(make_task(), tmp_path)
    assert resumed.resumed_from_step == 6
    assert _without_seconds(resumed.history) == _without_seconds(uninterrupted.history)
    for got, expected in zip(
        resumed.model.get_weights(), uninterrupted.model.get_weights(), strict=True
    ):
        np.testing.assert_array_equal(got, expected)
    with open(tmp_path / "metrics.json") as handle:
        resumed_metrics = json.load(handle)
    with open(reference[0] / "metrics.json") as handle:
        assert resumed_metrics["steps"] == json.load(handle)["steps"]
    # TensorBoard got each point once: the steps redone after the checkpoint are not repeated.
    assert [step for step, _ in _scalars(tmp_path)["train/running_loss"]] == [3, 4, 6, 8, 9, 12]
    # A finished run re-run trains nothing, keeps its history and writes no event file.
    event_files = _event_files(tmp_path)
    assert len(event_files) == 2  # the interrupted run's and the resumed run's
    again = _fit(make_task(), tmp_path)
    assert again.resumed_from_step == 3 * STEPS_PER_EPOCH
    assert again.history == resumed.history
    assert _event_files(tmp_path) == event_files
    # The same workdir with another configuration is refused before anything is built.
    with pytest.raises(UsageError, match=r"another configuration \(epochs: 3 -> 4\)"):
        training.fit(make_task(), str(tmp_path), {**CONFIG, "epochs": 4}, verbose=False)


def test_every_tensorboard_scalar_is_at_the_global_step(reference):
    workdir, result = reference
    scalars = _scalars(workdir)
    with open(workdir / "metrics.json") as handle:
        points = json.load(handle)["steps"]
    assert scalars["train/running_loss"] == [
        (point["step"], pytest.approx(point["train_loss"])) for point in points
    ]
    assert [step for step, _ in scalars["train/running_accuracy"]] == [3, 4, 6, 8, 9, 12]
    for tag, key in (("train/loss", "train_loss"), ("test/accuracy", "test_accuracy")):
        assert scalars[tag] == [(r["step"], pytest.approx(r[key])) for r in result.history]
    assert {tag: [step for step, _ in values] for tag, values in scalars.items()} == {
        **{tag: [3, 4, 6, 8, 9, 12] for tag in ("train/running_loss", "train/running_accuracy")},
        **{
            tag: [4, 8, 12]
            for tag in ("train/loss", "train/accuracy", "test/loss", "test/accuracy", "seconds")
        },
    }


def test_tensorboard_reads_the_summaries_as_scalars(reference):
    # The viewer the README points to (requirements-dev.txt) shows these tags as scalars.
    from tensorboard.backend.event_processing import plugin_event_accumulator

    workdir, _ = reference
    accumulator = plugin_event_accumulator.EventAccumulator(str(workdir / "tensorboard"))
    accumulator.Reload()
    assert set(accumulator.PluginTagToContent("scalars")) == {
        "train/running_loss",
        "train/running_accuracy",
        "train/loss",
        "train/accuracy",
        "test/loss",
        "test/accuracy",
        "seconds",
    }
    assert [event.step for event in accumulator.Tensors("test/loss")] == [4, 8, 12]


def test_curves_of_a_one_epoch_run_are_lines_with_plain_tick_labels(tmp_path):
    _fit(make_task(epochs=1), tmp_path)
    with open(tmp_path / "metrics.json") as handle:
        figure = reporting.curves_figure(json.load(handle), "one epoch")
    figure.canvas.draw()
    for axis in figure.axes:
        train_line, test_line = axis.get_lines()
        assert list(train_line.get_xdata()) == [3, 4]  # the training points of epoch 1
        assert list(test_line.get_xdata()) == [4]  # its test result, on the same step axis
        labels = [label.get_text() for label in axis.get_yticklabels(which="both")]
        labels += [label.get_text() for label in axis.get_xticklabels()]
        assert all(
            label.replace(".", "").replace("\u2212", "").isdigit() for label in labels if label
        )
        assert any(labels)
    # Nothing drawn outside the figure: no cut-off axis label.
    renderer = figure.canvas.get_renderer()
    figure_box = figure.bbox
    for axis in figure.axes:
        box = axis.get_tightbbox(renderer)
        assert figure_box.x0 <= box.x0 and box.x1 <= figure_box.x1
        assert figure_box.y0 <= box.y0 and box.y1 <= figure_box.y1


def test_nan_loss_stops_with_one_line_error_and_keeps_last_good_checkpoint(tmp_path):
    def nan_in_step_6(epoch, skip, batches):
        if epoch != 1:
            return batches
        poisoned = batches.skip(1).take(1).map(lambda x, y: (x * np.nan, y))
        return batches.take(1).concatenate(poisoned).concatenate(batches.skip(2))

    with pytest.raises(loop.TrainingDiverged) as error:
        _fit(make_task(corrupt=nan_in_step_6), tmp_path)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("loss became nan at step 6 (epoch 2, batch 2)")
    assert "ckpt-4" in message  # the epoch-1 checkpoint; step 6 was never saved
    latest = tf.train.latest_checkpoint(str(tmp_path / "checkpoints"))
    assert latest.endswith("ckpt-4")
    for name, _ in tf.train.list_variables(latest):
        if "model_variables" in name:
            assert np.all(np.isfinite(tf.train.load_variable(latest, name)))


def test_mirrored_strategy_gives_the_single_device_result(reference, tmp_path):
    # The distributed code path (MirroredVariables, cross-replica reduce) on one CPU replica.
    _, single_device = reference
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    mirrored = _fit(make_task(), tmp_path, strategy=strategy, checkpoint_every=100)
    for got, expected in zip(
        mirrored.model.get_weights(), single_device.model.get_weights(), strict=True
    ):
        np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(
        [r["train_loss"] for r in mirrored.history],
        [r["train_loss"] for r in single_device.history],
        atol=1e-5,
    )
