"""``make bench``: how fast tfrnn trains and serves, side by side with PyTorch on the same CPU.

Workloads, on the shapes of their PyTorch peers (:mod:`tfrnn.bench.torch_peer`):

1. MNIST row LSTM training: 128 units, batch 128, Adam 1e-3, through the project's own loop
   (:func:`tfrnn.engine.training.fit`: XLA forward/backward, checkpointed, distributed-ready), on
   random images of the MNIST shape (throughput does not depend on pixel values). Two
   epochs of ``batches`` steps: the first is the warm-up (tracing, XLA compilation), the
   second is timed (its ``seconds`` in the history: every step, with the loop's per-step
   bookkeeping, plus one evaluation batch). One figure per recurrent path tfrnn offers:
   ``default`` (what ``mnist_model.build_model(Config())`` builds: ``tfrnn.layers.cells.RNN`` around
   ``LSTMCell``, a while loop), ``unrolled`` (``--unroll``, tutorial C2's static_rnn) and
   ``keras_lstm`` (``keras.layers.LSTM``, what a Keras user writes).
2. Echo training (:func:`tfrnn.tasks.echo.train.train_and_evaluate`, 100 windows per compiled
   call): seconds of one epoch over a 1,000,000-step series for (num_steps, state) (5, 4)
   and (10, 16), in the stateful-layer and explicit-state modes. Each run trains two
   epochs: the second is the epoch time; the first minus the second is the one-off cost of
   tracing and XLA compilation, reported on its own line (PyTorch has none).
3. Serving: the exported MNIST signature (:func:`tfrnn.tasks.mnist.serving.archive`, reloaded with
   ``tf.saved_model.load``): latency median and p99 for one image, images/s for 256.

With ``TORCH_PYTHON`` naming a Python that has torch, each training workload's PyTorch peer
runs in the same invocation, alternating with tfrnn's runs, ``--rounds`` times; every
figure is the median over rounds (the non-default MNIST paths run in the first round only).
The ratio is > 1 when tfrnn is ahead: tfrnn/torch for a rate (a metric ending in ``/s``),
torch/tfrnn for a time. Without ``TORCH_PYTHON`` the PyTorch column is skipped (torch and
ratio null). Writes ``results.json`` (a list of records {workload, metric, tfrnn, torch,
ratio, ...} with every run's figure and the load average before it) and
``environment.json`` (CPU, load, thread settings, versions) to ``--output_dir``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf
from absl import flags, logging

from tfrnn.data import mnist as mnist_data
from tfrnn.engine import training
from tfrnn.errors import UsageError
from tfrnn.serving.tf_serving import DEFAULT_SIGNATURE
from tfrnn.tasks.echo import config as echo_config
from tfrnn.tasks.echo import train as echo_train
from tfrnn.tasks.mnist import config as mnist_settings
from tfrnn.tasks.mnist import model as mnist_model
from tfrnn.tasks.mnist import serving as mnist_serving

PEER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_peer.py")
MNIST_PATHS = {
    "default": "default: RNN(LSTMCell) loop",
    "unrolled": "RNN(LSTMCell) unrolled",
    "keras_lstm": "keras.layers.LSTM",
}
ECHO_CONFIGS = ((5, 4), (10, 16))
ECHO_MODES = ("stateful", "explicit")
WORKLOADS = ("mnist", "echo", "serving")
SKIP_LINE = (
    "TORCH_PYTHON is not set: the PyTorch column is skipped (torch and ratio are null); "
    "set it to a Python with torch, e.g. TORCH_PYTHON=/path/to/venv/bin/python make bench"
)


@dataclasses.dataclass
class Options:
    """What to measure. The defaults are the benchmark; tests shrink them."""

    rounds: int = 3
    batches: int = 200  # timed MNIST steps (after as many warm-up steps)
    batch_size: int = 128
    units: int = 128
    series_length: int = 1_000_000
    mnist_paths: tuple = tuple(MNIST_PATHS)
    echo_configs: tuple = ECHO_CONFIGS
    echo_modes: tuple = ECHO_MODES
    workloads: tuple = WORKLOADS
    serving_calls: int = 300  # batch-1 requests timed; a tenth as many of batch 256
    output_dir: str = "runs/bench"


def higher_is_better(metric: str) -> bool:
    """Rates (``images/s``) are better high; times (seconds, ms) are better low."""
    return metric.endswith("/s")


def ratio(metric: str, tfrnn_value: float | None, torch_value: float | None) -> float | None:
    """> 1 when tfrnn is ahead: tfrnn/torch for a rate, torch/tfrnn for a time."""
    if tfrnn_value is None or torch_value is None:
        return None
    if higher_is_better(metric):
        return tfrnn_value / torch_value
    return torch_value / tfrnn_value


def make_record(workload, metric, tfrnn_runs, torch_runs=None, load=None, **extra) -> dict:
    """One line of results.json: medians over the runs, the ratio, and every run's figure."""
    tfrnn_value = statistics.median(tfrnn_runs)
    torch_value = statistics.median(torch_runs) if torch_runs else None
    return {
        "workload": workload,
        "metric": metric,
        "tfrnn": tfrnn_value,
        "torch": torch_value,
        "ratio": ratio(metric, tfrnn_value, torch_value),
        "tfrnn_runs": list(tfrnn_runs),
        "torch_runs": list(torch_runs) if torch_runs else None,
        "load_1min": load,
        **extra,
    }


