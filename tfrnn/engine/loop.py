"""The training controller: epochs of steps, checkpoints, exact resume and the NaN stop.

Modelled on orbit's ``Controller`` (tensorflow/models): the task supplies its training step
as a :class:`Steps` object, and :class:`Controller` runs it::

    for each epoch left:                      # from the checkpoint's epoch and step
        steps.start_epoch(epoch, skip)        # the epoch's data from step `skip` on
        while the epoch has steps left:
            call = steps.train(n)             # n steps, up to the next checkpoint
            stop if call.loss is not finite   # TrainingDiverged: last good checkpoint kept
            record a training point; checkpoint every `checkpoint_every` steps
        record the epoch (steps.end_epoch: its statistics, e.g. a test evaluation)
        checkpoint

What holds:

* Resume loses nothing. The checkpoint holds the task's items (:meth:`Steps.checkpoint_items`:
  weights, optimiser, partial-epoch sums, a task's carried state), the global step, the
  finished epochs, the partial epoch's seconds and the run's records
  (:class:`tfrnn.engine.reporting.RunLog`). The data position is the global step: a task's
  ``start_epoch(epoch, skip)`` must give the same data for the same epoch and start after
  ``skip`` steps. Killed at any point, the same command continues from the last checkpoint
  and ends with the weights and records of a run never stopped (on CPU, deterministic ops).
* Calls end at every checkpoint and epoch end, so both land on exact steps.
* A non-finite loss stops the run with :class:`TrainingDiverged` (a one-line
  :class:`tfrnn.errors.UsageError`); a checkpoint is only written when every weight is
  finite, so the last one kept is good.
* SIGTERM and SIGINT stop the run after the call in progress, with a checkpoint at the step
  reached (:class:`Stopped`). Under several workers a save is collective: TensorFlow's
  ``PreemptionCheckpointHandler`` then has a SIGTERM to any worker stop all of them after the
  same call, each saving its part of that step's checkpoint.
* Only the chief writes files (:func:`tfrnn.engine.distribute.is_chief`): metrics, summaries,
  plots; every worker checkpoints (:class:`tfrnn.engine.checkpoints.Checkpoints`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import sys
import threading
import time
from typing import Protocol

import keras
import tensorflow as tf

from tfrnn.engine import distribute, timing
from tfrnn.engine import workdir as workdir_lib
from tfrnn.engine.checkpoints import (
    Checkpoints,
    all_finite,
    check_same_config,
    check_workers_agree,
)
from tfrnn.engine.reporting import RunLog, progress_bar
from tfrnn.errors import UsageError


class TrainingDiverged(UsageError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# The exit status of a run stopped by each signal: 128 + the signal's number, as a shell
# reports a process the signal ended.
STOP_SIGNALS = {signal.SIGTERM: 143, signal.SIGINT: 130}


class Stopped(SystemExit):
    """SIGTERM or SIGINT stopped the run after the call in progress and a checkpoint there."""


@dataclasses.dataclass(frozen=True)
class Schedule:
    """How long a run is and how often it checkpoints, in training steps.

    The last epoch may be cut short (``total_steps`` not a multiple of ``steps_per_epoch``:
    a tutorial that counted iterations rather than epochs). ``steps_per_call``: most steps
    in one :meth:`Steps.train` call.
    """

    steps_per_epoch: int
    total_steps: int
    checkpoint_every: int
    steps_per_call: int

    def __post_init__(self):
        if self.checkpoint_every <= 0:
            raise UsageError(f"--checkpoint_every must be positive, got {self.checkpoint_every}")

    @property
    def num_epochs(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_epoch)

    def epoch_steps(self, epoch: int) -> int:
        return min(self.steps_per_epoch, self.total_steps - epoch * self.steps_per_epoch)

    def call_steps(self, step: int, steps_left_in_epoch: int) -> int:
        """Steps of the next call from global ``step``: to the epoch's end or checkpoint."""
        until_checkpoint = self.checkpoint_every - step % self.checkpoint_every
        return min(self.steps_per_call, steps_left_in_epoch, until_checkpoint)


@dataclasses.dataclass
class Call:
    """What one :meth:`Steps.train` call did.

    loss: the last step's loss; not finite when the run diverged (the call stops there).
    running: one list of (name, value) progress-bar values per step run.
    point: the training statistics of the call's steps (metrics.json's ``steps`` record).
    """

    loss: float
    running: list
    point: dict


