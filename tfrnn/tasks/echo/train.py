"""Training and evaluation for the echo-dependency task; what the experiment commands call.

:func:`train_and_evaluate` is one run: a fresh series every epoch, cut into the tutorial's
windows, trained with one of the modes of :mod:`tfrnn.tasks.echo.tbptt` (Adagrad 0.1, batch 200). It
records the tutorial's curve (the mean loss of every 100 batches), writes
``metrics.json``, ``curve.png`` and ``model.keras`` (the stateless model with the trained
weights) to its workdir, and returns the metrics.

:func:`run_canonical` runs the tutorial's two configurations and :func:`run_styles` the
comparison of TF-style and true truncated BPTT; both print a table and write a summary and
a combined plot.

Every function takes an optional ``tf.distribute`` strategy and runs the same loop under it:
the batch of streams is split over the replicas as :mod:`tfrnn.tasks.echo.tbptt` describes (stream i
on replica i // (batch / replicas), for the whole epoch), and only the chief of a
multi-worker cluster writes files. There are no checkpoints: a run restarts from scratch.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import time

import keras
import numpy as np
import tensorflow as tf

from tfrnn.data.echo import (
    ECHO_RULE,
    epoch_rng,
    epoch_windows,
    expected_loss,
    expected_losses,
    generate_series,
)
from tfrnn.engine import distribute
from tfrnn.engine.training import write_json_atomically
from tfrnn.errors import UsageError
from tfrnn.layers.cells import CELL_KINDS
from tfrnn.tasks.echo import tbptt
from tfrnn.tasks.echo.model import stateless_copy

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
    if config.cell not in CELL_KINDS:
        raise UsageError(f"--cell must be one of {', '.join(CELL_KINDS)}, got {config.cell!r}")
    if config.mode not in tbptt.MODES:
        raise UsageError(f"--mode must be one of {', '.join(tbptt.MODES)}, got {config.mode!r}")
    windows = config.series_length // config.batch_size // config.num_steps
    if windows < REPORT_EVERY:
        raise UsageError(
            f"--series_length {config.series_length} gives {windows} windows an epoch with"
            f" --num_steps {config.num_steps} and batch {config.batch_size}; at least"
            f" {REPORT_EVERY} are needed (the loss is reported every {REPORT_EVERY})"
        )
    if not (config.learning_rate > 0 and math.isfinite(config.learning_rate)):
        raise UsageError(f"learning rate must be positive, got {config.learning_rate}")
    return config


def train_and_evaluate(
    config: EchoConfig,
    workdir: str,
    *,
    verbose: int = 1,
    strategy: tf.distribute.Strategy | None = None,
) -> dict:
    """Trains one configuration and writes its results to ``workdir``.

    Returns the metrics also written to ``workdir/metrics.json``: ``config``; ``curve``
    (mean loss of each run of 100 windows, in order, across epochs); ``final_loss`` (mean
    of the last 100 windows); ``last_epoch_loss`` (mean of the last epoch's curve, less
    noisy); ``expected_loss`` (see :attr:`EchoConfig.expected_loss`)
    and ``expected_losses`` (the three reference levels); ``epoch_seconds`` (wall time of
    each epoch's training, the first including compilation); ``seconds_per_epoch`` (median
    of the epochs after the first, or the first if there is only one).

    Under ``strategy`` the batch must split evenly over its replicas; on a worker other than
    the chief nothing is written.
    """
    check_config(config)
    strategy = strategy or tf.distribute.get_strategy()
    replica_batch_size = distribute.per_replica_batch_size(strategy, config.batch_size)
    chief = distribute.is_chief(strategy)
    if chief:
        os.makedirs(workdir, exist_ok=True)
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        # A stateful layer holds the state of its replica's rows: its batch is the replica's.
        model = tbptt.build_training_model(
            config.mode, config.cell, config.state_size, replica_batch_size
        )
        optimizer = keras.optimizers.Adagrad(config.learning_rate)
    run_windows = tbptt.make_window_runner(
        config.mode, model, optimizer, strategy=strategy, jit_compile=config.jit_compile
    )
    metrics = {
        "config": dataclasses.asdict(config),
        "curve": [],
        "final_loss": None,
        "expected_loss": config.expected_loss,
        "expected_losses": expected_losses(),
        "epoch_seconds": [],
    }
    for epoch in range(config.epochs):
        inputs, targets = epoch_windows(
            *_series(config, epoch), config.batch_size, config.num_steps
        )
        num_reports = len(inputs) // REPORT_EVERY
        progress = keras.utils.Progbar(
            num_reports * REPORT_EVERY, verbose=verbose, stateful_metrics=["loss"]
        )
        if verbose:
            print(f"epoch {epoch + 1}/{config.epochs}")
        carry = tbptt.start_epoch(config.mode, model, config.batch_size, config.num_steps, strategy)
        start = time.perf_counter()
        # Windows past the last full 100 are dropped, so every point of the curve is a
        # mean over exactly 100 windows, as in the tutorial.
        for report in range(num_reports):
            window_slice = slice(report * REPORT_EVERY, (report + 1) * REPORT_EVERY)
            # Runs of 100 windows, each replica given its own rows (all of them on one device).
            losses, carry = run_windows(
                distribute.distribute_rows(strategy, inputs[window_slice], axis=1),
                distribute.distribute_rows(strategy, targets[window_slice], axis=1),
                carry,
            )
            mean_loss = float(tf.reduce_mean(losses))
            if not math.isfinite(mean_loss):
                if chief:
                    write_json_atomically(os.path.join(workdir, "metrics.json"), metrics)
                raise UsageError(
                    f"the loss became {mean_loss} in epoch {epoch + 1}, windows"
                    f" {window_slice.start}-{window_slice.stop}; try a smaller learning rate"
                )
            metrics["curve"].append(mean_loss)
            progress.update((report + 1) * REPORT_EVERY, values=[("loss", mean_loss)])
        metrics["epoch_seconds"].append(time.perf_counter() - start)
    metrics["final_loss"] = metrics["curve"][-1]
    metrics["last_epoch_loss"] = float(np.mean(metrics["curve"][-num_reports:]))
    seconds = metrics["epoch_seconds"]
    metrics["seconds_per_epoch"] = statistics.median(seconds[1:] or seconds)
    if not chief:
        return metrics
    stateless_copy(model).save(os.path.join(workdir, "model.keras"))
    write_json_atomically(os.path.join(workdir, "metrics.json"), metrics)
    plot_curves({config.name: metrics}, os.path.join(workdir, "curve.png"), title=config.name)
    if verbose:
        print(
            f"{config.name}: final loss {metrics['final_loss']:.4f}"
            f" (expected {metrics['expected_loss']:.4f}),"
            f" {metrics['seconds_per_epoch']:.2f} s an epoch"
        )
    return metrics


def _series(config: EchoConfig, epoch: int):
    return generate_series(config.series_length, epoch_rng(config.seed, epoch))


def plot_curves(runs: dict, path: str, *, title: str = "", styles: dict | None = None) -> None:
    """Writes :func:`curves_figure` of ``runs`` to the PNG ``path``."""
    from matplotlib import pyplot

    figure = curves_figure(runs, title=title, styles=styles)
    figure.savefig(path)
    pyplot.close(figure)


def curves_figure(runs: dict, *, title: str = "", styles: dict | None = None):
    """Each run's curve (mean loss per 100 windows, against epochs) with the references.

    The three reference lines are the expected losses of learning nothing, the t-3
    dependency, and both; the y axis is clipped to [0.43, 0.70]. A curve of one point (one
    epoch of fewer than 200 windows) is drawn as a dot.

    Args:
      runs: label -> metrics (as returned by :func:`train_and_evaluate`).
      title: the plot's title.
      styles: label -> matplotlib keyword arguments for that run's line.

    Returns:
      The matplotlib Figure.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(7, 4), dpi=100)
    for label, metrics in runs.items():
        config = metrics["config"]
        windows_per_epoch = config["series_length"] // config["batch_size"] // config["num_steps"]
        # In epochs, so that runs with different window lengths line up.
        epochs = np.arange(1, len(metrics["curve"]) + 1) * REPORT_EVERY / windows_per_epoch
        style = {"marker": "o"} if len(epochs) == 1 else {}
        style.update((styles or {}).get(label, {}))
        axes.plot(epochs, metrics["curve"], label=label, **style)
    for level, (name, value) in zip(("-", "--", ":"), expected_losses().items(), strict=True):
        axes.axhline(value, color="grey", linestyle=level, linewidth=1)
        axes.annotate(
            f"{name} {value:.4f}",
            (0.0, value),
            xycoords=("axes fraction", "data"),
            xytext=(4, 2),
            textcoords="offset points",
            ha="left",
            fontsize=8,
            color="dimgrey",
        )
    # Rare spikes (Adagrad 0.1) would squash the curves: show the range that matters.
    axes.set_ylim(0.43, 0.70)
    axes.set_xlabel("epochs")
    axes.set_ylabel("mean loss of 100 windows (nats)")
    axes.set_title(title)
    axes.legend(fontsize=8, loc="upper right")
    figure.tight_layout()
    return figure


