"""``make bench``: how fast tfrnn trains and serves, beside PyTorch and the tutorials' TF1 code.

Workloads, on the shapes of their peers (:mod:`tfrnn.bench.torch_peer`, the TF1 programs):

1. MNIST row LSTM training: 128 units, batch 128, Adam 1e-3, through the project's own loop
   (:func:`tfrnn.engine.training.fit`: XLA forward/backward, checkpointed, distributed-ready), on
   random images of the MNIST shape (throughput does not depend on pixel values). Two
   epochs of ``batches`` steps: the first is the warm-up (tracing, XLA compilation), the
   second is timed (its ``seconds`` in the history: every step, with the loop's per-step
   bookkeeping, plus one evaluation batch). One figure per recurrent path tfrnn offers:
   ``default`` (what ``mnist_model.build_model(Config())`` builds: ``tfrnn.layers.cells.RNN`` around
   ``LSTMCell``, a while loop), ``unrolled`` (``--unroll``, tutorial C2's static_rnn) and
   ``keras_lstm`` (``keras.layers.LSTM``, what a Keras user writes); and ``matmuls``, a
   ceiling: a step of nothing but the default path's matmuls
   (:func:`matmuls_images_per_second`).
2. Echo training (the echo command, ``python -m tfrnn.experiments.echo_deps``, in a fresh
   process as a user starts it; 100 windows per compiled call): seconds of one epoch over a
   1,000,000-step series for (num_steps, state) (5, 4) and (10, 16), in the stateful-layer
   and explicit-state modes, from one two-epoch run: a steady epoch (the second), and the
   first, which is a one-epoch run's epoch with its tracing and XLA compilation, or the
   compiled program loaded from ``--compile_cache`` when an earlier run left it there (the
   first round fills an empty cache), each against the peers' epoch.
3. The tutorials' presets C1, C2, C3: ``options.preset_epochs`` (2) whole epochs of
   ``--preset``'s training (:func:`tfrnn.tasks.mnist.train.make_task`: its model, batch,
   optimiser, data pipeline and loop) on ``--mnist_dir``'s IDX files, else on a synthetic
   MNIST-shaped set of the tutorials' size (55,000 training images after the 5,000 held out;
   timing does not depend on pixel values). Records: the last epoch's seconds (steady) and
   the first epoch's (for tfrnn with tracing and XLA compilation). An epoch's seconds are its
   training steps and one pass over the 10,000 test images that ends it, on both sides.
4. Serving: the exported MNIST signature (:func:`tfrnn.tasks.mnist.serving.archive`, reloaded with
   ``tf.saved_model.load``): latency median and p99 for one image, images/s for 256.

Two peers, each run as its own process after the tfrnn run it matches, ``--rounds`` times,
alternating; every figure is the median over rounds (the non-default MNIST paths run in the
first round only):

* ``TORCH_PYTHON``, a Python that has torch: the PyTorch peer of MNIST and echo. ``ratio``
  is tfrnn against it.
* ``TF1_PYTHON``, a Python that has tensorflow and tf_keras: the tutorials' own TF1 programs
  (``experiments/tf1/tf1_graphs.py``, ``tf.compat.v1`` graphs and the legacy cells), for the
  presets (its ``mnist-epochs`` command: the same epochs, batch and steps) and echo (the
  hand-built graph of tutorial A, one epoch). ``tf1_ratio`` is tfrnn against it.

A ratio is > 1 when tfrnn is ahead: tfrnn/peer for a rate (a metric ending in ``/s``),
peer/tfrnn for a time. Without a peer's variable its column is skipped (its figure and ratio
null), with one line saying so. Writes ``results.json`` (a list of records {workload, metric,
tfrnn, torch, ratio, tf1, tf1_ratio, ...} with every run's figure and the load average
before it) and ``environment.json`` (CPU, load, thread settings, versions) to
``--output_dir``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
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
from tfrnn.engine import compile_cache, cpu, training
from tfrnn.engine.loop import seed_and_make_deterministic
from tfrnn.errors import UsageError
from tfrnn.serving.tf_serving import DEFAULT_SIGNATURE
from tfrnn.tasks.echo import config as echo_config
from tfrnn.tasks.echo import train as echo_train
from tfrnn.tasks.mnist import config as mnist_settings
from tfrnn.tasks.mnist import model as mnist_model
from tfrnn.tasks.mnist import serving as mnist_serving
from tfrnn.tasks.mnist import train as mnist_train

TORCH_PEER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_peer.py")
# The tutorials' TF1 programs live in the checkout, beside the package.
TF1_PEER = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "experiments",
    "tf1",
    "tf1_graphs.py",
)
MNIST_PATHS = {
    "default": "default: RNN(LSTMCell) loop",
    "unrolled": "RNN(LSTMCell) unrolled",
    "keras_lstm": "keras.layers.LSTM",
    "matmuls": "the default step's matmuls alone (a ceiling)",
}
ECHO_CONFIGS = ((5, 4), (10, 16))
ECHO_MODES = ("stateful", "explicit")
PRESETS = tuple(mnist_settings.PRESETS)
WORKLOADS = ("mnist", "echo", "presets", "commands", "serving")
# The whole commands timed launch to exit by the "commands" workload: each preset's
# `python -m tfrnn.experiments.mnist --preset …`, and the echo suite of `make echo-deps`.
COMMANDS = (*PRESETS, "echo")
# The echo suite's runs, as the TF1 program does them one by one: (num_steps, state_size, epochs).
ECHO_SUITE = echo_train.CANONICAL
FIRST_ECHO_EPOCH = "first epoch seconds (tracing and XLA compile included)"
SKIP_LINE = (
    "TORCH_PYTHON is not set: the PyTorch column is skipped (torch and ratio are null); "
    "set it to a Python with torch, e.g. TORCH_PYTHON=/path/to/venv/bin/python make bench"
)
TF1_SKIP_LINE = (
    "TF1_PYTHON is not set: the TF1 column is skipped (tf1 and tf1_ratio are null); set it "
    "to a Python with tensorflow and tf_keras, e.g. TF1_PYTHON=/path/to/venv/bin/python make bench"
)
# Without --mnist_dir the presets train on a made-up set of MNIST's shape and size: 60,000
# training images, of which the presets hold out 5,000 as the tutorials did, leaving an
# epoch of the tutorials' 55,000. Timing does not depend on the pixel values.
SYNTHETIC_TRAIN_IMAGES = 60_000
SYNTHETIC_TEST_IMAGES = 10_000


@dataclasses.dataclass(frozen=True)
class Peer:
    """Another program that does a workload's work, run as its own process: ``python
    script ARGUMENTS`` prints one JSON object as its last line of output."""

    column: str  # the records' key for its figures
    name: str
    python: str
    script: str
    variable: str  # the environment variable that names ``python``
    needs: str  # what ``python`` must have installed


# What --help says ({command}: how to run it from the current folder, tfrnn.cli.help_text).
USAGE = """\
Measures how fast tfrnn trains and serves, beside PyTorch and the tutorials' own TF1
programs, alternating the sides on this machine; a table, and runs/bench/results.json. The
peers run where TORCH_PYTHON and TF1_PYTHON name a Python that has them.

