"""The project's training loop: custom, distributed-ready, checkpointed and exactly resumable.

One loop for every experiment. The caller describes *what* to train in a :class:`Task` (how
to build the model and optimiser, the per-example loss, the batches of an epoch); :func:`fit`
does the rest:

* It runs under any ``tf.distribute`` strategy (default: ``tf.distribute.get_strategy()``,
  one device) with one code path: model and optimiser are created under
  ``strategy.scope()``, each epoch's batches go through
  ``strategy.experimental_distribute_dataset`` (:func:`tfrnn.engine.distribute.split_batches`), a
  step is ``strategy.run``, the loss is averaged over the GLOBAL batch
  (``tf.nn.compute_average_loss``) and statistics are summed across replicas with
  ``strategy.reduce``.
* The forward and backward pass is a ``tf.function`` compiled with XLA
  (``jit_compile=True``); the optimiser update stays outside the compiled part because a
  strategy's cross-replica gradient sum cannot live inside an XLA cluster.
* On one CPU device the batch is cut into row shards, one per core (:func:`batch_shards`),
  each its own XLA call; TensorFlow runs the calls side by side and the gradients (sums over
  rows) add up. XLA runs a small recurrent model on one core, so this is what uses the
  others (+30% on 2 cores, experiments/bench/README.md). The gradient is the same up to
  float rounding, and a run stays deterministic.
* Several steps run in one ``tf.function`` call (:data:`STEPS_PER_CALL`, ending at every
  checkpoint and epoch end): Python does not wait for each step before queueing the next.
  The call stops after the first non-finite loss, and the progress bar still sees every step.
* Resume loses nothing. A ``tf.train.Checkpoint`` holds the weights, the optimiser (its step
  counter included), the global step, the number of finished epochs, the partial epoch's
  loss/accuracy sums and seconds, and the records of metrics.json. The data position is the
  global step: ``Task.train_batches(epoch, skip)`` must give the same batches for the same
  epoch (e.g. a shuffle seeded from (seed, epoch)) and start after ``skip`` of them. Killed at
  any point, the same command continues from the last checkpoint and ends with the same
  weights and metrics as a run never stopped (on CPU, with op determinism on).
* A non-finite loss stops the run with :class:`TrainingDiverged` (a one-line
  :class:`tfrnn.UsageError`); a checkpoint is only written when every weight is finite,
  so the last one kept is good.
* Under several workers (``MultiWorkerMirroredStrategy``) every worker trains and
  checkpoints, but only the chief writes ``config.json``, metrics, summaries and the plot;
  the others checkpoint to a temporary folder they delete at the end, and every worker
  restores from the chief's ``checkpoints/`` (see :mod:`tfrnn.engine.distribute`). Each global
  batch is split over the replicas (sharding by data, not by file), so the run's numbers do
  not depend on the number of replicas (to float rounding).

The workdir receives ``config.json``; ``metrics.json``, ``{"config": ..., "epochs": [...],
"steps": [...]}``: one record per epoch (its last global ``step``, train and test loss and
accuracy, seconds) and the training loss and accuracy of the steps since the previous point,
one point per call (:class:`_RunLog`); TensorBoard scalars of both under ``tensorboard/``, all
against the global step; ``curves.png`` (:func:`curves_figure`) and ``checkpoints/``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf
from matplotlib import ticker
from tensorflow.core.framework import summary_pb2

from tfrnn.engine import distribute
from tfrnn.errors import UsageError


class TrainingDiverged(UsageError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclasses.dataclass
class Task:
    """What to train.

    Attributes:
      make_model: builds the Keras model (called under the strategy's scope).
      make_optimizer: builds the Keras optimiser (same).
      per_example_loss: (labels, logits) -> loss per example, shape (batch,) or
        (batch, ...) (extra axes, e.g. time steps, are averaged per example).
      train_batches: (epoch, skip) -> a dataset of GLOBAL (inputs, labels) batches of epoch
        ``epoch`` (0-based) from batch ``skip`` on; the same arguments must give the same
        batches (this is the data position a resume relies on).
      eval_batches: () -> a dataset of (inputs, labels) batches to evaluate on.
      steps_per_epoch: training steps in a full epoch.
      total_steps: training steps of the whole run; the last epoch may be cut short (a
        tutorial that counted iterations rather than epochs).
      global_batch_size: examples per step over all replicas (the loss divisor).
    """

    make_model: Callable[[], keras.Model]
    make_optimizer: Callable[[], keras.optimizers.Optimizer]
    per_example_loss: Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
    train_batches: Callable[[int, int], tf.data.Dataset]
    eval_batches: Callable[[], tf.data.Dataset]
    steps_per_epoch: int
    total_steps: int
    global_batch_size: int

    @property
    def num_epochs(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_epoch)


def sparse_softmax_cross_entropy(labels, logits):
    """Per-example cross-entropy of integer ``labels`` against ``logits`` (..., classes)."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(labels, tf.int32), logits=tf.cast(logits, tf.float32)
    )