def _summary_record(config: EchoConfig, metrics: dict) -> dict:
    return {
        "num_steps": config.num_steps,
        "state_size": config.state_size,
        "cell": config.cell,
        "mode": config.mode,
        "epochs": config.epochs,
        "final_loss": metrics["final_loss"],
        "expected_loss": metrics["expected_loss"],
        "seconds_per_epoch": metrics["seconds_per_epoch"],
        "last_epoch_loss": metrics["last_epoch_loss"],
    }


def format_table(records: list[dict]) -> str:
    """A Markdown table of summary records."""
    header = (
        "| num_steps | state_size | cell | mode | epochs | final loss | expected |"
        " seconds/epoch |\n|---|---|---|---|---|---|---|---|"
    )
    rows = [
        f"| {r['num_steps']} | {r['state_size']} | {r['cell']} | {r['mode']} | {r['epochs']} |"
        f" {r['final_loss']:.4f} | {r['expected_loss']:.4f} | {r['seconds_per_epoch']:.2f} |"
        for r in records
    ]
    return "\n".join([header, *rows])


def _run_all(configs, root, *, verbose, strategy):
    records, runs = [], {}
    for config in configs:
        workdir = os.path.join(root, config.name)
        metrics = train_and_evaluate(config, workdir, verbose=verbose, strategy=strategy)
        records.append(_summary_record(config, metrics))
        runs[config.name] = metrics
    return records, runs