examples:
  {command}
  TORCH_PYTHON=/path/to/torch-venv/bin/python TF1_PYTHON=.venv/bin/python {command}
  {command} --rounds 5 --workloads mnist
  {command} --workloads presets --presets C2 --rounds 1

More: docs/performance.md and experiments/bench/README.md.
"""


def torch_peer(python: str) -> Peer:
    return Peer("torch", "PyTorch", python, TORCH_PEER, "TORCH_PYTHON", "torch")


def tf1_peer(python: str) -> Peer:
    """The tutorials' own programs, TF1 graphs (``experiments/tf1/tf1_graphs.py``)."""
    return Peer("tf1", "TF1", python, TF1_PEER, "TF1_PYTHON", "tensorflow and tf_keras")


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
    presets: tuple = PRESETS
    preset_epochs: int = 2  # whole epochs of each preset: the first with one-off costs
    mnist_dir: str | None = None  # the presets' IDX files; None: a synthetic set
    serving_calls: int = 1000  # batch-1 requests timed; a tenth as many of batch 256
    output_dir: str = "runs/bench"
    compile_cache: str = ""  # the one-epoch echo runs' --compile_cache; "": none
    commands: tuple = COMMANDS  # the whole commands timed (the "commands" workload)
    command_flags: tuple = ()  # added to each tfrnn command (tests shorten the runs)


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


