"""What a run reports: the progress bar, TensorBoard scalars, metrics.json and plots.

:class:`RunLog` holds a run's records, ``{"epochs": [...], "steps": [...]}``: one record per
finished epoch (at least its ``epoch``, last global ``step`` and ``seconds``) and one
training point per training call (its global ``step`` and the training statistics since the
previous point). The records travel in the checkpoint (:attr:`RunLog.variable`), so a
resumed run keeps every point. Only the chief writes files (TensorBoard, metrics.json,
plots); every worker keeps the records.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

import keras
import tensorflow as tf
from matplotlib import ticker
from tensorflow.core.framework import summary_pb2

from tfrnn.errors import UsageError


def write_json_atomically(path: str, content) -> None:
    """Writes ``content`` as indented JSON to ``path``, all or nothing."""
    # A SIGKILL or a full disk mid-write must not leave a truncated file behind: write,
    # then rename; a failed write removes its temporary file and leaves ``path`` as it was.
    temporary = path + ".tmp"
    try:
        with open(temporary, "w") as handle:
            json.dump(content, handle, indent=2)
            handle.write("\n")
        os.replace(temporary, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise UsageError(
            f"cannot write {path} ({error.strerror or error}); it is as it was before: free"
            " space or fix permissions and run the same command again"
        ) from None


# Where stdout is not a terminal (a log file, a pipe, a batch scheduler), one plain line every
# this many progress units (steps; windows for echo) and at the epoch's end.
PLAIN_LOG_EVERY = 100


def progress_bar(steps: int, names: tuple[str, ...], verbose: bool, *, label: str = ""):
    """Progress through an epoch of ``steps`` units showing the running values ``names``.

    On a terminal, Keras's live bar; otherwise :class:`PlainProgress` (a log gets lines, not
    bar redraws full of carriage returns and escape codes). Silent unless ``verbose``.
    ``label`` starts each plain line (e.g. ``epoch 2/11``).
    """
    if verbose and not sys.stdout.isatty():
        return PlainProgress(steps, names, label)
    return keras.utils.Progbar(steps, stateful_metrics=list(names), verbose=1 if verbose else 0)


class PlainProgress:
    """Keras Progbar's ``update(current, values)``, printed as one plain line each time
    ``current`` passes a multiple of :data:`PLAIN_LOG_EVERY` and when it reaches ``target``."""

    def __init__(self, target: int, names: tuple[str, ...], label: str = ""):
        self.target, self.names, self.label = target, names, label
        self._printed = 0

    def update(self, current: int, values=None) -> None:
        if current // PLAIN_LOG_EVERY == self._printed // PLAIN_LOG_EVERY and current < self.target:
            return
        self._printed = current
        shown = " ".join(f"{name} {float(value):.4f}" for name, value in values or ())
        prefix = f"{self.label} " if self.label else ""
        print(f"{prefix}{current}/{self.target} {shown}".rstrip(), flush=True)


# TensorBoard's scalar plugin metadata, written by hand: tf.summary.scalar needs the
# tensorboard package, which only the viewer needs (requirements-dev.txt); the event files
# are the same.
_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
).SerializeToString()


def write_scalar(name: str, value: float, step: int) -> None:
    """Writes a TensorBoard scalar to the default summary writer."""
    tf.summary.write(name, tf.constant(value, tf.float32), step=step, metadata=_SCALAR_METADATA)


# TensorBoard tag of each record field a record has; every scalar's step is the global
# training step.
TAGS = {
    "steps": {"train_loss": "train/running_loss", "train_accuracy": "train/running_accuracy"},
    "epochs": {
        "train_loss": "train/loss",
        "train_accuracy": "train/accuracy",
        "test_loss": "test/loss",
        "test_accuracy": "test/accuracy",
        "seconds": "seconds",
    },
}


class RunLog:
    """A run's records (metrics.json's ``epochs`` and ``steps``) and their TensorBoard copy.

    A record goes to TensorBoard once a checkpoint holds it (:meth:`summarize`), so the steps
    a resumed run redoes are not written twice; the event file is created with the first
    scalar, so a run with nothing left to train writes none.
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
        for kind, tags in TAGS.items():
            for record in self.records[kind][self._summarized[kind] :]:
                self._write_record(record, tags)
            self._summarized[kind] = len(self.records[kind])
        if self._writer is not None:
            self._writer.flush()

    def _write_record(self, record: dict, tags: dict) -> None:
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.workdir, "tensorboard"))
        with self._writer.as_default():
            for key, tag in tags.items():
                if key in record:
                    write_scalar(tag, record[key], record["step"])

    def write_json(self, name: str, content) -> None:
        """Writes ``content`` to ``workdir/name`` (the chief's only)."""
        if self.chief:
            write_json_atomically(os.path.join(self.workdir, name), content)


def curves_figure(log: dict, title: str = ""):
    """A matplotlib Figure of a classifier run's loss and accuracy against the global step.

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


def save_figure(figure, path: str, dpi: int = 100) -> None:
    """Writes a matplotlib ``figure`` as a PNG and frees it."""
    import matplotlib.pyplot as plt

    figure.savefig(path, dpi=dpi)
    plt.close(figure)