def _keras_lstm_model(config: mnist_settings.Config) -> keras.Model:
    # What a Keras user writes: the default model with keras.layers.LSTM as its recurrent layer.
    size = mnist_data.IMAGE_SIZE
    images = keras.Input(shape=(size, size), dtype="float32", name="images")
    rows = keras.layers.Normalization(
        mean=mnist_model.PIXEL_MEAN, variance=mnist_model.PIXEL_STD**2, name="standardize"
    )(images)
    features = keras.layers.LSTM(config.units, name="rnn")(rows)
    logits = keras.layers.Dense(mnist_data.NUM_CLASSES, name="logits")(features)
    return keras.Model(images, logits, name="mnist_rows_keras_lstm")


def mnist_config(options: Options, path: str) -> mnist_settings.Config:
    """The benchmark's MNIST model: the default one at Adam 1e-3 (constant), batch, units."""
    return mnist_settings.config_for(
        units=options.units,
        batch_size=options.batch_size,
        learning_rate=1e-3,
        schedule="constant",
        unroll=path == "unrolled",
    )


def mnist_train_images_per_second(options: Options, path: str) -> float:
    """Images/s of the second of two epochs of ``options.batches`` steps of training.fit."""
    config = mnist_config(options, path)
    rng = np.random.default_rng(0)
    distinct = min(options.batches, 20)  # a few distinct batches, repeated: small memory
    size = mnist_data.IMAGE_SIZE
    images = rng.random((distinct, options.batch_size, size, size), dtype=np.float32)
    labels = rng.integers(0, mnist_data.NUM_CLASSES, (distinct, options.batch_size))
    batches = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int32))).repeat()
    build = _keras_lstm_model if path == "keras_lstm" else mnist_model.build_model
    task = training.Task(
        make_model=lambda: build(config),
        make_optimizer=lambda: keras.optimizers.Adam(config.learning_rate),
        per_example_loss=training.sparse_softmax_cross_entropy,
        train_batches=lambda epoch, skip: batches.skip(skip),
        eval_batches=lambda: batches.take(1),
        steps_per_epoch=options.batches,
        total_steps=2 * options.batches,
        global_batch_size=options.batch_size,
    )
    keras.utils.set_random_seed(0)
    with tempfile.TemporaryDirectory(prefix="tfrnn_bench_") as workdir:
        result = training.fit(
            task,
            workdir,
            {"bench": path, **dataclasses.asdict(config)},
            checkpoint_every=10**9,  # only the end-of-epoch checkpoints, outside the timing
            jit_compile=config.jit_compile,
            verbose=False,
        )
    seconds = result.history[1]["seconds"]
    if seconds <= 0:
        raise UsageError(f"--batches {options.batches} is too few steps to time")
    return options.batches * options.batch_size / seconds


def echo_epoch_seconds(options: Options, num_steps: int, state_size: int, mode: str):
    """(seconds of a steady epoch, first epoch's extra seconds: tracing + XLA compile)."""
    config = echo_config.EchoConfig(
        num_steps=num_steps,
        state_size=state_size,
        mode=mode,
        epochs=2,
        series_length=options.series_length,
    )
    with tempfile.TemporaryDirectory(prefix="tfrnn_bench_") as workdir:
        metrics = echo_train.train_and_evaluate(config, workdir, verbose=0)
    first, steady = metrics["epoch_seconds"][:2]
    return steady, max(first - steady, 0.0)