def make_record(
    workload, metric, tfrnn_runs, torch_runs=None, load=None, tf1_runs=None, **extra
) -> dict:
    """One line of results.json: medians over the runs, the ratios to PyTorch (``ratio``)
    and to TF1 (``tf1_ratio``), and every run's figure."""
    tfrnn_value = statistics.median(tfrnn_runs)
    torch_value = statistics.median(torch_runs) if torch_runs else None
    tf1_value = statistics.median(tf1_runs) if tf1_runs else None
    return {
        "workload": workload,
        "metric": metric,
        "tfrnn": tfrnn_value,
        "torch": torch_value,
        "ratio": ratio(metric, tfrnn_value, torch_value),
        "tf1": tf1_value,
        "tf1_ratio": ratio(metric, tfrnn_value, tf1_value),
        "tfrnn_runs": list(tfrnn_runs),
        "torch_runs": list(torch_runs) if torch_runs else None,
        "tf1_runs": list(tf1_runs) if tf1_runs else None,
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
    """Images/s of the second of two epochs of ``options.batches`` steps of training.fit
    (path ``matmuls``: :func:`matmuls_images_per_second`)."""
    if path == "matmuls":
        return matmuls_images_per_second(options)
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
    seconds = _epoch_seconds(task, config, path)[1]
    if seconds <= 0:
        raise UsageError(f"--batches {options.batches} is too few steps to time")
    return options.batches * options.batch_size / seconds


def _lstm_matmuls(rows, kernel, recurrent_kernel):
    """The matmuls of one LSTM forward and backward pass over ``rows`` (time, batch,
    features), and nothing else: per step ``x . kernel`` and ``h . recurrent_kernel``, then
    backwards ``hᵀ . dz``, ``xᵀ . dz`` and ``dz . recurrent_kernelᵀ``. Each step's state is
    a slice of the last product (scaled to stay finite), so the steps stay a chain, as in
    the LSTM. Returns the two weight gradients."""
    units = recurrent_kernel.shape[0]
    inputs = tf.unstack(rows)
    state = tf.zeros((rows.shape[1], units))
    states = [state]
    for row in inputs:
        state = (tf.matmul(row, kernel) + tf.matmul(state, recurrent_kernel))[:, :units] * 1e-2
        states.append(state)
    kernel_gradient, recurrent_gradient = tf.zeros_like(kernel), tf.zeros_like(recurrent_kernel)
    state_gradient = tf.ones_like(state)
    for row, previous in reversed(list(zip(inputs, states[:-1], strict=True))):
        gates_gradient = tf.tile(state_gradient, (1, 4)) * 1e-2
        recurrent_gradient += tf.matmul(previous, gates_gradient, transpose_a=True)
        kernel_gradient += tf.matmul(row, gates_gradient, transpose_a=True)
        state_gradient = tf.matmul(gates_gradient, recurrent_kernel, transpose_b=True)
    return kernel_gradient, recurrent_gradient


def matmuls_images_per_second(options: Options) -> float:
    """Images/s of a training step that does nothing but the default path's matmuls
    (:func:`_lstm_matmuls`): no gate, loss, optimiser or loop. The faster of two layouts:
    the whole batch in one XLA call (larger matmuls, which XLA spreads over the cores), and
    the training step's row shards side by side, each its own XLA call. No real step of
    this model can beat it with this machine's kernels: a ceiling for the MNIST paths,
    beside the compute bound (which assumes the large-matmul speed)."""
    size, units = mnist_data.IMAGE_SIZE, options.units
    rng = np.random.default_rng(0)
    rows = tf.constant(rng.random((size, options.batch_size, size), dtype=np.float32))
    kernel = tf.constant(rng.normal(0, 0.05, (size, 4 * units)).astype(np.float32))
    recurrent_kernel = tf.constant(rng.normal(0, 0.05, (units, 4 * units)).astype(np.float32))
    shard_matmuls = tf.function(_lstm_matmuls, jit_compile=True)
    best = 0.0
    for shards in sorted({1, training.batch_shards(tf.distribute.get_strategy())}):
        bounds = [index * options.batch_size // shards for index in range(shards + 1)]
        parts = [rows[:, start:end] for start, end in zip(bounds[:-1], bounds[1:], strict=True)]
        step = tf.function(
            lambda parts=parts: [shard_matmuls(part, kernel, recurrent_kernel) for part in parts]
        )
        for _ in range(3):  # tracing and compilation
            step()[0][0].numpy()
        start = time.perf_counter()
        for _ in range(options.batches):
            gradients = step()
        gradients[0][0].numpy()
        best = max(best, options.batches * options.batch_size / (time.perf_counter() - start))
    return best


def _epoch_seconds(task: training.Task, config, name: str) -> list[float]:
    """Each epoch's seconds of ``training.fit(task)`` in a temporary workdir, as its loop
    times them (steps and evaluation; the end-of-epoch checkpoints fall outside)."""
    with tempfile.TemporaryDirectory(prefix="tfrnn_bench_") as workdir:
        result = training.fit(
            task,
            workdir,
            {"bench": name, **dataclasses.asdict(config)},
            checkpoint_every=10**9,  # only the end-of-epoch checkpoints, outside the timing
            jit_compile=config.jit_compile,
            verbose=False,
        )
    return [record["seconds"] for record in result.history]


def echo_epoch_seconds(options: Options, num_steps: int, state_size: int, mode: str):
    """(seconds of a steady epoch, of a one-epoch run's epoch: with its tracing and compile).

    Both from one two-epoch run of the echo command in a fresh process, as a user starts it
    (its own thread setting, ``options.compile_cache`` where a previous run of the same
    configuration left the compiled program, if any): the second epoch is the steady one,
    and the first is what a one-epoch run's epoch is, the same program compiled or loaded."""
    with tempfile.TemporaryDirectory(prefix="tfrnn_bench_") as workdir:
        command = [
            sys.executable, "-m", "tfrnn.experiments.echo_deps", f"--workdir={workdir}",
            f"--num_steps={num_steps}", f"--state_size={state_size}", f"--mode={mode}",
            f"--series_length={options.series_length}", "--epochs=2",
            f"--compile_cache={options.compile_cache}",
        ]  # fmt: skip
        _run_tfrnn(command, {}, "the echo command failed in the bench")
        with open(os.path.join(workdir, "metrics.json")) as handle:
            first, steady = json.load(handle)["epoch_seconds"]
    return steady, first


def _run_tfrnn(command: list[str], env: dict, failure: str) -> str:
    """Runs ``command`` (a Python importing tfrnn) with this environment plus ``env``, the
    folder that holds ``tfrnn`` first on PYTHONPATH; its stdout. UsageError ``failure: <the
    last line of its stderr>`` when it fails."""
    package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    paths = [package_parent, os.environ.get("PYTHONPATH", "")]
    python_path = os.pathsep.join(path for path in paths if path)
    finished = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env={**os.environ, **env, "PYTHONPATH": python_path},
    )
    if finished.returncode != 0:
        raise UsageError(f"{failure}: {_last_line(finished.stderr)}")
    return finished.stdout


def _last_line(text: str) -> str:
    """A process's last line of output, to say why it failed."""
    return (text.strip().splitlines() or ["(no output)"])[-1]


def preset_epoch_seconds(options: Options, preset: str, data_dir: str) -> tuple[float, float]:
    """(seconds of the last, of the first) of ``options.preset_epochs`` whole epochs of
    ``--preset``'s training (its model, batch, optimiser, data pipeline and loop, as
    ``make mnist MNIST_FLAGS="--preset ..."`` runs them) on ``data_dir``'s IDX files. An
    epoch's seconds are the loop's: its steps and the test pass that ends it, not the
    checkpoint after it; the first epoch's include tracing and XLA compilation."""
    config = mnist_settings.config_for(preset, data_dir=data_dir, epochs=options.preset_epochs)
    mnist_settings.validate(config)
    seed_and_make_deterministic(config.seed)
    data = mnist_data.load(config.dataset, config.data_dir, config.validation_size)
    seconds = _epoch_seconds(mnist_train.make_task(config, data), config, preset)
    return seconds[-1], seconds[0]


def tfrnn_command(options: Options, name: str, data_dir: str, workdir: str, cache: str):
    """The command line a user runs for ``name`` (a preset, or ``echo`` for the suite of
    ``make echo-deps``), with its workdir and ``--compile_cache`` folder."""
    if name == "echo":
        module, flags_ = "tfrnn.experiments.echo_deps", ["--suite", "canonical"]
    else:
        module, flags_ = "tfrnn.experiments.mnist", ["--preset", name, "--data_dir", data_dir]
    common = ["--workdir", workdir, "--compile_cache", cache, *options.command_flags]
    return [sys.executable, "-m", module, *flags_, *common]


def command_seconds(command: list[str]) -> tuple[float, str]:
    """(seconds from launch to exit, its last line: the time breakdown) of a tfrnn command."""
    start = time.perf_counter()
    stdout = _run_tfrnn(command, {}, f"{' '.join(command[2:4])} failed")
    return time.perf_counter() - start, _last_line(stdout)


def tf1_command_seconds(peer: Peer, name: str, data_dir: str, folder: str) -> float:
    """Seconds from launch to exit of the TF1 program(s) doing what ``name``'s command does:
    the tutorial's program at its own length, or tutorial A's for each run of the echo suite,
    one process each as the tutorial ran them."""
    if name == "echo":
        runs = [
            ["echo", "--graph", "handbuilt", "--num_steps", str(num_steps), "--state_size",
             str(state_size), "--epochs", str(epochs)]
            for num_steps, state_size, epochs in ECHO_SUITE
        ]  # fmt: skip
    else:
        runs = [["mnist", "--graph", name, "--data_dir", data_dir, "--out", folder]]
    start = time.perf_counter()
    for arguments in runs:
        run_peer(peer, arguments)
    return time.perf_counter() - start


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


def run_peer(peer: Peer, arguments: list[str]) -> dict:
    """Runs ``peer.script arguments`` with ``peer.python``; its JSON result."""
    if not os.path.exists(peer.script):
        raise UsageError(f"{peer.script} is missing: the {peer.name} peer runs from a checkout")
    command = [peer.python, peer.script, *arguments]
    try:
        finished = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as error:
        raise UsageError(f"{peer.variable}={peer.python} cannot be run: {error}") from error
    if finished.returncode != 0:
        raise UsageError(
            f"the {peer.name} peer failed ({' '.join(command)}): {_last_line(finished.stderr)}; "
            f"{peer.variable} must name a Python with {peer.needs} installed"
        )
    return json.loads(finished.stdout.strip().splitlines()[-1])


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _format(value) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _format_ratio(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_table(records: list[dict]) -> str:
    """A Markdown table of the records: workload, metric, tfrnn, each peer and its ratio,
    and tfrnn's share of the compute bound where it has one."""
    lines = [
        "| workload | metric | tfrnn | PyTorch | ratio to PyTorch (>1: tfrnn ahead) | TF1 | "
        "ratio to TF1 | tfrnn, share of the compute bound |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for record in records:
        share = record.get("bound_share")
        lines.append(
            f"| {record['workload']} | {record['metric']} | {_format(record['tfrnn'])} | "
            f"{_format(record['torch'])} | {_format_ratio(record['ratio'])} | "
            f"{_format(record['tf1'])} | {_format_ratio(record['tf1_ratio'])} | "
            f"{'-' if share is None else f'{share:.0%}'} |"
        )
    return "\n".join(lines)


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    """This machine's float32 matmul speed, GFLOP/s: the best of ``repeats`` products of two
    ``size`` x ``size`` matrices by numpy (its BLAS, every core), the rate that bounds the
    models' matmuls."""
    rng = np.random.default_rng(0)
    left, right = (rng.random((size, size), dtype=np.float32) for _ in range(2))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.matmul(left, right)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def lstm_flops_per_image(units: int, *, training: bool) -> float:
    """Multiply-adds (2 FLOP each) of the row LSTM on one image: 28 steps of the gates'
    (28 + units) x 4 units matmul, and the classifier; training adds the two matmuls of the
    backward pass (gradients of inputs and of weights): three times the forward's."""
    rows = mnist_data.IMAGE_SIZE
    forward = rows * 2 * (rows + units) * 4 * units + 2 * units * mnist_data.NUM_CLASSES
    return 3 * forward if training else forward


def bound_share(images_per_second: float, units: int, gflops: float, *, training: bool):
    """``images_per_second`` as a share of the compute bound: ``gflops`` spent on nothing
    but the model's arithmetic (:func:`lstm_flops_per_image`)."""
    return images_per_second * lstm_flops_per_image(units, training=training) / (gflops * 1e9)


@dataclasses.dataclass
class Figures:
    """Every figure the rounds measured, one a round, listed by what was measured.

    tfrnn keys are ``("mnist", path)``, ``("echo", num_steps, state_size, mode)`` and
    ``("preset", name)`` (steady epoch seconds) with ``("echo first", num_steps, state_size,
    mode)`` and ``("preset first", name)`` (the first epoch's); the peers' (``torch``,
    ``tf1``) are ``("mnist",)``, ``("echo", num_steps, state_size)`` and the same preset keys.
    """

    tfrnn: dict = dataclasses.field(default_factory=dict)
    load: dict = dataclasses.field(default_factory=dict)  # the 1-minute load before each
    torch: dict = dataclasses.field(default_factory=dict)
    tf1: dict = dataclasses.field(default_factory=dict)
    torch_threads: set = dataclasses.field(default_factory=set)
    breakdowns: dict = dataclasses.field(default_factory=dict)  # a command's last time line
    gflops: float = 0.0  # the machine's matmul speed (matmul_gflops), for the bound shares

    def measure(self, key: tuple, measurement, *args):
        """Notes the load, runs ``measurement(*args)`` and keeps its figure (the first item
        of a tuple); returns what the measurement returned."""
        self.load.setdefault(key, []).append(_load())
        result = measurement(*args)
        figure = result[0] if isinstance(result, tuple) else result
        self.tfrnn.setdefault(key, []).append(figure)
        return result

    def keep(self, column: str, key: tuple, figure: float) -> None:
        getattr(self, column).setdefault(key, []).append(figure)

    def ask_peer(self, peer: Peer, key: tuple, arguments: list[str], field: str) -> dict:
        """Runs ``peer`` with ``arguments`` and keeps its ``field`` under ``key`` (a list
        field: its last item, the first kept under ``("<key[0]> first", *key[1:])``);
        returns the peer's whole result."""
        result = run_peer(peer, arguments)
        figure = result[field]
        if isinstance(figure, list):
            self.keep(peer.column, (f"{key[0]} first", *key[1:]), figure[0])
            figure = figure[-1]
        self.keep(peer.column, key, figure)
        if peer.column == "torch":
            self.torch_threads.add(result["threads"])
        return result


def _environment(options: Options, peers: dict) -> dict:
    """What environment.json records at the start: machine, load, threads, versions, options."""
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu.model_name(),
        "cpu_instruction_sets": list(cpu.instruction_sets()),
        "load_average_start": list(os.getloadavg()),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        # 0: TensorFlow's default, one thread per core.
        "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "torch_python": peers["torch"].python if peers["torch"] else None,
        "tf1_python": peers["tf1"].python if peers["tf1"] else None,
        "options": dataclasses.asdict(options),
    }


def _mnist_round(options: Options, peers: dict, first: bool, figures: Figures, log) -> None:
    """tfrnn's MNIST paths (all in the first round, then the default only), the PyTorch peer
    right after the default."""
    for path in options.mnist_paths:
        if path != "default" and not first:
            continue  # the other paths: one run, for comparison with the default
        value = figures.measure(("mnist", path), mnist_train_images_per_second, options, path)
        log(f"tfrnn MNIST {MNIST_PATHS[path]}: {value:,.0f} images/s")
        if path == "default" and peers["torch"]:
            arguments = ["mnist", "--batches", str(options.batches), "--batch_size",
                         str(options.batch_size), "--units", str(options.units)]  # fmt: skip
            result = figures.ask_peer(peers["torch"], ("mnist",), arguments, "images_per_second")
            log(f"PyTorch MNIST: {result['images_per_second']:,.0f} images/s")


def _echo_round(options: Options, peers: dict, figures: Figures, log) -> None:
    """Each echo configuration: tfrnn in every mode, then the PyTorch peer, then the TF1
    peer (the tutorial's hand-built graph)."""
    for num_steps, state_size in options.echo_configs:
        for mode in options.echo_modes:
            key = ("echo", num_steps, state_size, mode)
            seconds, first_seconds = figures.measure(
                key, echo_epoch_seconds, options, num_steps, state_size, mode
            )
            figures.keep("tfrnn", ("echo first", *key[1:]), first_seconds)
            log(
                f"tfrnn echo ({num_steps}, {state_size}) {mode}: {seconds:.3f} s"
                f" an epoch ({first_seconds:.2f} s the first, compile included)"
            )
        key = ("echo", num_steps, state_size)
        shape = ["--num_steps", str(num_steps), "--state_size", str(state_size)]
        if peers["torch"]:
            arguments = ["echo", *shape, "--length", str(options.series_length)]
            result = figures.ask_peer(peers["torch"], key, arguments, "seconds")
            log(f"PyTorch echo ({num_steps}, {state_size}): {result['seconds']:.3f} s an epoch")
        if peers["tf1"]:
            arguments = ["echo", "--graph", "handbuilt", *shape, "--epochs", "1",
                         "--size", str(options.series_length)]  # fmt: skip
            result = figures.ask_peer(peers["tf1"], key, arguments, "seconds")
            log(f"TF1 echo ({num_steps}, {state_size}): {result['seconds']:.3f} s an epoch")


def _preset_round(options: Options, peers: dict, data_dir: str, figures: Figures, log) -> None:
    """Each preset: tfrnn's whole epochs, then the TF1 program's as many on the same data."""
    for preset in options.presets:
        key = ("preset", preset)
        steady, first = figures.measure(key, preset_epoch_seconds, options, preset, data_dir)
        figures.keep("tfrnn", ("preset first", preset), first)
        log(f"tfrnn --preset {preset}: {steady:.1f} s an epoch ({first:.1f} s the first)")
        if peers["tf1"]:
            arguments = ["mnist-epochs", "--graph", preset, "--data_dir", data_dir,
                         "--epochs", str(options.preset_epochs)]  # fmt: skip
            result = figures.ask_peer(peers["tf1"], key, arguments, "epoch_seconds")
            seconds = result["epoch_seconds"]
            log(f"TF1 {preset}: {seconds[-1]:.1f} s an epoch ({seconds[0]:.1f} s the first)")


def _command_round(options: Options, peers: dict, data_dir: str, figures: Figures, log) -> None:
    """Each whole command from an empty compile cache (cold), the TF1 program, then the same
    command again on the cache the first run filled (warm)."""
    for name in options.commands:
        with tempfile.TemporaryDirectory(prefix="tfrnn_bench_command_") as folder:
            cache = os.path.join(folder, "cache")
            for cache_state in ("cold", "warm"):
                if cache_state == "warm" and peers["tf1"]:
                    seconds = tf1_command_seconds(peers["tf1"], name, data_dir, folder)
                    figures.keep("tf1", ("command", name), seconds)
                    log(f"TF1 {name}: {seconds:.1f} s, launch to exit")
                workdir = os.path.join(folder, cache_state)
                command = tfrnn_command(options, name, data_dir, workdir, cache)
                key = (f"command {cache_state}", name)
                seconds, breakdown = figures.measure(key, command_seconds, command)
                figures.breakdowns[key] = breakdown
                log(f"tfrnn {name}, {cache_state} compile cache: {seconds:.1f} s; {breakdown}")


def _command_records(options: Options, figures: Figures) -> list[dict]:
    """Two records a command: launch to exit with a cold and with a warm compile cache, each
    against the TF1 program's; the last run's time breakdown beside them."""
    records = []
    for name in options.commands:
        workload = "echo suite (make echo-deps)" if name == "echo" else f"--preset {name} command"
        for cache_state in ("cold", "warm"):
            key = (f"command {cache_state}", name)
            if key in figures.tfrnn:
                records.append(
                    make_record(
                        workload,
                        f"seconds launch to exit, {cache_state} compile cache",
                        figures.tfrnn[key],
                        load=figures.load[key],
                        tf1_runs=figures.tf1.get(("command", name)),
                        breakdown=figures.breakdowns[key],
                    )
                )
    return records


def _mnist_records(options: Options, figures: Figures) -> list[dict]:
    """One record a MNIST path that ran, in the order of ``options``."""
    records = []
    for path in options.mnist_paths:
        key = ("mnist", path)
        if key in figures.tfrnn:
            workload = f"MNIST train, {MNIST_PATHS[path]}"
            record = make_record(workload, "images/s", figures.tfrnn[key],
                                 figures.torch.get(("mnist",)), figures.load[key])  # fmt: skip
            record["bound_share"] = bound_share(
                record["tfrnn"], options.units, figures.gflops, training=True
            )
            records.append(record)
    return records


def _echo_records(options: Options, figures: Figures) -> list[dict]:
    """Two records an echo run: a steady epoch's seconds and the first epoch's, each against
    the peers' one epoch (a fresh session or process: the first epoch of a run that trains
    one is the whole run)."""
    records = []
    for num_steps, state_size in options.echo_configs:
        for mode in options.echo_modes:
            key = ("echo", num_steps, state_size, mode)
            if key not in figures.tfrnn:
                continue
            workload, load = f"echo ({num_steps}, {state_size}) {mode}", figures.load[key]
            peer_key = ("echo", num_steps, state_size)
            torch_runs, tf1_runs = figures.torch.get(peer_key), figures.tf1.get(peer_key)
            records += [
                make_record(workload, "epoch seconds", figures.tfrnn[key], torch_runs, load,
                            tf1_runs),
                make_record(workload, FIRST_ECHO_EPOCH, figures.tfrnn[("echo first", *key[1:])],
                            torch_runs, load, tf1_runs),
            ]  # fmt: skip
    return records


def _preset_records(options: Options, figures: Figures) -> list[dict]:
    """Two records a preset: its steady epoch's seconds and its first epoch's, with TF1's."""
    records = []
    for preset in options.presets:
        key, first = ("preset", preset), ("preset first", preset)
        if key not in figures.tfrnn:
            continue
        workload, load = f"--preset {preset} train, whole epochs", figures.load[key]
        records += [
            make_record(workload, f"epoch seconds (epoch {options.preset_epochs})",
                        figures.tfrnn[key], load=load, tf1_runs=figures.tf1.get(key)),
            make_record(workload, "first-epoch seconds (tfrnn: + XLA compile)",
                        figures.tfrnn[first], load=load, tf1_runs=figures.tf1.get(first)),
        ]  # fmt: skip
    return records


# A server tuned for one-image latency runs each request on one thread (TF Serving:
# --tensorflow_intra_op_parallelism=1 --tensorflow_inter_op_parallelism=1); TensorFlow reads
# these when it starts, so the figures come from a fresh process.
ONE_THREAD_ENV = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}


def one_thread_serving_figures(options: Options) -> dict:
    """:func:`serving_figures` in a fresh process whose TensorFlow pools have one thread."""
    script = (
        "import json, sys\n"
        "from tfrnn.bench import suite\n"
        "options = suite.Options(**json.loads(sys.argv[1]))\n"
        "print(json.dumps(suite.serving_figures(options)))\n"
    )
    output = _run_tfrnn(
        [sys.executable, "-c", script, json.dumps(dataclasses.asdict(options))],
        {**ONE_THREAD_ENV, "TF_CPP_MIN_LOG_LEVEL": "3"},
        "the one-thread serving measurement failed",
    )
    return json.loads(_last_line(output))


def _serving_records(options: Options, gflops: float, log) -> list[dict]:
    """The serving figures (no PyTorch peer), measured once: in this process (TensorFlow's
    default pools, a thread a core each) and with one-thread pools."""
    load = [_load()]
    figures = serving_figures(options)
    one_thread = one_thread_serving_figures(options)
    log(
        f"tfrnn serving: batch 1 {figures['latency_median_ms']:.2f} ms median, "
        f"{figures['latency_p99_ms']:.2f} ms p99 (one-thread pools: "
        f"{one_thread['latency_median_ms']:.2f} / {one_thread['latency_p99_ms']:.2f}); batch 256 "
        f"{figures['batch256_images_per_second']:,.0f} images/s"
    )
    single, tuned = "serving, batch 1", "serving, batch 1, one-thread pools (latency-tuned server)"
    return [
        make_record(single, "latency ms (median)", [figures["latency_median_ms"]], load=load),
        make_record(single, "latency ms (p99)", [figures["latency_p99_ms"]], load=load),
        make_record(tuned, "latency ms (median)", [one_thread["latency_median_ms"]], load=load),
        make_record(tuned, "latency ms (p99)", [one_thread["latency_p99_ms"]], load=load),
        make_record("serving, batch 256", "images/s",
                    [figures["batch256_images_per_second"]], load=load,
                    bound_share=bound_share(figures["batch256_images_per_second"],
                                            options.units, gflops, training=False)),
    ]  # fmt: skip


def _write_results(output_dir: str, records: list[dict], environment: dict) -> None:
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "results.json"), "w") as handle:
        json.dump(records, handle, indent=1)
    with open(os.path.join(output_dir, "environment.json"), "w") as handle:
        json.dump(environment, handle, indent=1)