@dataclasses.dataclass
class Result:
    model: keras.Model
    history: list  # one record per epoch, as in metrics.json
    resumed_from_step: int  # 0 for a fresh run


def _per_example_mean(values):
    """(batch, ...) -> (batch,): averages any axes after the batch axis."""
    if values.shape.rank > 1:
        return tf.reduce_mean(values, axis=list(range(1, values.shape.rank)))
    return values


def write_json_atomically(path: str, content) -> None:
    # A SIGKILL mid-write must not leave a truncated file behind: write, then rename.
    temporary = path + ".tmp"
    with open(temporary, "w") as handle:
        json.dump(content, handle, indent=2)
        handle.write("\n")
    os.replace(temporary, path)


# Config keys that say where an input lies, not what it holds: a resume may change them, and
# config.json then records the new value. What the input holds belongs in the config too
# (MNIST records its IDX files' sha256 as data_fingerprint).
LOCATION_KEYS = ("data_dir",)


def _differences(saved: dict, config: dict, prefix: str = ""):
    """(key, saved value, new value) for each difference; nested dicts by dotted key."""
    for key in sorted(set(saved) | set(config)):
        old, new = saved.get(key), config.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            yield from _differences(old, new, f"{prefix}{key}.")
        elif old != new:
            yield prefix + key, old, new


def _check_same_config(workdir: str, config: dict, *, write: bool) -> None:
    path = os.path.join(workdir, "config.json")
    if os.path.exists(path):
        with open(path) as handle:
            saved = json.load(handle)
        changed = [item for item in _differences(saved, config) if item[0] not in LOCATION_KEYS]
        if changed:
            details = ", ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in changed)
            raise UsageError(
                f"{workdir} holds a run with another configuration ({details}); "
                "resume with the same flags, or pass another --workdir"
            )
        if saved == config:
            return
    if write:
        write_json_atomically(path, config)


def curves_figure(log: dict, title: str = ""):
    """A matplotlib Figure of a run's loss and accuracy against the global step.

    ``log`` is metrics.json's content: the training points of ``log["steps"]`` are drawn as
    lines (so a one-epoch run shows its whole curve), the epochs' test results as markers at
    each epoch's last step.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 4))
    steps = [point["step"] for point in log["steps"]]
    epoch_ends = [record["step"] for record in log["epochs"]]
    for axis, key, scale in ((loss_axis, "loss", 1), (accuracy_axis, "accuracy", 100)):
        axis.plot(steps, [scale * p[f"train_{key}"] for p in log["steps"]], label="train")
        axis.plot(
            epoch_ends,
            [scale * r[f"test_{key}"] for r in log["epochs"]],
            marker="o",
            label="test (epoch end)",
        )
        axis.set_xlabel("training step")
        axis.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        axis.ticklabel_format(axis="x", style="plain", useOffset=False)
        axis.grid(True, alpha=0.3)
        axis.legend()
    loss_axis.set(ylabel="cross-entropy (nats)", yscale="log", title="loss")
    # Plain numbers (0.2, 1, 3) on the log axis, where matplotlib would print 2×10^-1.
    loss_axis.yaxis.set_major_formatter(_PlainLogFormatter())
    loss_axis.yaxis.set_minor_formatter(
        _PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5))
    )
    accuracy_axis.set(ylabel="accuracy (%)", title="accuracy")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


class _PlainLogFormatter(ticker.LogFormatter):
    """LogFormatter's choice of which ticks to label, printed as plain numbers."""

    def __call__(self, x, pos=None):
        return f"{x:g}" if super().__call__(x, pos) else ""