class Steps(Protocol):
    """A task's training step, as :class:`Controller` drives it."""

    step_name: str  # what a step is, for messages: "batch"
    progress_names: tuple[str, ...]  # the progress bar's running values
    progress_scale: int  # progress-bar units per step (1: steps)

    def checkpoint_items(self) -> dict:
        """name -> trackable: weights, optimiser, partial-epoch sums, carried state."""

    def weights(self) -> list:
        """The variables that must be finite for a checkpoint to be written."""

    def start_epoch(self, epoch: int, skip: int) -> None:
        """Prepares epoch ``epoch``'s data from step ``skip`` on (and restored state)."""

    def train(self, num_steps: int) -> Call:
        """Runs up to ``num_steps`` steps, stopping after the first non-finite loss."""

    def end_epoch(self, epoch: int) -> dict:
        """The epoch's statistics for its record; resets the partial-epoch sums."""

    def compile_seconds(self) -> dict:
        """Seconds spent compiling so far, {"training": …, "evaluation": …}
        (:class:`tfrnn.engine.timing.CompileMeter`)."""

    def epoch_summary(self, record: dict) -> str | None:
        """A line to print after the epoch, or None."""

    def before_checkpoint(self) -> None:
        """Copies state the checkpoint must hold into its variables."""


def seed_and_make_deterministic(seed: int) -> None:
    """Seeds Python, NumPy and TensorFlow and makes TensorFlow's ops deterministic: a run
    killed and resumed must compute the very numbers of a run never stopped, so no
    reduction may depend on thread timing."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


class Controller:
    """Runs a task's :class:`Steps` over a :class:`Schedule`, checkpointing in ``workdir``."""

    def __init__(
        self,
        steps: Steps,
        schedule: Schedule,
        workdir: str,
        *,
        chief: bool,
        verbose: bool,
        on_records=None,
        cluster_resolver=None,
    ):
        """``on_records(records)`` is called after each epoch and before a divergence stop,
        with :attr:`log`'s records (e.g. to write metrics.json). ``cluster_resolver``: a
        MultiWorkerMirroredStrategy's, under several workers; a save is then collective, so
        a SIGTERM to one worker must stop them all at the same step (:meth:`train`)."""
        self.steps, self.schedule, self.verbose = steps, schedule, verbose
        # Bookkeeping lives outside any strategy: plain variables updated from reduced values.
        # The loop counts in ``step``, a Python int that ``global_step`` takes on at each save:
        # reading or updating a variable eagerly costs about 0.1 ms, several times a call.
        self.step = 0
        self.global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        self.epochs_done = tf.Variable(0, dtype=tf.int64, trainable=False, name="epochs_done")
        self.epoch_seconds = tf.Variable(
            0.0, dtype=tf.float64, trainable=False, name="epoch_seconds"
        )
        self.log = RunLog(workdir, chief)
        items = dict(
            global_step=self.global_step,
            epochs_done=self.epochs_done,
            epoch_seconds=self.epoch_seconds,
            log=self.log.variable,
        )
        self.checkpoints = Checkpoints(workdir, items | steps.checkpoint_items(), chief=chief)
        self.on_records = on_records
        self._stop_signal = None  # the signal that asked the run to stop, once one has
        self._cluster_resolver = cluster_resolver
        self._preemption = None  # the PreemptionCheckpointHandler, while training workers
        self._saved_step = None  # the step of the last checkpoint this run wrote
        self._segment_start = 0.0  # when the epoch's time not yet in epoch_seconds began
        self._epoch_compiling = 0.0  # the steps' compile seconds when the epoch began
        # The command's phases (tfrnn.engine.timing): data, training, evaluation.
        self.phases = timing.current()

    def restore(self, *, fresh: bool = False) -> int:
        """Restores the newest intact checkpoint (none if ``fresh``); returns the global step
        to go on from."""
        latest = self.checkpoints.restore(fresh=fresh)
        self.step = int(self.global_step)
        if latest:
            self.log.restored()
            if self.verbose:
                # A step of more than one progress unit (echo: a run of 100 windows) is named.
                unit = (
                    f"; a step is a {self.steps.step_name}" if self.steps.progress_scale > 1 else ""
                )
                print(
                    f"resuming from {latest} (step {self.step}, "
                    f"{int(self.epochs_done)} epochs done{unit})",
                    flush=True,
                )
        return self.step

    def train(self) -> list[dict]:
        """Trains the epochs left; returns every epoch's record.

        Raises:
          Stopped: SIGTERM or SIGINT came; the run stopped after the call in progress, with a
            checkpoint at the step it reached, so the same command goes on from there. Under
            several workers (``cluster_resolver``), a SIGTERM to any worker stops every worker
            after the same call (the one after the signal's), each with exit status 143.
        """
        self._stop_signal = None
        stop_requests = self._preemption_checks if self._cluster_resolver else self._stop_requests
        try:
            with stop_requests(), self.phases.phase("training"):
                for epoch in range(int(self.epochs_done), self.schedule.num_epochs):
                    self._train_epoch(epoch)
                    self._stop_if_requested()  # the epoch's end was just checkpointed
        finally:
            self.checkpoints.close()
            self.phases.add_compiling(self.steps.compile_seconds())
        return self.log.records["epochs"]

    @contextlib.contextmanager
    def _stop_requests(self):
        """SIGTERM and SIGINT set :attr:`_stop_signal`, read between calls, for the block."""
        if threading.current_thread() is not threading.main_thread():
            yield  # Python delivers signals to the main thread only
            return

        def request_stop(signum, frame):
            self._stop_signal = self._stop_signal or signal.Signals(signum)

        previous = {number: signal.signal(number, request_stop) for number in STOP_SIGNALS}
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    @contextlib.contextmanager
    def _preemption_checks(self):
        """TensorFlow's PreemptionCheckpointHandler watches SIGTERM for the block.

        When any worker gets one, the handler agrees with every worker on a call after which
        they all save (:meth:`_checkpoint_unless_saved`) and stop (:meth:`_stop`): a save is
        collective. The handler restores its manager's newest checkpoint when it is built;
        :meth:`restore` has done that already, passing over damaged ones, so the handler gets
        a manager of its own over an empty checkpoint in a folder never written: it restores
        nothing, and it saves through ``save_fn``. SIGINT keeps its default (KeyboardInterrupt).
        """
        previous = signal.getsignal(signal.SIGTERM)  # the handler replaces it for good
        nothing = tf.train.CheckpointManager(
            tf.train.Checkpoint(), os.path.join(self.checkpoints.write_dir, "unused"), 1
        )
        self._preemption = tf.distribute.experimental.PreemptionCheckpointHandler(
            self._cluster_resolver,
            nothing,
            termination_config=tf.distribute.experimental.TerminationConfig(
                exit_fn=lambda: self._stop(signal.SIGTERM),
                save_fn=self._checkpoint_unless_saved,
            ),
        )
        try:
            yield
        finally:
            # Its threads end, and SIGTERM ends the process again, once training is over.
            self._preemption.__del__()
            self._preemption = None
            signal.signal(signal.SIGTERM, previous)

    def _stop_if_requested(self) -> None:
        """After a call or an epoch's end, both checkpointed (a call's end only if a
        checkpoint was due or a stop asked for): stops if a signal came. Under several
        workers the handler decides, and saves first where a worker got SIGTERM."""
        if self._preemption is not None:
            self._preemption.save_checkpoint_if_preempted()
        elif self._stop_signal is not None:
            self._stop(self._stop_signal)

    def _stop(self, stop_signal: signal.Signals) -> None:
        checkpoint = os.path.join(self.checkpoints.directory, f"ckpt-{self.step}")
        print(
            f"stopped by {stop_signal.name} after step {self.step}: checkpoint "
            f"{checkpoint} written; run the same command to go on",
            file=sys.stderr,
            flush=True,
        )
        raise Stopped(STOP_SIGNALS[stop_signal])

    def _train_epoch(self, epoch: int) -> None:
        epoch_steps = self.schedule.epoch_steps(epoch)
        step_in_epoch = self.step - epoch * self.schedule.steps_per_epoch
        scale = self.steps.progress_scale
        label = f"epoch {epoch + 1}/{self.schedule.num_epochs}"
        progress = progress_bar(
            epoch_steps * scale, self.steps.progress_names, self.verbose, label=label
        )
        if self.verbose:
            print(label, flush=True)
        self._segment_start = time.perf_counter()
        self._epoch_compiling = sum(self.steps.compile_seconds().values())
        with self.phases.phase("data"):
            self.steps.start_epoch(epoch, step_in_epoch)
        while step_in_epoch < epoch_steps:
            num_steps = self.schedule.call_steps(self.step, epoch_steps - step_in_epoch)
            call = self.steps.train(num_steps)
            self.step += len(call.running)
            for index, values in enumerate(call.running, start=step_in_epoch + 1):
                progress.update(index * scale, values)
            step_in_epoch += len(call.running)
            if not math.isfinite(call.loss):
                self._diverged(call.loss, epoch, step_in_epoch)
            self.log.add("steps", {"step": self.step, **call.point})
            # A stop lands on a call's end: calls end where Schedule.call_steps says from the
            # global step alone, so the resumed run's calls, and records, are the same.
            if step_in_epoch < epoch_steps:
                if self._checkpoint_due() or self._stop_signal is not None:
                    self._checkpoint()
                self._stop_if_requested()
        self._end_epoch(epoch)

    def _checkpoint_due(self) -> bool:
        return self.step % self.schedule.checkpoint_every == 0

    def _checkpoint(self) -> None:
        """Adds the epoch's seconds so far to epoch_seconds and saves, inside an epoch."""
        now = time.perf_counter()
        self.epoch_seconds.assign_add(now - self._segment_start)
        self._save()
        self._segment_start = now

    def _checkpoint_unless_saved(self) -> None:
        """:meth:`_checkpoint`, unless this step's checkpoint is written (an epoch's end)."""
        if self._saved_step != self.step:
            self._checkpoint()

    def _end_epoch(self, epoch: int) -> None:
        with self.phases.phase("evaluation"):
            statistics = self.steps.end_epoch(epoch)
        self.epoch_seconds.assign_add(time.perf_counter() - self._segment_start)
        compiling = max(0.0, sum(self.steps.compile_seconds().values()) - self._epoch_compiling)
        record = {
            "epoch": epoch + 1,
            "step": self.step,
            **statistics,
            # The epoch's seconds include its compiling (of this process: a resumed epoch's
            # compiling before the interruption is in its seconds, not here).
            "seconds": round(float(self.epoch_seconds), 3),
            "compile_seconds": round(compiling, 3),
        }
        self.log.add("epochs", record)
        self._report_records()
        summary = self.steps.epoch_summary(record)
        if self.verbose and summary:
            print(summary, flush=True)
        self.epoch_seconds.assign(0.0)
        self.epochs_done.assign(epoch + 1)
        self._save()

    def _report_records(self) -> None:
        if self.on_records is not None:
            self.on_records(self.log.records)

    def _diverged(self, loss: float, epoch: int, step_in_epoch: int) -> None:
        self._report_records()
        raise TrainingDiverged(
            f"loss became {loss} at step {self.step} (epoch {epoch + 1}, "
            f"{self.steps.step_name} {step_in_epoch}); kept the last good checkpoint "
            f"({self.checkpoints.describe_latest()}); lower the learning rate"
        )

    def _save(self) -> None:
        if not all_finite(self.steps.weights()):
            raise TrainingDiverged(
                f"weights became NaN/inf by step {self.step}; kept the last good "
                f"checkpoint ({self.checkpoints.describe_latest()}); lower the learning rate"
            )
        self.steps.before_checkpoint()
        self.log.before_checkpoint()
        self.global_step.assign(self.step)
        self.checkpoints.save(self.step)
        self._saved_step = self.step
        self.log.summarize()


def start_run(
    make_steps, schedule: Schedule, workdir: str, *, config: dict, strategy, verbose, fresh, metrics
) -> Controller:
    """The restored controller of a run of ``config`` in ``workdir``, what every task starts
    from: ``fresh`` first discards what the workdir holds, the config guard refuses another
    run's workdir (before ``make_steps()`` builds anything), every worker restores the same
    checkpoint, and ``metrics(records)`` is what metrics.json holds after each epoch."""
    chief = distribute.is_chief(strategy)
    if fresh and chief:
        workdir_lib.discard_run(workdir)
    check_same_config(workdir, config, write=chief)
    controller = Controller(
        make_steps(),
        schedule,
        workdir,
        chief=chief,
        cluster_resolver=distribute.multi_worker_resolver(strategy),
        verbose=verbose,
        on_records=lambda records: controller.log.write_json("metrics.json", metrics(records)),
    )
    controller.restore(fresh=fresh)
    check_workers_agree(strategy, controller.global_step)
    return controller