def _presets_data_dir(options: Options, stack: contextlib.ExitStack, log) -> str | None:
    """The presets' IDX folder: ``options.mnist_dir``, else a synthetic set written to a
    temporary folder that ``stack`` removes; None when the presets do not run."""
    if "presets" not in options.workloads and "commands" not in options.workloads:
        return None
    if options.mnist_dir is not None:
        return os.path.abspath(options.mnist_dir)
    folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="tfrnn_bench_mnist_"))
    mnist_data.write_synthetic_idx(folder, SYNTHETIC_TRAIN_IMAGES, SYNTHETIC_TEST_IMAGES)
    log(
        f"no --mnist_dir: the presets train on synthetic MNIST-shaped IDX files "
        f"({SYNTHETIC_TRAIN_IMAGES:,} training images, {SYNTHETIC_TEST_IMAGES:,} test)"
    )
    return folder


def _measure_rounds(options: Options, peers: dict, figures: Figures, log) -> None:
    """The training workloads, ``options.rounds`` times, each tfrnn run followed by its
    peers' runs."""
    with contextlib.ExitStack() as stack:
        data_dir = _presets_data_dir(options, stack, log)
        for round_index in range(options.rounds):
            prefix = f"round {round_index + 1}/{options.rounds}:"

            def log_round(line, prefix=prefix):
                log(f"{prefix} {line}")

            if "mnist" in options.workloads:
                _mnist_round(options, peers, round_index == 0, figures, log_round)
            if "echo" in options.workloads:
                _echo_round(options, peers, figures, log_round)
            if "presets" in options.workloads:
                _preset_round(options, peers, data_dir, figures, log_round)
            if "commands" in options.workloads:
                _command_round(options, peers, data_dir, figures, log_round)


