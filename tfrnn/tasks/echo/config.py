"""One echo-dependency run's configuration: :class:`EchoConfig`, its bounds and checks."""

from __future__ import annotations

import dataclasses
import math

from tfrnn.data.echo import ECHO_RULE, expected_loss
from tfrnn.errors import UsageError
from tfrnn.layers.cells import TUTORIAL_CELL_KINDS
from tfrnn.tasks.echo import tbptt

# The tutorial reports the mean loss of every 100 batches; final_loss is the last such mean.
REPORT_EVERY = 100


@dataclasses.dataclass(frozen=True)
class EchoConfig:
    """One run. Defaults are the tutorial's."""

    cell: str = "concat"
    state_size: int = 4
    num_steps: int = 5
    mode: str = "stateful"
    epochs: int = 1
    seed: int = 0
    series_length: int = 1_000_000
    batch_size: int = 200
    learning_rate: float = 0.1
    jit_compile: bool = True

    @property
    def name(self) -> str:
        """Directory name of the run: ``concat_steps5_state4_stateful``."""
        return f"{self.cell}_steps{self.num_steps}_state{self.state_size}_{self.mode}"

    @property
    def windows_per_epoch(self) -> int:
        """(batch, num_steps) windows of an epoch's series (the rest is dropped)."""
        return self.series_length // self.batch_size // self.num_steps

    @property
    def reports_per_epoch(self) -> int:
        """Points of an epoch's curve: runs of :data:`REPORT_EVERY` windows (the rest is
        dropped, so every point is a mean over exactly that many windows)."""
        return self.windows_per_epoch // REPORT_EVERY

    @property
    def expected_loss(self) -> float:
        """The tutorial's expected loss for this window: every lag shorter than num_steps.

        A window of num_steps inputs lets an error reach x_{t-lag} only if
        lag < num_steps (TF-style: the window's last outputs; true TBPTT: every output), so
        the tutorial expects those dependencies to be learned and no others. It is not a
        floor: the state carried forward across windows can hold older inputs, and the
        read-out learns to use them without any gradient through time (a wide state does).
        """
        lags = tuple(lag for lag, _ in ECHO_RULE.terms if lag < self.num_steps)
        return expected_loss(lags)


# Valid range of every integer setting: (lowest, highest). The flags' help quotes these.
BOUNDS = {
    "state_size": (1, 1024),
    "num_steps": (1, 200),
    "epochs": (1, 1000),
    "seed": (0, 2**31 - 1),
    "series_length": (1_000, 100_000_000),
    "batch_size": (1, 10_000),
}


def check_config(config: EchoConfig) -> EchoConfig:
    """Raises :class:`UsageError` (one line) for a setting out of range; returns config."""
    for field, (low, high) in BOUNDS.items():
        value = getattr(config, field)
        if not low <= value <= high:
            raise UsageError(f"--{field} must be in [{low}, {high}], got {value}")
    if config.cell not in TUTORIAL_CELL_KINDS:
        raise UsageError(
            f"--cell must be one of {', '.join(TUTORIAL_CELL_KINDS)}, got {config.cell!r}"
        )
    if config.mode not in tbptt.MODES:
        raise UsageError(f"--mode must be one of {', '.join(tbptt.MODES)}, got {config.mode!r}")
    windows = config.windows_per_epoch
    if windows < REPORT_EVERY:
        raise UsageError(
            f"--series_length {config.series_length} gives {windows} windows an epoch with"
            f" --num_steps {config.num_steps} and batch {config.batch_size}; at least"
            f" {REPORT_EVERY} are needed (the loss is reported every {REPORT_EVERY})"
        )
    if not (config.learning_rate > 0 and math.isfinite(config.learning_rate)):
        raise UsageError(f"learning rate must be positive, got {config.learning_rate}")
    return config