# The tutorial's two configurations: (num_steps, state_size, epochs). The epochs are what
# it takes on this task to settle at the claimed loss (see experiments/echo_deps/README.md).
CANONICAL = ((5, 4, 2), (10, 16, 10))


def run_canonical(
    base: EchoConfig, root: str, *, epochs: int | None = None, verbose=1, strategy=None
):
    """Runs (5, 4) and (10, 16) (each run's files in ``root/<config>``), prints the table,
    writes summary.json and summary.png to ``root``.

    ``base`` gives cell, mode, seed and series length; ``epochs`` overrides the per-config
    epochs of :data:`CANONICAL`. Returns the summary records.
    """
    configs = [
        check_config(
            dataclasses.replace(
                base, num_steps=num_steps, state_size=state_size, epochs=epochs or default
            )
        )
        for num_steps, state_size, default in CANONICAL
    ]
    records, runs = _run_all(configs, root, verbose=verbose, strategy=strategy)
    if not distribute.is_chief(strategy or tf.distribute.get_strategy()):
        return records
    write_json_atomically(os.path.join(root, "summary.json"), records)
    plot_curves(runs, os.path.join(root, "summary.png"), title="echo dependencies")
    print(format_table(records))
    return records


STYLES_N = (3, 5, 8)
# 4: the tutorial's small state, where the window limits what is learned; 16: a wide one.
STYLES_STATE_SIZES = (4, 16)
STYLES_EPOCHS = 10
# TF-style runs use explicit state: the same losses as the stateful layer, a little faster.
TF_STYLE_MODE = "explicit"