def run(
    options: Options, torch_python: str | None = None, log=print, tf1_python: str | None = None
) -> list[dict]:
    """Measures ``options.workloads``, writes results.json and environment.json; the records.

    The training workloads run ``options.rounds`` times, each tfrnn run followed by its
    peers' (PyTorch with ``torch_python``, TF1 with ``tf1_python``); serving runs once, at
    the end.
    """
    if torch_python is None:
        log(SKIP_LINE)
    if tf1_python is None:
        log(TF1_SKIP_LINE)
    peers = {
        "torch": torch_peer(torch_python) if torch_python else None,
        "tf1": tf1_peer(tf1_python) if tf1_python else None,
    }
    environment = _environment(options, peers)
    environment["matmul_gflops_start"] = matmul_gflops()
    figures = Figures()
    _measure_rounds(options, peers, figures, log)
    # Measured at both ends of the run: one moment of a slowed machine (a busy neighbour on
    # the host) halved a measurement once, and the bound is what the machine can do.
    environment["matmul_gflops_end"] = matmul_gflops()
    figures.gflops = max(environment["matmul_gflops_start"], environment["matmul_gflops_end"])
    environment["matmul_gflops"] = figures.gflops
    records = [
        *_mnist_records(options, figures),
        *_echo_records(options, figures),
        *_preset_records(options, figures),
        *_command_records(options, figures),
    ]
    if "serving" in options.workloads:
        records += _serving_records(options, figures.gflops, log)
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
    flags.DEFINE_integer("rounds", 3, "alternating tfrnn/peer rounds; figures are medians")
    flags.DEFINE_integer("batches", 200, "timed MNIST training steps (after as many warm-up steps)")
    flags.DEFINE_integer("series_length", 1_000_000, "echo series length (steps an epoch)")
    flags.DEFINE_list("workloads", list(WORKLOADS), f"any of {', '.join(WORKLOADS)}")
    flags.DEFINE_list("mnist_paths", list(MNIST_PATHS), f"any of {', '.join(MNIST_PATHS)}")
    flags.DEFINE_list("presets", list(PRESETS), f"tutorial presets timed: {', '.join(PRESETS)}")
    flags.DEFINE_integer("preset_epochs", 2, "whole epochs of each preset; the last is timed")
    flags.DEFINE_string(
        "mnist_dir", None, "the presets' four MNIST IDX files; default: a synthetic set"
    )
    flags.DEFINE_string("output_dir", "runs/bench", "where results.json and environment.json go")
    compile_cache.define_flags(flags)