def plot_curves(log: dict, path: str, title: str = "") -> None:
    """Writes :func:`curves_figure` of ``log`` (metrics.json's content) as a PNG."""
    import matplotlib.pyplot as plt

    figure = curves_figure(log, title)
    figure.savefig(path, dpi=100)
    plt.close(figure)


# TensorBoard's scalar plugin metadata, written by hand: tf.summary.scalar needs the
# tensorboard package, which only the viewer needs (requirements-dev.txt); the event files
# are the same.
_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
).SerializeToString()


def write_scalar(name: str, value: float, step: int) -> None:
    """Writes a TensorBoard scalar to the default summary writer."""
    tf.summary.write(name, tf.constant(value, tf.float32), step=step, metadata=_SCALAR_METADATA)


# TensorBoard tag of each record field; every scalar's step is the global training step.
_STEP_TAGS = {"train_loss": "train/running_loss", "train_accuracy": "train/running_accuracy"}
_EPOCH_TAGS = {
    "train_loss": "train/loss",
    "train_accuracy": "train/accuracy",
    "test_loss": "test/loss",
    "test_accuracy": "test/accuracy",
    "seconds": "seconds",
}


class _RunLog:
    """What a run records: metrics.json's ``epochs`` and ``steps``, and their TensorBoard copy.

    ``steps`` holds the training loss and accuracy of the batches since the previous point,
    one point per training call (at most :data:`STEPS_PER_CALL` steps); ``epochs`` one record
    per finished epoch. Both travel in the checkpoint (:attr:`variable`), so a resumed run
    keeps every point. A record goes to TensorBoard once a checkpoint holds it
    (:meth:`summarize`), so the steps a resumed run redoes are not written twice; the event
    file is created with the first scalar, so a run with nothing left to train writes none.
    """

    def __init__(self, workdir: str, chief: bool):
        self.workdir, self.chief = workdir, chief
        self.records = {"epochs": [], "steps": []}
        self.variable = tf.Variable(json.dumps(self.records), trainable=False, name="log")
        self._summarized = {"epochs": 0, "steps": 0}
        self._writer = None

    def restored(self) -> None:
        """Takes the records from :attr:`variable`, just restored from a checkpoint."""
        self.records = json.loads(self.variable.numpy().decode())
        self._summarized = {kind: len(records) for kind, records in self.records.items()}

    def add(self, kind: str, record: dict) -> None:
        self.records[kind].append(record)

    def before_checkpoint(self) -> None:
        self.variable.assign(json.dumps(self.records))

    def summarize(self) -> None:
        """Writes the records not yet in TensorBoard (the chief's only)."""
        if not self.chief:
            return
        for kind, tags in (("steps", _STEP_TAGS), ("epochs", _EPOCH_TAGS)):
            for record in self.records[kind][self._summarized[kind] :]:
                if self._writer is None:
                    self._writer = tf.summary.create_file_writer(
                        os.path.join(self.workdir, "tensorboard")
                    )
                with self._writer.as_default():
                    for key, tag in tags.items():
                        write_scalar(tag, record[key], record["step"])
            self._summarized[kind] = len(self.records[kind])
        if self._writer is not None:
            self._writer.flush()

    def write_metrics(self, config: dict) -> None:
        if self.chief:
            write_json_atomically(
                os.path.join(self.workdir, "metrics.json"), {"config": config, **self.records}
            )


def _training_point(step: int, sums) -> dict:
    """The ``steps`` record of the batches whose (loss, correct, examples) sums are ``sums``."""
    loss, correct, count = sums
    return {"step": step, "train_loss": loss / count, "train_accuracy": correct / count}


def _all_finite(variables) -> bool:
    return all(
        bool(tf.reduce_all(tf.math.is_finite(v)))
        for v in variables
        if tf.as_dtype(v.dtype).is_floating
    )


def _check_workers_agree(strategy, global_step) -> None:
    """Every worker must resume from the same step, or the collectives would never match."""
    if distribute.is_default(strategy):
        return
    steps = distribute.gather_rows(
        strategy,
        strategy.experimental_distribute_values_from_function(
            lambda _: tf.reshape(tf.identity(global_step), [1])
        ),
    )
    lowest, highest = int(tf.reduce_min(steps)), int(tf.reduce_max(steps))
    if lowest != highest:
        raise UsageError(
            f"the workers restored different steps ({lowest} to {highest}): every worker must "
            "see the chief's --workdir (a shared file system), or start afresh in an empty one"
        )