def run_styles(
    base: EchoConfig,
    root: str,
    output_dir: str,
    *,
    steps: tuple[int, ...] | None = None,
    state_sizes: tuple[int, ...] | None = None,
    epochs: int | None = None,
    verbose=1,
    strategy=None,
):
    """TF-style with n and 2n steps against true truncated BPTT with n, for n in ``steps``.

    For each state size, every run has the same cell, epochs and seed (so the same
    series); each run's files go to ``root/<config>``. Writes ``styles.json``, ``styles.md``
    (the table) and one ``styles_state<size>.png`` per state size to ``output_dir``; returns
    the records. ``steps`` and ``state_sizes`` default to :data:`STYLES_N` and
    :data:`STYLES_STATE_SIZES`.
    """
    steps = steps or STYLES_N
    state_sizes = state_sizes or STYLES_STATE_SIZES
    base = dataclasses.replace(base, epochs=epochs or STYLES_EPOCHS)
    records = []
    chief = distribute.is_chief(strategy or tf.distribute.get_strategy())
    if chief:
        os.makedirs(output_dir, exist_ok=True)
    for state_size in state_sizes:
        configs = []
        for n in steps:
            configs += [
                dataclasses.replace(base, state_size=state_size, num_steps=n, mode=TF_STYLE_MODE),
                dataclasses.replace(
                    base, state_size=state_size, num_steps=2 * n, mode=TF_STYLE_MODE
                ),
                dataclasses.replace(base, state_size=state_size, num_steps=n, mode="true"),
            ]
        state_records, runs = _run_all(
            [check_config(c) for c in configs], root, verbose=verbose, strategy=strategy
        )
        records += state_records
        if not chief:
            continue
        # One colour per n; the line says the style.
        line_styles = {}
        palette = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")
        for index in range(len(steps)):
            colour = palette[index % len(palette)]
            tf_n, tf_2n, true_n = configs[3 * index : 3 * index + 3]
            line_styles[tf_n.name] = {"color": colour, "linestyle": ":"}
            line_styles[tf_2n.name] = {"color": colour, "linestyle": "--"}
            line_styles[true_n.name] = {"color": colour, "linestyle": "-"}
        plot_curves(
            runs,
            os.path.join(output_dir, f"styles_state{state_size}.png"),
            title=f"state {state_size}: TF-style n (dotted), 2n (dashed), true n (solid)",
            styles=line_styles,
        )
    if not chief:
        return records
    write_json_atomically(os.path.join(output_dir, "styles.json"), records)
    table = format_styles_table(records)
    with open(os.path.join(output_dir, "styles.md"), "w") as file:
        file.write(table + "\n")
    print(table)
    return records


def format_styles_table(records: list[dict]) -> str:
    """One row per (state size, n): losses of TF-style n, TF-style 2n and true n, and costs.

    Each loss is the final loss (last 100 windows) and, in brackets, the mean over the
    last epoch, which is less noisy.
    """
    by_key = {(r["state_size"], r["num_steps"], r["mode"]): r for r in records}
    lines = [
        "| state | n | TF-style n | TF-style 2n | true n | true n − TF-style 2n |"
        " s/epoch TF n | s/epoch TF 2n | s/epoch true n |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def loss(record):
        return f"{record['final_loss']:.4f} ({record['last_epoch_loss']:.4f})"

    for state_size, n, mode in by_key:
        if mode != "true":
            continue
        tf_n = by_key[(state_size, n, TF_STYLE_MODE)]
        tf_2n = by_key[(state_size, 2 * n, TF_STYLE_MODE)]
        true_n = by_key[(state_size, n, "true")]
        gap = true_n["last_epoch_loss"] - tf_2n["last_epoch_loss"]
        lines.append(
            f"| {state_size} | {n} | {loss(tf_n)} | {loss(tf_2n)} | {loss(true_n)} |"
            f" {gap:+.4f} | {tf_n['seconds_per_epoch']:.2f} | {tf_2n['seconds_per_epoch']:.2f} |"
            f" {true_n['seconds_per_epoch']:.2f} |"
        )
    return "\n".join(lines)