def serving_figures(options: Options) -> dict:
    """Latency (ms, median and p99) for one image and images/s for 256, exported signature."""
    model = mnist_model.build_model(mnist_config(options, "default"))
    rng = np.random.default_rng(0)
    size = mnist_data.IMAGE_SIZE
    with tempfile.TemporaryDirectory(prefix="tfrnn_bench_") as export_dir:
        mnist_serving.archive(model).write_out(export_dir, verbose=False)
        serve = tf.saved_model.load(export_dir).signatures[DEFAULT_SIGNATURE]

        def call_seconds(batch: int, calls: int) -> list[float]:
            rows = tf.constant(rng.random((batch, size, size), dtype=np.float32))
            for _ in range(max(calls // 10, 3)):  # warm-up
                serve(rows=rows)["classes"].numpy()
            seconds = []
            for _ in range(calls):
                start = time.perf_counter()
                serve(rows=rows)["classes"].numpy()
                seconds.append(time.perf_counter() - start)
            return seconds

        single = np.array(call_seconds(1, options.serving_calls)) * 1e3
        large_calls = max(options.serving_calls // 10, 3)
        large = call_seconds(256, large_calls)
    return {
        "latency_median_ms": float(np.median(single)),
        "latency_p99_ms": float(np.percentile(single, 99)),
        "batch256_images_per_second": 256 * large_calls / sum(large),
    }


def run_peer(torch_python: str, arguments: list[str]) -> dict:
    """Runs ``torch_peer.py arguments`` with ``torch_python``; its JSON result."""
    command = [torch_python, PEER, *arguments]
    try:
        finished = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as error:
        raise UsageError(f"TORCH_PYTHON={torch_python} cannot be run: {error}") from error
    if finished.returncode != 0:
        lines = finished.stderr.strip().splitlines() or ["(no output)"]
        raise UsageError(
            f"the PyTorch peer failed ({' '.join(command)}): {lines[-1]}; TORCH_PYTHON must "
            "name a Python with torch installed"
        )
    return json.loads(finished.stdout.strip().splitlines()[-1])


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _format(value) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def format_table(records: list[dict]) -> str:
    """A Markdown table of the records: workload, metric, tfrnn, PyTorch, ratio."""
    lines = [
        "| workload | metric | tfrnn | PyTorch | ratio (>1: tfrnn ahead) |",
        "|---|---|---|---|---|",
    ]
    for record in records:
        ratio_text = "-" if record["ratio"] is None else f"{record['ratio']:.2f}"
        lines.append(
            f"| {record['workload']} | {record['metric']} | {_format(record['tfrnn'])} | "
            f"{_format(record['torch'])} | {ratio_text} |"
        )
    return "\n".join(lines)


@dataclasses.dataclass
class Figures:
    """Every figure the rounds measured, one a round, listed by what was measured.

    tfrnn keys are ``("mnist", path)`` and ``("echo", num_steps, state_size, mode)``; the
    PyTorch peer's are ``("mnist",)`` and ``("echo", num_steps, state_size)``.
    """

    tfrnn: dict = dataclasses.field(default_factory=dict)
    load: dict = dataclasses.field(default_factory=dict)  # the 1-minute load before each
    compile_seconds: dict = dataclasses.field(default_factory=dict)  # echo's first-epoch extra
    torch: dict = dataclasses.field(default_factory=dict)
    torch_threads: set = dataclasses.field(default_factory=set)

    def measure(self, key: tuple, measurement, *args):
        """Notes the load, runs ``measurement(*args)`` and keeps its figure (the first item
        of a tuple); returns what the measurement returned."""
        self.load.setdefault(key, []).append(_load())
        result = measurement(*args)
        figure = result[0] if isinstance(result, tuple) else result
        self.tfrnn.setdefault(key, []).append(figure)
        return result

    def ask_peer(self, torch_python: str, key: tuple, arguments: list[str], field: str):
        """Runs the PyTorch peer for ``key`` and keeps its ``field``; returns that figure."""
        result = run_peer(torch_python, [key[0], *arguments])
        self.torch.setdefault(key, []).append(result[field])
        self.torch_threads.add(result["threads"])
        return result[field]


def _environment(options: Options, torch_python: str | None) -> dict:
    """What environment.json records at the start: machine, load, threads, versions, options."""
    return {
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "load_average_start": list(os.getloadavg()),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        # 0: TensorFlow's default, one thread per core.
        "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "torch_python": torch_python,
        "options": dataclasses.asdict(options),
    }


def _mnist_round(options: Options, torch_python, first: bool, figures: Figures, log) -> None:
    """tfrnn's MNIST paths (all in the first round, then the default only), the PyTorch peer
    right after the default."""
    for path in options.mnist_paths:
        if path != "default" and not first:
            continue  # the other paths: one run, for comparison with the default
        value = figures.measure(("mnist", path), mnist_train_images_per_second, options, path)
        log(f"tfrnn MNIST {MNIST_PATHS[path]}: {value:,.0f} images/s")
        if path == "default" and torch_python:
            arguments = ["--batches", str(options.batches), "--batch_size",
                         str(options.batch_size), "--units", str(options.units)]  # fmt: skip
            value = figures.ask_peer(torch_python, ("mnist",), arguments, "images_per_second")
            log(f"PyTorch MNIST: {value:,.0f} images/s")


def _echo_round(options: Options, torch_python, figures: Figures, log) -> None:
    """Each echo configuration: tfrnn in every mode, then the PyTorch peer."""
    for num_steps, state_size in options.echo_configs:
        for mode in options.echo_modes:
            key = ("echo", num_steps, state_size, mode)
            seconds, compile_seconds = figures.measure(
                key, echo_epoch_seconds, options, num_steps, state_size, mode
            )
            figures.compile_seconds.setdefault(key, []).append(compile_seconds)
            log(
                f"tfrnn echo ({num_steps}, {state_size}) {mode}: {seconds:.3f} s"
                f" an epoch (+{compile_seconds:.1f} s compile in the first)"
            )
        if torch_python:
            arguments = ["--num_steps", str(num_steps), "--state_size", str(state_size),
                         "--length", str(options.series_length)]  # fmt: skip
            key = ("echo", num_steps, state_size)
            seconds = figures.ask_peer(torch_python, key, arguments, "seconds")
            log(f"PyTorch echo ({num_steps}, {state_size}): {seconds:.3f} s an epoch")


def _training_records(options: Options, figures: Figures) -> list[dict]:
    """The MNIST records (one a path that ran), then the echo records (two a run: the epoch
    seconds and the first epoch's extra seconds), in the order of ``options``."""
    records = []
    for path in options.mnist_paths:
        key = ("mnist", path)
        if key in figures.tfrnn:
            workload = f"MNIST train, {MNIST_PATHS[path]}"
            records.append(
                make_record(workload, "images/s", figures.tfrnn[key],
                            figures.torch.get(("mnist",)), figures.load[key])
            )  # fmt: skip
    for num_steps, state_size in options.echo_configs:
        for mode in options.echo_modes:
            key = ("echo", num_steps, state_size, mode)
            if key not in figures.tfrnn:
                continue
            workload, load = f"echo ({num_steps}, {state_size}) {mode}", figures.load[key]
            torch_runs = figures.torch.get(("echo", num_steps, state_size))
            records += [
                make_record(workload, "epoch seconds", figures.tfrnn[key], torch_runs, load),
                make_record(workload, "first-epoch extra seconds (XLA compile)",
                            figures.compile_seconds[key], load=load),
            ]  # fmt: skip
    return records


def _serving_records(options: Options, log) -> list[dict]:
    """The serving figures (no PyTorch peer), measured once."""
    load = [_load()]
    figures = serving_figures(options)
    log(
        f"tfrnn serving: batch 1 {figures['latency_median_ms']:.2f} ms median, "
        f"{figures['latency_p99_ms']:.2f} ms p99; batch 256 "
        f"{figures['batch256_images_per_second']:,.0f} images/s"
    )
    return [
        make_record("serving, batch 1", "latency ms (median)", [figures["latency_median_ms"]],
                    load=load),
        make_record("serving, batch 1", "latency ms (p99)", [figures["latency_p99_ms"]],
                    load=load),
        make_record("serving, batch 256", "images/s",
                    [figures["batch256_images_per_second"]], load=load),
    ]  # fmt: skip


def _write_results(output_dir: str, records: list[dict], environment: dict) -> None:
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "results.json"), "w") as handle:
        json.dump(records, handle, indent=1)
    with open(os.path.join(output_dir, "environment.json"), "w") as handle:
        json.dump(environment, handle, indent=1)


def run(options: Options, torch_python: str | None = None, log=print) -> list[dict]:
    """Measures ``options.workloads``, writes results.json and environment.json; the records.

    The training workloads run ``options.rounds`` times, each tfrnn run followed by its
    PyTorch peer's when ``torch_python`` is given; serving runs once, at the end.
    """
    if torch_python is None:
        log(SKIP_LINE)
    environment = _environment(options, torch_python)
    figures = Figures()
    for round_index in range(options.rounds):
        prefix = f"round {round_index + 1}/{options.rounds}:"

        def log_round(line, prefix=prefix):
            log(f"{prefix} {line}")

        if "mnist" in options.workloads:
            _mnist_round(options, torch_python, round_index == 0, figures, log_round)
        if "echo" in options.workloads:
            _echo_round(options, torch_python, figures, log_round)
    records = _training_records(options, figures)
    if "serving" in options.workloads:
        records += _serving_records(options, log)
    environment["load_average_end"] = list(os.getloadavg())
    environment["torch_threads"] = sorted(figures.torch_threads) or None
    _write_results(options.output_dir, records, environment)
    log(format_table(records))
    log(
        f"{environment['cpus']} CPUs ({environment['cpu_model']}), load average "
        f"{environment['load_average_start'][0]:.2f} at the start, "
        f"{environment['load_average_end'][0]:.2f} at the end; PyTorch threads "
        f"{environment['torch_threads']}; results in {options.output_dir}/results.json"
    )
    return records


FLAGS = flags.FLAGS


def define_flags() -> None:
    # Defined only when run as a command: the experiments define flags of the same names
    # (series_length), and tests import both modules into one process.
    flags.DEFINE_integer("rounds", 3, "alternating tfrnn/PyTorch rounds; figures are medians")
    flags.DEFINE_integer("batches", 200, "timed MNIST training steps (after as many warm-up steps)")
    flags.DEFINE_integer("series_length", 1_000_000, "echo series length (steps an epoch)")
    flags.DEFINE_list("workloads", list(WORKLOADS), f"any of {', '.join(WORKLOADS)}")
    flags.DEFINE_list("mnist_paths", list(MNIST_PATHS), f"any of {', '.join(MNIST_PATHS)}")
    flags.DEFINE_string("output_dir", "runs/bench", "where results.json and environment.json go")


def main(argv):
    if not FLAGS["verbosity"].present:
        # TensorFlow logs every SavedModel asset at INFO; --verbosity=0 shows them again.
        logging.set_verbosity(logging.WARNING)
        # Every measurement builds a fresh model and loop, so TensorFlow's "retracing"
        # warnings are expected here and say nothing about the code measured.
        tf.get_logger().setLevel("ERROR")
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    for name in ("rounds", "batches"):
        if FLAGS[name].value <= 0:
            raise UsageError(f"--{name} must be positive, got {FLAGS[name].value}")
    for name, allowed in (("workloads", WORKLOADS), ("mnist_paths", MNIST_PATHS)):
        unknown = sorted(set(FLAGS[name].value) - set(allowed))
        if unknown:
            raise UsageError(f"--{name} must be among {', '.join(allowed)}; got {unknown}")
    options = Options(
        rounds=FLAGS.rounds,
        batches=FLAGS.batches,
        series_length=FLAGS.series_length,
        workloads=tuple(FLAGS.workloads),
        mnist_paths=tuple(FLAGS.mnist_paths),
        output_dir=FLAGS.output_dir,
    )
    if "echo" in options.workloads:
        for num_steps, state_size in options.echo_configs:
            echo_config.check_config(
                echo_config.EchoConfig(
                    num_steps=num_steps, state_size=state_size, series_length=FLAGS.series_length
                )
            )
    run(options, os.environ.get("TORCH_PYTHON") or None)
    sys.stdout.flush()
