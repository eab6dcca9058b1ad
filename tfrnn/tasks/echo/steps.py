"""Echo's training step for the engine: runs of windows through the compiled TBPTT runner.

One engine step is one run of :data:`tfrnn.tasks.echo.config.REPORT_EVERY` windows,
trained by one call of :func:`tfrnn.tasks.echo.tbptt.make_window_runner` (one XLA program on
the default strategy), and gives one point of the tutorial's curve: the mean loss of those
windows. Its data position is (epoch, run): an epoch's series is drawn from
``epoch_rng(seed, epoch)``, so run k of epoch e is the same windows in every process. Its
checkpoint holds the weights, the optimiser, the partial epoch's loss sum and the state the
streams carry into the next window (:func:`tfrnn.tasks.echo.tbptt.carry_arrays`), so a
resumed run continues the same streams from the same state.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from tfrnn.data.echo import epoch_rng, epoch_windows, generate_series
from tfrnn.engine import distribute, timing
from tfrnn.engine.loop import Call
from tfrnn.tasks.echo import tbptt
from tfrnn.tasks.echo.config import REPORT_EVERY, EchoConfig


def epoch_series(config: EchoConfig, epoch: int):
    """Epoch ``epoch``'s (inputs, targets) series, each (series_length,)."""
    return generate_series(config.series_length, epoch_rng(config.seed, epoch))


class EchoSteps:
    """The :class:`tfrnn.engine.loop.Steps` of one echo run under ``strategy``."""

    step_name = f"run of {REPORT_EVERY} windows"
    progress_names = ("loss",)
    progress_scale = REPORT_EVERY  # the progress bar counts windows

    def __init__(self, config: EchoConfig, strategy: tf.distribute.Strategy):
        self.config, self.strategy = config, strategy
        replica_batch_size = distribute.per_replica_batch_size(strategy, config.batch_size)
        with strategy.scope():
            # A stateful layer holds the state of its replica's rows: its batch is the replica's.
            self.model = tbptt.build_training_model(
                config.mode, config.cell, config.state_size, replica_batch_size
            )
            self.optimizer = keras.optimizers.Adagrad(config.learning_rate)
        self.run_windows = tbptt.make_window_runner(
            config.mode,
            self.model,
            self.optimizer,
            strategy=strategy,
            jit_compile=config.jit_compile,
        )
        # Plain variables, outside the strategy: every stream's carried state, in stream order.
        self.carry = self._zero_carry()
        self.carry_variables = [
            tf.Variable(array, trainable=False, name=f"carry_{index}")
            for index, array in enumerate(self._carry_arrays())
        ]
        # The partial epoch's sum of run losses and its number of runs: counted in Python
        # (an eager variable update costs about 0.1 ms) and held by these variables at a save.
        self.loss_sum, self.runs = 0.0, 0
        self.loss_sum_variable = tf.Variable(
            0.0, dtype=tf.float64, trainable=False, name="epoch_loss_sum"
        )
        self.runs_variable = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch_runs")
        self.windows = self.position = None
        self.meter = timing.CompileMeter(self.run_windows)

    def checkpoint_items(self) -> dict:
        return dict(
            model_variables=list(self.model.trainable_variables),
            optimizer=self.optimizer,
            carry=list(self.carry_variables),
            loss_sum=self.loss_sum_variable,
            runs=self.runs_variable,
        )

    def weights(self) -> list:
        return self.model.trainable_variables

    def before_checkpoint(self) -> None:
        for variable, array in zip(self.carry_variables, self._carry_arrays(), strict=True):
            variable.assign(array)
        self.loss_sum_variable.assign(self.loss_sum)
        self.runs_variable.assign(self.runs)

    def start_epoch(self, epoch: int, skip: int) -> None:
        config = self.config
        self.windows = epoch_windows(
            *epoch_series(config, epoch), config.batch_size, config.num_steps
        )
        self.position = skip
        if skip == 0:
            self.carry = self._zero_carry()
        else:  # resumed mid-epoch: the streams go on from the checkpoint's state and sums
            self.loss_sum, self.runs = float(self.loss_sum_variable), int(self.runs_variable)
            arrays = [variable.numpy() for variable in self.carry_variables]
            self.carry = tbptt.carry_from_arrays(config.mode, self.model, arrays, self.strategy)

    def train(self, num_steps: int) -> Call:
        running, mean_loss = [], float("nan")
        for _ in range(num_steps):
            mean_loss = self._train_run()
            running.append([("loss", mean_loss)])
            if not math.isfinite(mean_loss):
                break
        # One point per call: with one run a call (the echo schedule), the tutorial's curve.
        points = [values[0][1] for values in running]
        return Call(
            loss=mean_loss, running=running, point={"train_loss": sum(points) / len(points)}
        )

    def compile_seconds(self) -> dict:
        return {"training": self.meter.compile_seconds(), "evaluation": 0.0}

    def end_epoch(self, epoch: int) -> dict:
        train_loss = self.loss_sum / self.runs
        self.loss_sum, self.runs = 0.0, 0
        return {"train_loss": train_loss}

    def epoch_summary(self, record: dict) -> None:
        return None  # the progress bar shows the epoch; the run ends with one summary line

    def _train_run(self) -> float:
        """Trains run ``position`` of the epoch's windows; returns their mean loss."""
        inputs, targets = self.windows
        run = slice(self.position * REPORT_EVERY, (self.position + 1) * REPORT_EVERY)
        # Each replica given its own rows (all of them on one device).
        with self.meter.call(1):
            losses, self.carry = self.run_windows(
                distribute.distribute_rows(self.strategy, inputs[run], axis=1),
                distribute.distribute_rows(self.strategy, targets[run], axis=1),
                self.carry,
            )
        self.position += 1
        mean_loss = float(tf.reduce_mean(losses))
        self.loss_sum += mean_loss
        self.runs += 1
        return mean_loss

    def _zero_carry(self):
        config = self.config
        return tbptt.start_epoch(
            config.mode, self.model, config.batch_size, config.num_steps, self.strategy
        )

    def _carry_arrays(self) -> list:
        return tbptt.carry_arrays(self.config.mode, self.model, self.carry, self.strategy)