# Training steps per tf.function call (fewer where a checkpoint or the epoch's end comes
# first): enough to take Python out of the step, few enough for a live progress bar.
STEPS_PER_CALL = 20

# Measured on 2 cores only; more shards than this would cut batches into slivers.
MAX_BATCH_SHARDS = 4


def batch_shards(strategy: tf.distribute.Strategy) -> int:
    """How many row shards :func:`fit` cuts each replica's batch into: one per CPU core
    (at most :data:`MAX_BATCH_SHARDS`) on the default strategy without a GPU, else 1 (a
    GPU, or a strategy whose replicas already run side by side)."""
    if not distribute.is_default(strategy) or tf.config.list_logical_devices("GPU"):
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, MAX_BATCH_SHARDS))


def fit(
    task: Task,
    workdir: str,
    config: dict,
    *,
    strategy: tf.distribute.Strategy | None = None,
    checkpoint_every: int = 200,
    jit_compile: bool = True,
    shards: int | None = None,
    verbose: bool = True,
    title: str = "",
) -> Result:
    """Trains ``task``, resuming from ``workdir``'s last checkpoint if there is one.

    Args:
      task: what to train.
      workdir: where checkpoints, metrics, summaries and plots go (created if needed).
      config: everything that determines the result (JSON-serialisable); stored in
        metrics.json, and a resume with a different one is refused (a changed value of
        :data:`LOCATION_KEYS` is recorded instead).
      strategy: a ``tf.distribute`` strategy; None is the default (one-device) strategy.
        ``task.global_batch_size`` must be a multiple of its replicas.
      checkpoint_every: also checkpoint every this many steps inside an epoch.
      jit_compile: compile the forward/backward pass with XLA.
      shards: row shards of each replica's batch, each its own compiled call run side by
        side; None: :func:`batch_shards`.
      verbose: a progress bar during each epoch and one summary line after it.
      title: a title for the curves plot.

    Returns:
      :class:`Result` with the trained model and the per-epoch records.

    Raises:
      TrainingDiverged: the loss became NaN or infinite.
      UsageError: the workdir holds a run with another configuration, or the batch does not
        split over the replicas.
    """
    if checkpoint_every <= 0:
        raise UsageError(f"--checkpoint_every must be positive, got {checkpoint_every}")
    strategy = strategy or tf.distribute.get_strategy()
    distribute.per_replica_batch_size(strategy, task.global_batch_size)
    chief = distribute.is_chief(strategy)
    os.makedirs(workdir, exist_ok=True)
    _check_same_config(workdir, config, write=chief)

    with strategy.scope():
        model = task.make_model()
        optimizer = task.make_optimizer()
        optimizer.build(model.trainable_variables)

    # Bookkeeping lives outside the strategy: plain variables updated from reduced values.
    global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
    epochs_done = tf.Variable(0, dtype=tf.int64, trainable=False, name="epochs_done")
    loss_sum = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="epoch_loss_sum")
    correct_sum = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="epoch_correct_sum")
    example_count = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="epoch_examples")
    epoch_seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="epoch_seconds")
    run_log = _RunLog(workdir, chief)
    checkpoint = tf.train.Checkpoint(
        model_variables=list(model.variables),
        optimizer=optimizer,
        global_step=global_step,
        epochs_done=epochs_done,
        loss_sum=loss_sum,
        correct_sum=correct_sum,
        example_count=example_count,
        epoch_seconds=epoch_seconds,
        log=run_log.variable,
    )
    checkpoint_dir = os.path.join(workdir, "checkpoints")
    # Saving is a collective step, so every worker saves; only the chief's copy is kept.
    write_dir = checkpoint_dir if chief else tempfile.mkdtemp(prefix="tfrnn_worker_checkpoints_")
    manager = tf.train.CheckpointManager(checkpoint, write_dir, max_to_keep=3)
    latest = tf.train.latest_checkpoint(checkpoint_dir)
    if latest:
        checkpoint.restore(latest).assert_existing_objects_matched()
        run_log.restored()
        if verbose:
            print(
                f"resuming from {latest} (step {int(global_step)}, {int(epochs_done)} epochs done)",
                flush=True,
            )
    resumed_from_step = int(global_step)
    _check_workers_agree(strategy, global_step)

    def forward(model_inputs, labels, training):
        """Loss and statistics of one replica's batch: sums, so that replicas add up."""
        logits = model(model_inputs, training=training)
        per_example = _per_example_mean(task.per_example_loss(labels, logits))
        correct = tf.cast(
            tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), labels), tf.float32
        )
        statistics = (
            tf.reduce_sum(per_example),
            tf.reduce_sum(_per_example_mean(correct)),
            tf.cast(tf.shape(per_example)[0], tf.float32),
        )
        return logits, per_example, statistics

    @tf.function(jit_compile=jit_compile)
    def gradients_and_statistics(model_inputs, labels, regularize):
        with tf.GradientTape() as tape:
            _, per_example, statistics = forward(model_inputs, labels, training=True)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=task.global_batch_size)
            if model.losses and regularize:
                loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
        return tape.gradient(loss, model.trainable_variables), statistics

    shard_count = batch_shards(strategy) if shards is None else shards
    if shard_count < 1:
        raise UsageError(f"shards must be positive, got {shard_count}")

    def sharded_gradients_and_statistics(model_inputs, labels):
        # The loss is a sum over rows / the global batch: shards' gradients and sums add up.
        # The regularisation term belongs to the whole batch: shard 0 adds it, once.
        rows = tf.shape(labels)[0]
        all_gradients, all_sums = [], []
        for index in range(shard_count):
            rows_of_shard = slice(index * rows // shard_count, (index + 1) * rows // shard_count)
            gradients, sums = gradients_and_statistics(
                tf.nest.map_structure(
                    lambda tensor, part=rows_of_shard: tensor[part], model_inputs
                ),
                labels[rows_of_shard],
                index == 0,
            )
            all_gradients.append(gradients)
            all_sums.append(sums)
        gradients = [
            None if parts[0] is None else tf.add_n(list(parts))
            for parts in zip(*all_gradients, strict=True)
        ]
        return gradients, tuple(tf.add_n(list(parts)) for parts in zip(*all_sums, strict=True))

    def replica_train_step(model_inputs, labels):
        gradients, statistics = sharded_gradients_and_statistics(
            model_inputs, tf.cast(labels, tf.int32)
        )
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        return statistics

    def reduce_sums(per_replica):
        return [
            tf.cast(strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None), tf.float64)
            for value in per_replica
        ]

    def train_step(batch):
        batch_loss, batch_correct, batch_count = reduce_sums(
            strategy.run(replica_train_step, args=batch)
        )
        loss_sum.assign_add(batch_loss)
        correct_sum.assign_add(batch_correct)
        example_count.assign_add(batch_count)
        global_step.assign_add(1)
        return batch_loss / batch_count

    @tf.function
    def train_steps(iterator, num_steps):
        """Up to ``num_steps`` steps in one call, stopping after the first non-finite loss.

        One call for several steps: the host does not wait for each step's statistics and
        pays Python's dispatch once per call, not once per step. Returns the last step's loss
        (non-finite if the run diverged) and, shape (steps run, 2), the epoch's running loss
        and accuracy after each step (for the progress bar).
        """
        batch_loss = tf.constant(0.0, tf.float64)
        running = tf.TensorArray(tf.float64, size=0, dynamic_size=True)
        for index in tf.range(num_steps):
            batch_loss = train_step(next(iterator))
            running = running.write(
                tf.cast(index, tf.int32),
                tf.stack([loss_sum / example_count, correct_sum / example_count]),
            )
            if not tf.math.is_finite(batch_loss):
                break
        return batch_loss, running.stack()

    @tf.function(jit_compile=jit_compile)
    def eval_statistics(model_inputs, labels):
        _, _, statistics = forward(model_inputs, labels, training=False)
        return statistics

    def replica_eval_statistics(model_inputs, labels):
        # A plain function: handed a tf.function, MirroredStrategy compiles every replica's
        # call into one XLA program on one device. The cast is per replica, because under
        # several workers the labels are per-replica values.
        return eval_statistics(model_inputs, tf.cast(labels, tf.int32))

    @tf.function
    def eval_step(batch):
        return reduce_sums(strategy.run(replica_eval_statistics, args=batch))

    def evaluate():
        totals = np.zeros(3)
        for batch in distribute.split_batches(strategy, task.eval_batches()):
            totals += [float(value) for value in eval_step(batch)]
        loss_total, correct_total, count = totals
        return loss_total / count, correct_total / count

    def last_good_checkpoint():
        return tf.train.latest_checkpoint(checkpoint_dir) or "none yet, the run starts afresh"

    def save_checkpoint():
        if not _all_finite(model.variables):
            raise TrainingDiverged(
                f"weights became NaN/inf by step {int(global_step)}; kept the last good "
                f"checkpoint ({last_good_checkpoint()}); lower the learning rate"
            )
        run_log.before_checkpoint()
        manager.save(checkpoint_number=int(global_step))
        run_log.summarize()

    def sums():
        return np.array([float(loss_sum), float(correct_sum), float(example_count)])

    for epoch in range(int(epochs_done), task.num_epochs):
        epoch_steps = min(task.steps_per_epoch, task.total_steps - epoch * task.steps_per_epoch)
        done_in_epoch = int(global_step) - epoch * task.steps_per_epoch
        progress = keras.utils.Progbar(
            epoch_steps, stateful_metrics=["loss", "accuracy"], verbose=1 if verbose else 0
        )
        if verbose:
            print(f"epoch {epoch + 1}/{task.num_epochs}", flush=True)
        batches = task.train_batches(epoch, done_in_epoch).take(epoch_steps - done_in_epoch)
        segment_start = time.perf_counter()
        iterator = iter(distribute.split_batches(strategy, batches))
        step_in_epoch = done_in_epoch
        while step_in_epoch < epoch_steps:
            # A call ends at the epoch's end and at the next checkpoint, so both land on
            # exact steps; the progress bar and the NaN check look once per call.
            num_steps = min(
                STEPS_PER_CALL,
                epoch_steps - step_in_epoch,
                checkpoint_every - int(global_step) % checkpoint_every,
            )
            sums_before = sums()
            batch_loss, running = train_steps(iterator, tf.constant(num_steps, tf.int64))
            batch_loss = float(batch_loss)
            step_in_epoch = int(global_step) - epoch * task.steps_per_epoch
            if not math.isfinite(batch_loss):
                raise TrainingDiverged(
                    f"loss became {batch_loss} at step {int(global_step)} (epoch {epoch + 1}, "
                    f"batch {step_in_epoch}); kept the last good checkpoint "
                    f"({last_good_checkpoint()}); lower the learning rate"
                )
            run_log.add("steps", _training_point(int(global_step), sums() - sums_before))
            running = running.numpy()
            first_step = step_in_epoch - len(running) + 1
            for step, (epoch_loss, epoch_accuracy) in enumerate(running, start=first_step):
                progress.update(step, [("loss", epoch_loss), ("accuracy", epoch_accuracy)])
            if step_in_epoch < epoch_steps and int(global_step) % checkpoint_every == 0:
                now = time.perf_counter()
                epoch_seconds.assign_add(now - segment_start)
                save_checkpoint()
                segment_start = now

        test_loss, test_accuracy = evaluate()
        epoch_seconds.assign_add(time.perf_counter() - segment_start)
        record = {
            "epoch": epoch + 1,
            "step": int(global_step),
            "train_loss": float(loss_sum / example_count),
            "train_accuracy": float(correct_sum / example_count),
            "test_loss": test_loss,
            "test_accuracy": test_accuracy,
            "seconds": round(float(epoch_seconds), 2),
        }
        run_log.add("epochs", record)
        run_log.write_metrics(config)
        if verbose:
            print(
                f"epoch {epoch + 1}: train loss {record['train_loss']:.4f} accuracy "
                f"{100 * record['train_accuracy']:.2f}% | test loss {test_loss:.4f} accuracy "
                f"{100 * test_accuracy:.2f}% | {record['seconds']:.1f} s",
                flush=True,
            )
        for accumulator in (loss_sum, correct_sum, example_count, epoch_seconds):
            accumulator.assign(0.0)
        epochs_done.assign(epoch + 1)
        save_checkpoint()

    history = run_log.records["epochs"]
    if chief and history:
        # Once at the end, not per epoch: a plot costs about a second.
        plot_curves(run_log.records, os.path.join(workdir, "curves.png"), title)
    if not chief:
        shutil.rmtree(write_dir, ignore_errors=True)
    return Result(model=model, history=history, resumed_from_step=resumed_from_step)
