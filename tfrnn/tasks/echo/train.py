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
multi-worker cluster writes files. A run is trained by the engine's
:class:`tfrnn.engine.loop.Controller` over :class:`tfrnn.tasks.echo.steps.EchoSteps`: it
checkpoints in ``workdir/checkpoints`` (every :data:`CHECKPOINT_EVERY` windows and each
epoch's end), and the same call after an interruption resumes there and ends as a run never
stopped.
"""

from __future__ import annotations

import dataclasses
import os
import statistics

import numpy as np
import tensorflow as tf

from tfrnn.data.echo import expected_losses
from tfrnn.engine import distribute, timing
from tfrnn.engine import workdir as workdir_lib
from tfrnn.engine.loop import Schedule, seed_and_make_deterministic, start_run
from tfrnn.engine.reporting import save_figure, write_json_atomically
from tfrnn.errors import UsageError
from tfrnn.tasks.echo.config import REPORT_EVERY, EchoConfig, check_config
from tfrnn.tasks.echo.model import stateless_copy
from tfrnn.tasks.echo.steps import EchoSteps

# Checkpoint every this many windows (and at each epoch's end): a multiple of REPORT_EVERY.
CHECKPOINT_EVERY = 1000


def train_and_evaluate(
    config: EchoConfig,
    workdir: str,
    *,
    verbose: int = 1,
    strategy: tf.distribute.Strategy | None = None,
    checkpoint_every: int = CHECKPOINT_EVERY,
    fresh: bool = False,
) -> dict:
    """Trains one configuration, resuming from ``workdir``'s last checkpoint, and writes its
    results there.

    Returns the metrics also written to ``workdir/metrics.json`` (:func:`run_metrics`).
    ``checkpoint_every``: windows between checkpoints inside an epoch, a multiple of
    :data:`tfrnn.tasks.echo.config.REPORT_EVERY`. Under ``strategy`` the batch must split
    evenly over its replicas; on a worker other than the chief nothing is written. The chief
    holds ``workdir``'s lock throughout (:func:`tfrnn.engine.workdir.hold`); ``fresh``: start
    from step 0, discarding the workdir's checkpoints.
    """
    check_config(config)
    if checkpoint_every <= 0 or checkpoint_every % REPORT_EVERY:
        raise UsageError(
            f"--checkpoint_every must be a positive multiple of {REPORT_EVERY} windows,"
            f" got {checkpoint_every}"
        )
    strategy = strategy or tf.distribute.get_strategy()
    distribute.per_replica_batch_size(strategy, config.batch_size)
    chief = distribute.is_chief(strategy)
    with workdir_lib.hold(workdir, chief=chief):
        return _train_and_write(config, workdir, verbose, strategy, checkpoint_every, fresh)


def _train_and_write(config, workdir, verbose, strategy, checkpoint_every, fresh) -> dict:
    """:func:`train_and_evaluate`'s run, under the workdir's lock."""
    chief = distribute.is_chief(strategy)
    seed_and_make_deterministic(config.seed)
    runs = config.reports_per_epoch
    controller = start_run(
        lambda: EchoSteps(config, strategy),
        Schedule(runs, config.epochs * runs, checkpoint_every // REPORT_EVERY, 1),
        workdir,
        config={"task": "echo", **dataclasses.asdict(config)},
        strategy=strategy,
        verbose=bool(verbose),
        fresh=fresh,
        metrics=lambda records: run_metrics(config, records),
    )
    controller.train()
    metrics = run_metrics(config, controller.log.records)
    if chief:
        with timing.current().phase("save and export"):
            _write_results(controller.steps.model, config, metrics, workdir, verbose)
    return metrics


def run_metrics(config: EchoConfig, records: dict) -> dict:
    """metrics.json of a run from its records (:class:`tfrnn.engine.reporting.RunLog`).

    ``config``; ``curve`` (mean loss of each run of 100 windows, in order, across epochs);
    ``final_loss`` (mean of the last 100 windows); ``expected_loss`` (see
    :attr:`EchoConfig.expected_loss`) and ``expected_losses`` (the three reference levels);
    ``epoch_seconds`` (wall time of each epoch's training, the first including compilation);
    once an epoch is done, ``last_epoch_loss`` (mean of the last epoch's curve, less noisy)
    and ``seconds_per_epoch`` (median of the epochs after the first, or the first if there
    is only one).
    """
    curve = [point["train_loss"] for point in records["steps"]]
    seconds = [record["seconds"] for record in records["epochs"]]
    metrics = {
        "config": dataclasses.asdict(config),
        "curve": curve,
        "final_loss": curve[-1] if curve else None,
        "expected_loss": config.expected_loss,
        "expected_losses": expected_losses(),
        "epoch_seconds": seconds,
    }
    if seconds:
        metrics["last_epoch_loss"] = float(np.mean(curve[-config.reports_per_epoch :]))
        metrics["seconds_per_epoch"] = statistics.median(seconds[1:] or seconds)
    return metrics


def _write_results(model, config: EchoConfig, metrics: dict, workdir: str, verbose) -> None:
    workdir_lib.save_model(stateless_copy(model), workdir)
    plot_curves({config.name: metrics}, os.path.join(workdir, "curve.png"), title=config.name)
    if verbose:
        print(
            f"{config.name}: final loss {metrics['final_loss']:.4f}"
            f" (expected {metrics['expected_loss']:.4f}),"
            f" {metrics['seconds_per_epoch']:.2f} s an epoch"
        )


# The loss range the echo plots show: the three reference levels with room around them.
# Rare spikes (Adagrad 0.1) would squash the curves; a point outside is marked at the edge.
LOSS_RANGE = (0.43, 0.70)


def plot_curves(runs: dict, path: str, *, title: str = "") -> None:
    """Writes :func:`curves_figure` of ``runs`` to the PNG ``path``."""
    save_figure(curves_figure(runs, title=title), path)


def curves_figure(runs: dict, *, title: str = ""):
    """Each run's curve (mean loss per 100 windows, against epochs) with the references.

    The three reference lines are the expected losses of learning nothing, the t-3
    dependency, and both, named beside the right edge. The y axis shows
    :data:`LOSS_RANGE`; points outside it are marked on its edge (:func:`_plot_curve`).
    A legend, below the plot, names the runs if there are several (the title names one).

    Args:
      runs: label -> metrics (as returned by :func:`train_and_evaluate`).
      title: the plot's title.

    Returns:
      The matplotlib Figure.
    """
    figure, axes = _pyplot().subplots(figsize=(7, 4), dpi=100, layout="constrained")
    curves = [_plot_curve(axes, metrics, label=label) for label, metrics in runs.items()]
    _draw_levels(axes, named=True)
    _show_loss_range(axes, curves)
    axes.set_ylabel("mean loss of 100 windows (nats)")
    axes.set_title(title)
    if len(runs) > 1:
        figure.legend(loc="outside lower center", ncol=min(len(runs), 3), fontsize=8)
    return figure


# How styles_figure draws each truncation style, in the words of the styles notebook.
STYLE_LINES = {
    "TF-style n": {"color": "tab:blue", "linestyle": ":"},
    "TF-style 2n": {"color": "tab:orange", "linestyle": "--"},
    "true n": {"color": "tab:green", "linestyle": "-"},
}


def plot_styles(panels: dict, path: str, *, title: str = "") -> None:
    """Writes :func:`styles_figure` of ``panels`` to the PNG ``path``."""
    save_figure(styles_figure(panels, title=title), path)


def styles_figure(panels: dict, *, title: str = ""):
    """One panel per n, each with the curves of TF-style n, TF-style 2n and true n.

    Args:
      panels: n -> {style: metrics}, the styles the keys of :data:`STYLE_LINES`.
      title: the figure's title.

    Returns:
      The matplotlib Figure: the panels share the y axis (:data:`LOSS_RANGE`, points
      outside marked on its edge), the reference levels are named beside the last panel,
      and one legend below names the styles.
    """
    figure, panel_axes = _pyplot().subplots(
        1,
        len(panels),
        figsize=(3.4 * len(panels) + 1.2, 4),
        dpi=100,
        sharey=True,
        layout="constrained",
        squeeze=False,
    )
    for index, (axes, (n, runs)) in enumerate(zip(panel_axes[0], panels.items(), strict=True)):
        curves = [
            _plot_curve(axes, metrics, label=style, **STYLE_LINES[style])
            for style, metrics in runs.items()
        ]
        _draw_levels(axes, named=index == len(panels) - 1)
        _show_loss_range(axes, curves)
        axes.set_title(f"n = {n}", loc="left")
    panel_axes[0, 0].set_ylabel("mean loss of 100 windows (nats)")
    handles, labels = panel_axes[0, 0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=9)
    figure.suptitle(title)
    return figure


def _pyplot():
    """matplotlib's pyplot, drawing to files (the Agg backend), also where no display is."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def _plot_curve(axes, metrics: dict, **style) -> np.ndarray:
    """One run's curve against epochs, so that runs with other window lengths line up.

    A curve of one point (one epoch of fewer than 200 windows) is drawn as a dot. Points
    outside :data:`LOSS_RANGE` are also drawn on its edge as triangles pointing out of it
    (drawn over the axes' edge, unclipped). Returns the curve's values.
    """
    windows_per_epoch = EchoConfig(**metrics["config"]).windows_per_epoch
    epochs = np.arange(1, len(metrics["curve"]) + 1) * REPORT_EVERY / windows_per_epoch
    curve = np.asarray(metrics["curve"], dtype=float)
    (line,) = axes.plot(epochs, curve, **({"marker": "o"} if len(curve) == 1 else {}), **style)
    for outside, edge, marker in (
        (curve > LOSS_RANGE[1], LOSS_RANGE[1], "^"),
        (curve < LOSS_RANGE[0], LOSS_RANGE[0], "v"),
    ):
        if outside.any():
            axes.plot(
                epochs[outside],
                np.full(outside.sum(), edge),
                linestyle="none",
                marker=marker,
                markersize=6,
                color=line.get_color(),
                clip_on=False,
                zorder=3,
            )
    return curve


def _show_loss_range(axes, curves: list[np.ndarray]) -> None:
    """Sets the y range to :data:`LOSS_RANGE` and the x label; if any of ``curves`` leaves
    the range, says above the plot how far the points marked on its edges go."""
    low, high = LOSS_RANGE
    values = np.concatenate(curves)
    notes = []
    if np.any(values > high):
        notes.append(f"▲ above {high:.2f}, up to {values.max():.2f}")
    if np.any(values < low):
        notes.append(f"▼ below {low:.2f}, down to {values.min():.2f}")
    if notes:
        axes.annotate(
            "; ".join(notes),
            (1.0, 1.0),
            xycoords="axes fraction",
            xytext=(0, 3),
            textcoords="offset points",
            ha="right",
            va="bottom",
            fontsize=8,
            color="dimgrey",
        )
    axes.set_ylim(low, high)
    axes.set_xlabel("epochs")


def _draw_levels(axes, *, named: bool) -> None:
    """The three expected-loss levels as grey lines; ``named``: their names and values
    beside the right edge, outside the plot, where no curve runs."""
    for level, (name, value) in zip(("-", "--", ":"), expected_losses().items(), strict=True):
        axes.axhline(value, color="grey", linestyle=level, linewidth=1)
        if named:
            axes.annotate(
                f"{name}\n{value:.4f}",
                (1.0, value),
                xycoords=("axes fraction", "data"),
                xytext=(4, 0),
                textcoords="offset points",
                ha="left",
                va="center",
                fontsize=8,
                color="dimgrey",
            )


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


def _run_all(configs, root, *, verbose, strategy, fresh=False):
    records, runs = [], {}
    for config in configs:
        workdir = os.path.join(root, config.name)
        metrics = train_and_evaluate(
            config, workdir, verbose=verbose, strategy=strategy, fresh=fresh
        )
        records.append(_summary_record(config, metrics))
        runs[config.name] = metrics
    return records, runs


# The tutorial's two configurations: (num_steps, state_size, epochs). The epochs are what
# it takes on this task to settle at the claimed loss (see experiments/echo_deps/README.md).
CANONICAL = ((5, 4, 2), (10, 16, 10))


def run_canonical(
    base: EchoConfig,
    root: str,
    *,
    epochs: int | None = None,
    verbose=1,
    strategy=None,
    fresh: bool = False,
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
    records, runs = _run_all(configs, root, verbose=verbose, strategy=strategy, fresh=fresh)
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
    fresh: bool = False,
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
        sized = dataclasses.replace(base, state_size=state_size)
        # n -> {style: config}, the styles in the words of STYLE_LINES.
        styles = {
            n: {
                "TF-style n": dataclasses.replace(sized, num_steps=n, mode=TF_STYLE_MODE),
                "TF-style 2n": dataclasses.replace(sized, num_steps=2 * n, mode=TF_STYLE_MODE),
                "true n": dataclasses.replace(sized, num_steps=n, mode="true"),
            }
            for n in steps
        }
        state_records, runs = _run_all(
            [check_config(c) for by_style in styles.values() for c in by_style.values()],
            root,
            verbose=verbose,
            strategy=strategy,
            fresh=fresh,
        )
        records += state_records
        if not chief:
            continue
        plot_styles(
            {
                n: {style: runs[config.name] for style, config in by_style.items()}
                for n, by_style in styles.items()
            },
            os.path.join(output_dir, f"styles_state{state_size}.png"),
            title=f"state {state_size}: TF-style n and 2n against true n",
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