def _options_from_flags() -> Options:
    """The flags as :class:`Options`, after checking them."""
    for name in ("rounds", "batches", "preset_epochs"):
        if FLAGS[name].value <= 0:
            raise UsageError(f"--{name} must be positive, got {FLAGS[name].value}")
    choices = (("workloads", WORKLOADS), ("mnist_paths", MNIST_PATHS), ("presets", PRESETS))
    for name, allowed in choices:
        unknown = sorted(set(FLAGS[name].value) - set(allowed))
        if unknown:
            raise UsageError(f"--{name} must be among {', '.join(allowed)}; got {unknown}")
    if FLAGS.mnist_dir is not None and not os.path.isdir(FLAGS.mnist_dir):
        raise UsageError(f"--mnist_dir {FLAGS.mnist_dir}: no such folder")
    options = Options(
        rounds=FLAGS.rounds,
        batches=FLAGS.batches,
        series_length=FLAGS.series_length,
        workloads=tuple(FLAGS.workloads),
        mnist_paths=tuple(FLAGS.mnist_paths),
        presets=tuple(FLAGS.presets),
        preset_epochs=FLAGS.preset_epochs,
        mnist_dir=FLAGS.mnist_dir,
        output_dir=FLAGS.output_dir,
        compile_cache=FLAGS.compile_cache,
    )
    if "echo" in options.workloads:
        for num_steps, state_size in options.echo_configs:
            echo_config.check_config(
                echo_config.EchoConfig(
                    num_steps=num_steps, state_size=state_size, series_length=FLAGS.series_length
                )
            )
    return options


def main(argv):
    if not FLAGS["verbosity"].present:
        # TensorFlow logs every SavedModel asset at INFO; --verbosity=0 shows them again.
        logging.set_verbosity(logging.WARNING)
        # Every measurement builds a fresh model and loop, so TensorFlow's "retracing"
        # warnings are expected here and say nothing about the code measured.
        tf.get_logger().setLevel("ERROR")
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    options = _options_from_flags()
    run(
        options,
        os.environ.get("TORCH_PYTHON") or None,
        tf1_python=os.environ.get("TF1_PYTHON") or None,
    )
    sys.stdout.flush()
