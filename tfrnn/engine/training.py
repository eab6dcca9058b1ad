"""A classifier trained on a ``tf.data`` pipeline: :func:`fit`, the MNIST experiment's loop.

The caller describes *what* to train in a :class:`Task` (how to build the model and
optimiser, the per-example loss, the batches of an epoch); :class:`ClassifierSteps` is the
training step the engine's :class:`tfrnn.engine.loop.Controller` runs (checkpoints, exact
resume, the NaN stop and reporting are the controller's):

* It runs under any ``tf.distribute`` strategy (default: ``tf.distribute.get_strategy()``,
  one device) with one code path: model and optimiser are created under
  ``strategy.scope()``, each epoch's batches go through
  ``strategy.experimental_distribute_dataset`` (:func:`tfrnn.engine.distribute.split_batches`),
  a step is ``strategy.run``, the loss is averaged over the GLOBAL batch
  (:func:`tfrnn.engine.distribute.global_mean_loss`) and statistics are summed across
  replicas with ``strategy.reduce``.
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
* The checkpoint holds, besides the controller's counters and records, the weights, the
  optimiser (its step counter included) and the partial epoch's loss/accuracy sums. The data
  position is the global step: ``Task.train_batches(epoch, skip)`` must give the same
  batches for the same epoch (e.g. a shuffle seeded from (seed, epoch)) and start after
  ``skip`` of them.
* Each global batch is split over the replicas (sharding by data, not by file), so the run's
  numbers do not depend on the number of replicas (to float rounding).

The workdir receives ``config.json``; ``metrics.json``, ``{"config": ..., "epochs": [...],
"steps": [...]}``: one record per epoch (its last global ``step``, train and test loss and
accuracy, seconds) and the training loss and accuracy of the steps since the previous point,
one point per call (:class:`tfrnn.engine.reporting.RunLog`); TensorBoard scalars of both
under ``tensorboard/``, all against the global step; ``curves.png``
(:func:`tfrnn.engine.reporting.curves_figure`) and ``checkpoints/``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from tfrnn.engine import distribute, timing
from tfrnn.engine.loop import Call, Schedule, start_run
from tfrnn.engine.reporting import curves_figure, save_figure
from tfrnn.errors import UsageError


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
    """Per-example cross-entropy of integer ``labels`` (...) against ``logits`` (..., classes).

    TensorFlow's fused kernel, as the tutorials ran it. Under op determinism
    (:func:`tfrnn.engine.loop.seed_and_make_deterministic`) ``tf.nn``'s wrapper replaces it by
    a log-softmax and a gather, with a scatter in the gradient, because the kernel's GPU
    version is not deterministic: a longer XLA program, slower to compile and to run for
    echo's small windows. The kernel on the CPU and its XLA form are deterministic, so the
    wrapper is taken only where a GPU is visible.
    """
    labels, logits = tf.cast(labels, tf.int32), tf.cast(logits, tf.float32)
    if tf.config.list_physical_devices("GPU"):
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    classes = logits.shape[-1]
    losses, _ = tf.raw_ops.SparseSoftmaxCrossEntropyWithLogits(
        features=tf.reshape(logits, [-1, classes]), labels=tf.reshape(labels, [-1])
    )
    return tf.reshape(losses, tf.shape(labels))


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


def _add_up(parts: list) -> list:
    """Elementwise sums of equal-length lists of tensors (None stays None)."""
    return [
        None if group[0] is None else tf.add_n(list(group)) for group in zip(*parts, strict=True)
    ]


class ClassifierSteps:
    """The training step of a :class:`Task`: sharded XLA forward/backward, update, sums.

    Each step's statistics are (loss sum, correct sum, examples) of the global batch, summed
    across replicas; the partial epoch's totals live in float64 variables the checkpoint
    holds.
    """

    step_name = "batch"
    progress_names = ("loss", "accuracy")
    progress_scale = 1

    def __init__(self, task: Task, strategy, *, jit_compile: bool, shards: int | None):
        self.task, self.strategy = task, strategy
        self.shards = batch_shards(strategy) if shards is None else shards
        if self.shards < 1:
            raise UsageError(f"shards must be positive, got {self.shards}")
        with strategy.scope():
            self.model = task.make_model()
            self.optimizer = task.make_optimizer()
            self.optimizer.build(self.model.trainable_variables)
        self.sums = [
            tf.Variable(0.0, dtype=tf.float64, trainable=False, name=name)
            for name in ("epoch_loss_sum", "epoch_correct_sum", "epoch_examples")
        ]
        # Only the loop of several steps needs AutoGraph; converting the model, the optimiser
        # and the strategy's code it calls made a third of the step's tracing time.
        self._gradients = tf.function(
            self._gradients_and_statistics, jit_compile=jit_compile, autograph=False
        )
        self._eval_statistics = tf.function(
            self._eval_statistics_of, jit_compile=jit_compile, autograph=False
        )
        self._train_steps = tf.function(self._train_steps_of)
        self._eval_step = tf.function(self._eval_step_of, autograph=False)
        self.iterator = None
        self.train_meter = timing.CompileMeter(self._train_steps, self._gradients)
        self.eval_meter = timing.CompileMeter(self._eval_step, self._eval_statistics)

    def checkpoint_items(self) -> dict:
        loss_sum, correct_sum, example_count = self.sums
        return dict(
            model_variables=list(self.model.variables),
            optimizer=self.optimizer,
            loss_sum=loss_sum,
            correct_sum=correct_sum,
            example_count=example_count,
        )

    def weights(self) -> list:
        return self.model.variables

    def before_checkpoint(self) -> None:
        pass  # every piece of state already lives in a checkpointed variable

    def start_epoch(self, epoch: int, skip: int) -> None:
        task = self.task
        epoch_steps = min(task.steps_per_epoch, task.total_steps - epoch * task.steps_per_epoch)
        batches = task.train_batches(epoch, skip).take(epoch_steps - skip)
        self.iterator = iter(distribute.split_batches(self.strategy, batches))

    def train(self, num_steps: int) -> Call:
        before = self._totals()
        with self.train_meter.call(num_steps):
            loss, running = self._train_steps(self.iterator, tf.constant(num_steps, tf.int64))
        loss_sum, correct, count = self._totals() - before
        return Call(
            loss=float(loss),
            running=[[("loss", value[0]), ("accuracy", value[1])] for value in running.numpy()],
            point={"train_loss": loss_sum / count, "train_accuracy": correct / count},
        )

    def end_epoch(self, epoch: int) -> dict:
        test_loss, test_accuracy = self.evaluate()
        loss_sum, correct, count = self._totals()
        for total in self.sums:
            total.assign(0.0)
        return {
            "train_loss": float(loss_sum / count),
            "train_accuracy": float(correct / count),
            "test_loss": test_loss,
            "test_accuracy": test_accuracy,
        }

    def compile_seconds(self) -> dict:
        return {
            "training": self.train_meter.compile_seconds(),
            "evaluation": self.eval_meter.compile_seconds(),
        }

    def epoch_summary(self, record: dict) -> str:
        return (
            f"epoch {record['epoch']}: train loss {record['train_loss']:.4f} accuracy "
            f"{100 * record['train_accuracy']:.2f}% | test loss {record['test_loss']:.4f} "
            f"accuracy {100 * record['test_accuracy']:.2f}% | {record['seconds']:.1f} s, "
            f"{record['compile_seconds']:.1f} of them compiling"
        )

    def evaluate(self) -> tuple[float, float]:
        """(mean loss, accuracy) over the task's evaluation batches."""
        totals = np.zeros(3)
        for batch in distribute.split_batches(self.strategy, self.task.eval_batches()):
            with self.eval_meter.call(1):
                totals += [float(value) for value in self._eval_step(batch)]
        loss_total, correct_total, count = totals
        return loss_total / count, correct_total / count

    def _totals(self) -> np.ndarray:
        return np.array([float(total) for total in self.sums])

    def _forward(self, model_inputs, labels, training):
        """Loss and statistics of one replica's batch: sums, so that replicas add up."""
        logits = self.model(model_inputs, training=training)
        per_example = _per_example_mean(self.task.per_example_loss(labels, logits))
        correct = tf.cast(
            tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), labels), tf.float32
        )
        statistics = (
            tf.reduce_sum(per_example),
            tf.reduce_sum(_per_example_mean(correct)),
            tf.cast(tf.shape(per_example)[0], tf.float32),
        )
        return per_example, statistics

    def _gradients_and_statistics(self, model_inputs, labels, regularize):
        model = self.model
        with tf.GradientTape() as tape:
            per_example, statistics = self._forward(model_inputs, labels, training=True)
            loss = distribute.global_mean_loss(per_example, self.task.global_batch_size)
            if model.losses and regularize:
                loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
        return tape.gradient(loss, model.trainable_variables), statistics

    def _sharded_gradients_and_statistics(self, model_inputs, labels):
        # The loss is a sum over rows / the global batch: shards' gradients and sums add up.
        # The regularisation term belongs to the whole batch: shard 0 adds it, once.
        rows, count = tf.shape(labels)[0], self.shards
        all_gradients, all_sums = [], []
        for index in range(count):
            part = slice(index * rows // count, (index + 1) * rows // count)
            gradients, sums = self._gradients(
                tf.nest.map_structure(lambda tensor, part=part: tensor[part], model_inputs),
                labels[part],
                index == 0,
            )
            all_gradients.append(gradients)
            all_sums.append(sums)
        return _add_up(all_gradients), tuple(_add_up(all_sums))

    def _replica_train_step(self, model_inputs, labels):
        gradients, statistics = self._sharded_gradients_and_statistics(
            model_inputs, tf.cast(labels, tf.int32)
        )
        variables = self.model.trainable_variables
        self.optimizer.apply_gradients(zip(gradients, variables, strict=True))
        return statistics

    def _reduce_sums(self, per_replica):
        return [
            tf.cast(self.strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None), tf.float64)
            for value in per_replica
        ]

    @tf.autograph.experimental.do_not_convert
    def _train_step(self, batch):
        sums = self._reduce_sums(self.strategy.run(self._replica_train_step, args=batch))
        for total, value in zip(self.sums, sums, strict=True):
            total.assign_add(value)
        return sums[0] / sums[2]

    def _train_steps_of(self, iterator, num_steps):
        """Up to ``num_steps`` steps in one call, stopping after the first non-finite loss.

        One call for several steps: the host does not wait for each step's statistics and
        pays Python's dispatch once per call, not once per step. Returns the last step's loss
        (non-finite if the run diverged) and, shape (steps run, 2), the epoch's running loss
        and accuracy after each step (for the progress bar).
        """
        loss_sum, correct_sum, example_count = self.sums
        batch_loss = tf.constant(0.0, tf.float64)
        running = tf.TensorArray(tf.float64, size=0, dynamic_size=True)
        for index in tf.range(num_steps):
            batch_loss = self._train_step(next(iterator))
            running = running.write(
                tf.cast(index, tf.int32),
                tf.stack([loss_sum / example_count, correct_sum / example_count]),
            )
            if not tf.math.is_finite(batch_loss):
                break
        return batch_loss, running.stack()

    def _eval_statistics_of(self, model_inputs, labels):
        _, statistics = self._forward(model_inputs, labels, training=False)
        return statistics

    def _replica_eval_statistics(self, model_inputs, labels):
        # A plain function: handed a tf.function, MirroredStrategy compiles every replica's
        # call into one XLA program on one device. The cast is per replica, because under
        # several workers the labels are per-replica values.
        return self._eval_statistics(model_inputs, tf.cast(labels, tf.int32))

    def _eval_step_of(self, batch):
        return self._reduce_sums(self.strategy.run(self._replica_eval_statistics, args=batch))


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
    fresh: bool = False,
) -> Result:
    """Trains ``task``, resuming from ``workdir``'s last checkpoint if there is one.

    Args:
      task: what to train.
      workdir: where checkpoints, metrics, summaries and plots go (created if needed).
      config: everything that determines the result (JSON-serialisable); stored in
        metrics.json, and a resume with a different one is refused (a changed value of
        :data:`tfrnn.engine.checkpoints.LOCATION_KEYS` is recorded instead).
      strategy: a ``tf.distribute`` strategy; None is the default (one-device) strategy.
        ``task.global_batch_size`` must be a multiple of its replicas.
      checkpoint_every: also checkpoint every this many steps inside an epoch.
      jit_compile: compile the forward/backward pass with XLA.
      shards: row shards of each replica's batch, each its own compiled call run side by
        side; None: :func:`batch_shards`.
      verbose: a progress bar during each epoch and one summary line after it.
      title: a title for the curves plot.
      fresh: discard ``workdir``'s checkpoints and config.json and start from step 0.
        The caller holds ``workdir``'s lock (:func:`tfrnn.engine.workdir.hold`).

    Returns:
      :class:`Result` with the trained model and the per-epoch records.

    Raises:
      TrainingDiverged: the loss became NaN or infinite.
      UsageError: the workdir holds a run with another configuration, or the batch does not
        split over the replicas.
    """
    schedule = Schedule(task.steps_per_epoch, task.total_steps, checkpoint_every, STEPS_PER_CALL)
    strategy = strategy or tf.distribute.get_strategy()
    distribute.per_replica_batch_size(strategy, task.global_batch_size)
    chief = distribute.is_chief(strategy)
    os.makedirs(workdir, exist_ok=True)
    controller = start_run(
        lambda: ClassifierSteps(task, strategy, jit_compile=jit_compile, shards=shards),
        schedule,
        workdir,
        config=config,
        strategy=strategy,
        verbose=verbose,
        fresh=fresh,
        metrics=lambda records: {"config": config, **records},
    )
    resumed_from_step = controller.step
    history = controller.train()
    if chief and history:
        # Once at the end, not per epoch: a plot costs about a second.
        figure = curves_figure(controller.log.records, title)
        save_figure(figure, os.path.join(workdir, "curves.png"))
    return Result(
        model=controller.steps.model, history=history, resumed_from_step=resumed_from_step
    )
