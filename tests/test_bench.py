"""Tests of ``make bench`` (tfrnn.bench), of its PyTorch peer's torch-free parts and of its
TF1 peer.

The driver runs on tiny shapes. The peers are replaced by stand-in interpreters (shell
scripts) that print fixed figures and the arguments they were given: torch is never
installed in the project's environment, and what is tested there is the driver's side:
which runs alternate, what shapes the peers are asked for, and the records and ratios. The
TF1 peer itself runs for real once, on tiny IDX files, with this interpreter (the
development environment has tensorflow and tf_keras).
"""

import json
import os
import stat
import sys

import numpy as np
import pytest
from command_testing import time_line_parts

from tfrnn.bench import suite as bench
from tfrnn.bench import torch_peer as bench_torch
from tfrnn.data import mnist as mnist_data
from tfrnn.data.echo import epoch_windows
from tfrnn.errors import UsageError

PEER_IMAGES_PER_SECOND = 1000.0
PEER_EPOCH_SECONDS = 2.0
TF1_EPOCH_SECONDS = [30.0, 20.0]  # a preset's first epoch, then its second
TF1_ECHO_SECONDS = 4.0


def _interpreter(tmp_path, body: str) -> str:
    """An executable standing in for TORCH_PYTHON; $1 is the peer script, $2 the workload."""
    path = tmp_path / "fake_python"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@pytest.fixture
def fake_peer(tmp_path):
    """(interpreter, file where each call's arguments after the script are appended)."""
    calls = tmp_path / "peer_calls.txt"
    interpreter = _interpreter(
        tmp_path,
        f'shift\necho "$*" >> {calls}\ncase "$1" in\n'
        f'  mnist) echo \'{{"images_per_second": {PEER_IMAGES_PER_SECOND}, "threads": 2}}\';;\n'
        f'  echo) echo \'{{"seconds": {PEER_EPOCH_SECONDS}, "threads": 2}}\';;\n'
        "esac\n",
    )
    return interpreter, calls


@pytest.fixture
def fake_tf1_peer(tmp_path):
    """(interpreter standing in for TF1_PYTHON, file of each call's arguments)."""
    calls = tmp_path / "tf1_calls.txt"
    path = tmp_path / "fake_tf1_python"
    path.write_text(
        f'#!/bin/sh\nshift\necho "$*" >> {calls}\ncase "$1" in\n'
        f"  mnist-epochs) echo '{{\"epoch_seconds\": {TF1_EPOCH_SECONDS}}}';;\n"
        f"  echo) echo 'average loss lines first'; "
        f"echo '{{\"seconds\": {TF1_ECHO_SECONDS}}}';;\n"
        "esac\n"
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path), calls


@pytest.fixture(scope="module")
def tiny_mnist(tmp_path_factory):
    """IDX files with 256 training images left after the presets' 5,000 held out."""
    folder = tmp_path_factory.mktemp("tiny_mnist")
    mnist_data.write_synthetic_idx(str(folder), 5256, 100)
    return str(folder)


def test_ratio_is_above_one_when_tfrnn_is_ahead():
    assert bench.ratio("images/s", 3000.0, 1500.0) == 2.0  # a rate: tfrnn / torch
    assert bench.ratio("epoch seconds", 0.5, 1.5) == 3.0  # a time: torch / tfrnn
    assert bench.ratio("latency ms (median)", 4.0, 1.0) == 0.25
    assert bench.ratio("images/s", 3000.0, None) is None


def test_record_takes_medians_over_rounds():
    record = bench.make_record("w", "images/s", [1.0, 5.0, 3.0], [2.0, 10.0, 4.0], [0.5, 1, 2])
    assert (record["tfrnn"], record["torch"], record["ratio"]) == (3.0, 4.0, 0.75)
    assert record["tfrnn_runs"] == [1.0, 5.0, 3.0] and record["load_1min"] == [0.5, 1, 2]
    alone = bench.make_record("w", "epoch seconds", [2.0])
    assert (alone["torch"], alone["ratio"], alone["torch_runs"]) == (None, None, None)


def test_runs_alternate_with_the_peer_and_records_hold_the_ratios(tmp_path, fake_peer):
    options = bench.Options(
        rounds=2,
        batches=8,
        batch_size=16,
        units=8,
        series_length=100_000,
        mnist_paths=("default", "matmuls"),
        echo_configs=((5, 4),),
        echo_modes=("explicit",),
        workloads=("mnist", "echo"),
        output_dir=str(tmp_path / "out"),
    )
    interpreter, calls = fake_peer
    lines = []
    records = bench.run(options, interpreter, log=lines.append)

    runs = [line.split(":")[1].split()[0:2] for line in lines if line.startswith("round")]
    each_round = [["tfrnn", "MNIST"], ["PyTorch", "MNIST"], ["tfrnn", "echo"], ["PyTorch", "echo"]]
    # The ceiling (path matmuls) runs in the first round only, after the default and its peer.
    assert runs == each_round[:2] + [["tfrnn", "MNIST"]] + each_round[2:] + each_round
    assert bench.SKIP_LINE not in lines
    with open(tmp_path / "out" / "results.json") as handle:
        assert json.load(handle) == records
    by_key = {(r["workload"], r["metric"]): r for r in records}
    mnist = by_key[(f"MNIST train, {bench.MNIST_PATHS['default']}", "images/s")]
    assert len(mnist["tfrnn_runs"]) == 2 and mnist["tfrnn"] > 0
    assert 0 < mnist["bound_share"] < 1
    assert mnist["torch"] == PEER_IMAGES_PER_SECOND
    assert mnist["ratio"] == pytest.approx(mnist["tfrnn"] / PEER_IMAGES_PER_SECOND)
    # The step's matmuls alone go faster than the whole step (no gates, no optimiser).
    ceiling = by_key[("MNIST train, the default step's matmuls alone (a ceiling)", "images/s")]
    assert ceiling["tfrnn"] > mnist["tfrnn"] and ceiling["bound_share"] > mnist["bound_share"]
    echo = by_key[("echo (5, 4) explicit", "epoch seconds")]
    assert echo["ratio"] == pytest.approx(PEER_EPOCH_SECONDS / echo["tfrnn"])
    first = by_key[("echo (5, 4) explicit", bench.FIRST_ECHO_EPOCH)]
    assert first["tfrnn"] >= echo["tfrnn"]  # the first epoch also traces and compiles
    assert first["ratio"] == pytest.approx(PEER_EPOCH_SECONDS / first["tfrnn"])
    # The peer was asked for the shapes tfrnn ran, between tfrnn's runs.
    assert (
        calls.read_text().splitlines()
        == [
            "mnist --batches 8 --batch_size 16 --units 8",
            "echo --num_steps 5 --state_size 4 --length 100000",
        ]
        * 2
    )
    with open(tmp_path / "out" / "environment.json") as handle:
        environment = json.load(handle)
    assert environment["torch_threads"] == [2] and len(environment["load_average_end"]) == 3
    # The bound uses the faster of the run's two matmul measurements.
    ends = [environment["matmul_gflops_start"], environment["matmul_gflops_end"]]
    assert min(ends) > 0 and environment["matmul_gflops"] == max(ends)


def test_without_torch_python_the_column_is_skipped(tmp_path):
    options = bench.Options(
        units=8, workloads=("serving",), serving_calls=10, output_dir=str(tmp_path)
    )
    lines = []
    records = bench.run(options, None, log=lines.append)
    assert lines[:2] == [bench.SKIP_LINE, bench.TF1_SKIP_LINE]
    assert {(r["workload"], r["metric"]) for r in records} == {
        ("serving, batch 1", "latency ms (median)"),
        ("serving, batch 1", "latency ms (p99)"),
        ("serving, batch 1, one-thread pools (latency-tuned server)", "latency ms (median)"),
        ("serving, batch 1, one-thread pools (latency-tuned server)", "latency ms (p99)"),
        ("serving, batch 256", "images/s"),
    }
    assert all(r["torch"] is None and r["ratio"] is None for r in records)
    assert all(r["tf1"] is None and r["tf1_ratio"] is None for r in records)
    for pair in (records[:2], records[2:4]):  # in this process, then in the one-thread one
        median, p99 = (r["tfrnn"] for r in pair)
        assert 0 < median <= p99
    assert os.path.exists(tmp_path / "results.json")


def test_a_peer_without_torch_is_a_one_line_error(tmp_path):
    broken = _interpreter(
        tmp_path, "echo \"ModuleNotFoundError: No module named 'torch'\" >&2\nexit 1\n"
    )
    with pytest.raises(UsageError, match="No module named 'torch'.*TORCH_PYTHON must name"):
        bench.run_peer(bench.torch_peer(broken), ["echo"])
    with pytest.raises(UsageError, match="TF1 peer failed.*TF1_PYTHON must name.*tf_keras"):
        bench.run_peer(bench.tf1_peer(broken), ["echo"])


def test_peer_defaults_are_the_reference_shapes():
    args = bench_torch.parse_args(["mnist"])
    assert (args.batches, args.batch_size, args.units) == (200, 128, 128)
    args = bench_torch.parse_args(["echo"])
    assert (args.num_steps, args.state_size, args.length) == (5, 4, 1_000_000)
    with pytest.raises(SystemExit):
        bench_torch.parse_args(["echo", "--num_steps", "0"])


def test_peer_echo_series_follows_the_rule_and_has_tfrnns_windows():
    inputs, targets = bench_torch.echo_rows(200_000)
    assert inputs.shape == targets.shape == (200, 1000)
    series_in, series_out = inputs.reshape(-1), targets.reshape(-1)  # rows are contiguous
    lag3, lag8 = np.roll(series_in, 3), np.roll(series_in, 8)
    for x3, x8, probability in ((0, 0, 0.5), (1, 0, 1.0), (0, 1, 0.25), (1, 1, 0.75)):
        chosen = (lag3 == x3) & (lag8 == x8)
        assert series_out[chosen].mean() == pytest.approx(probability, abs=0.01)
    # As many windows an epoch as tfrnn's batching of the same length.
    for num_steps in (5, 10):
        windows, _ = epoch_windows(series_in, series_out, 200, num_steps)
        assert inputs.shape[1] // num_steps == len(windows)


def test_other_mnist_paths_run_once_and_records_follow_the_options(
    tmp_path, fake_peer, monkeypatch
):
    # Stand-in measurements: what is tested is the order of runs and records, not speed.
    measured = []

    def images_per_second(options, path):
        measured.append(("mnist", path))
        return 100.0 * len(measured)

    def epoch_seconds(options, num_steps, state_size, mode):
        measured.append(("echo", num_steps, state_size, mode))
        return 0.5 * len(measured), 1.0

    monkeypatch.setattr(bench, "mnist_train_images_per_second", images_per_second)
    monkeypatch.setattr(bench, "echo_epoch_seconds", epoch_seconds)
    options = bench.Options(
        rounds=2,
        mnist_paths=("keras_lstm", "default"),
        echo_configs=((10, 16), (5, 4)),
        echo_modes=("explicit", "stateful"),
        workloads=("mnist", "echo"),
        output_dir=str(tmp_path / "out"),
    )
    interpreter, calls = fake_peer
    records = bench.run(options, interpreter, log=lambda line: None)

    echo_runs = [
        ("echo", *config, mode) for config in ((10, 16), (5, 4)) for mode in options.echo_modes
    ]
    assert measured == [("mnist", "keras_lstm"), ("mnist", "default"), *echo_runs] + [
        ("mnist", "default"),
        *echo_runs,
    ]
    assert [line.split()[0] for line in calls.read_text().splitlines()] == [
        "mnist", "echo", "echo", "mnist", "echo", "echo"
    ]  # fmt: skip
    assert [(r["workload"], r["tfrnn_runs"], r["torch_runs"]) for r in records[:2]] == [
        ("MNIST train, keras.layers.LSTM", [100.0], [1000.0, 1000.0]),
        (f"MNIST train, {bench.MNIST_PATHS['default']}", [200.0, 700.0], [1000.0, 1000.0]),
    ]
    assert [(r["workload"], r["metric"]) for r in records[2:6]] == [
        ("echo (10, 16) explicit", "epoch seconds"),
        ("echo (10, 16) explicit", bench.FIRST_ECHO_EPOCH),
        ("echo (10, 16) stateful", "epoch seconds"),
        ("echo (10, 16) stateful", bench.FIRST_ECHO_EPOCH),
    ]
    assert records[2]["tfrnn_runs"] == [1.5, 4.0] and records[3]["tfrnn_runs"] == [1.0, 1.0]
    assert records[2]["torch_runs"] == records[3]["torch_runs"] == [PEER_EPOCH_SECONDS] * 2
    assert len(records) == 10
    assert all(len(r["load_1min"]) == len(r["tfrnn_runs"]) for r in records)


def test_presets_and_echo_alternate_with_the_tf1_peer(
    tmp_path, fake_peer, fake_tf1_peer, monkeypatch, tiny_mnist
):
    # Stand-in tfrnn measurements: what is tested is the order of runs, the arguments the
    # TF1 peer gets and the records.
    measured = []

    def preset_seconds(options, preset, data_dir):
        measured.append((preset, data_dir))
        return 5.0 * len(measured), 50.0

    monkeypatch.setattr(bench, "preset_epoch_seconds", preset_seconds)
    monkeypatch.setattr(bench, "echo_epoch_seconds", lambda *args: (0.5, 1.0))
    options = bench.Options(
        rounds=2,
        presets=("C3", "C1"),
        preset_epochs=3,
        mnist_dir=tiny_mnist,
        echo_configs=((5, 4),),
        echo_modes=("explicit",),
        series_length=100_000,
        workloads=("echo", "presets"),
        output_dir=str(tmp_path / "out"),
    )
    torch_python, torch_calls = fake_peer
    tf1_python, tf1_calls = fake_tf1_peer
    lines = []
    records = bench.run(options, torch_python, log=lines.append, tf1_python=tf1_python)

    runs = [line.split(":")[1].split()[0] for line in lines if line.startswith("round")]
    assert runs == ["tfrnn", "PyTorch", "TF1", "tfrnn", "TF1", "tfrnn", "TF1"] * 2
    assert measured == [("C3", tiny_mnist), ("C1", tiny_mnist)] * 2
    assert bench.TF1_SKIP_LINE not in lines and bench.SKIP_LINE not in lines
    assert (
        tf1_calls.read_text().splitlines()
        == [
            "echo --graph handbuilt --num_steps 5 --state_size 4 --epochs 1 --size 100000",
            f"mnist-epochs --graph C3 --data_dir {tiny_mnist} --epochs 3",
            f"mnist-epochs --graph C1 --data_dir {tiny_mnist} --epochs 3",
        ]
        * 2
    )
    assert len(torch_calls.read_text().splitlines()) == 2  # echo only: no PyTorch preset
    by_key = {(r["workload"], r["metric"]): r for r in records}
    echo = by_key[("echo (5, 4) explicit", "epoch seconds")]
    assert (echo["torch"], echo["tf1"]) == (PEER_EPOCH_SECONDS, TF1_ECHO_SECONDS)
    assert echo["tf1_ratio"] == TF1_ECHO_SECONDS / 0.5
    steady = by_key[("--preset C1 train, whole epochs", "epoch seconds (epoch 3)")]
    assert steady["tfrnn_runs"] == [10.0, 20.0] and steady["tf1_runs"] == [20.0, 20.0]
    assert steady["tf1_ratio"] == 20.0 / 15.0 and steady["torch"] is None
    first = by_key[
        ("--preset C3 train, whole epochs", "first-epoch seconds (tfrnn: + XLA compile)")
    ]
    assert first["tfrnn_runs"] == [50.0, 50.0] and first["tf1_runs"] == [30.0, 30.0]
    assert first["tf1_ratio"] == 30.0 / 50.0 and len(first["load_1min"]) == 2
    with open(tmp_path / "out" / "results.json") as handle:
        assert json.load(handle) == records
    table = lines[-2].splitlines()
    assert "| TF1 | ratio to TF1 |" in table[0]
    assert (
        "| --preset C1 train, whole epochs | epoch seconds (epoch 3) | 15 | - | - | 20 | 1.33 | - |"
        in table
    )


def test_without_mnist_dir_the_presets_train_on_a_synthetic_set_of_mnists_size(
    tmp_path, monkeypatch
):
    seen = []

    def preset_seconds(options, preset, data_dir):
        images, _, _ = mnist_data.read_idx_split(data_dir, "train")
        test_images, _, _ = mnist_data.read_idx_split(data_dir, "test")
        seen.append((data_dir, images.shape, test_images.shape))
        return 1.0, 2.0

    monkeypatch.setattr(bench, "preset_epoch_seconds", preset_seconds)
    options = bench.Options(
        rounds=1, presets=("C2",), workloads=("presets",), output_dir=str(tmp_path / "out")
    )
    lines = []
    records = bench.run(options, None, log=lines.append)
    [(data_dir, train_shape, test_shape)] = seen
    # 55,000 training images after the presets' 5,000 held out: a tutorial's epoch.
    assert train_shape == (60_000, 28, 28) and test_shape == (10_000, 28, 28)
    assert not os.path.exists(data_dir)  # removed after the rounds
    assert any(line.startswith("no --mnist_dir: the presets train on synthetic") for line in lines)
    assert [r["tf1"] for r in records] == [None, None]


def test_preset_epochs_time_the_presets_training_on_the_given_files(tiny_mnist):
    options = bench.Options(preset_epochs=2)
    steady, first = bench.preset_epoch_seconds(options, "C3", tiny_mnist)
    assert 0 < steady < first  # the first epoch also traces and compiles


def test_the_tf1_peer_trains_whole_epochs_as_long_as_tfrnns(tiny_mnist):
    peer = bench.tf1_peer(sys.executable)  # the development environment has tf_keras
    result = bench.run_peer(
        peer, ["mnist-epochs", "--graph", "C3", "--data_dir", tiny_mnist, "--epochs", "2"]
    )
    assert len(result["epoch_seconds"]) == 2 and min(result["epoch_seconds"]) > 0
    config = bench.mnist_settings.config_for("C3", data_dir=tiny_mnist, epochs=2)
    data = mnist_data.load(config.dataset, config.data_dir, config.validation_size)
    task = bench.mnist_train.make_task(config, data)
    assert (result["batch_size"], result["steps_per_epoch"]) == (128, task.steps_per_epoch)
    assert task.total_steps == 2 * task.steps_per_epoch == 4
    echo = bench.run_peer(
        peer,
        ["echo", "--graph", "handbuilt", "--num_steps", "5", "--state_size", "4",
         "--epochs", "1", "--size", "100000"],
    )  # fmt: skip
    assert echo["seconds"] > 0 and echo["num_steps"] == 5


def test_the_compute_bound_counts_the_models_arithmetic():
    # 128 units: 28 steps of a (28 + 128) x 512 matmul at 2 FLOP a multiply-add, and the
    # 128 x 10 classifier; training three times that, about 13.4 MFLOP an image.
    forward = 28 * 2 * (28 + 128) * 512 + 2 * 128 * 10
    assert bench.lstm_flops_per_image(128, training=False) == forward
    assert bench.lstm_flops_per_image(128, training=True) == 3 * forward
    # 10,000 images/s of training on a 180 GFLOP/s machine: about 75% of its bound.
    share = bench.bound_share(10_000, 128, 180.0, training=True)
    assert share == pytest.approx(10_000 * 3 * forward / 180e9) and 0.74 < share < 0.75
    # GFLOP/s, not FLOP/s or MFLOP/s: a slip of units is 1000 times off. The floor is low because
    # numpy's threads on a loaded machine (pytest -n 2 beside other tests) ran at 0.85 GFLOP/s.
    assert 0.01 < bench.matmul_gflops(size=256, repeats=2) < 100_000


def test_the_matmul_ceiling_runs_the_lstms_matmuls():
    # The weight gradients of a hand loop over 3 steps: the same matmuls, in the same chain.
    rng = np.random.default_rng(0)
    rows = rng.random((3, 2, 5), dtype=np.float32)
    kernel, recurrent_kernel = rng.random((5, 8), np.float32), rng.random((2, 8), np.float32)
    states, state = [], np.zeros((2, 2), np.float32)
    for row in rows:
        states.append(state)
        state = (row @ kernel + state @ recurrent_kernel)[:, :2] * 1e-2
    kernel_gradient, recurrent_gradient = np.zeros_like(kernel), np.zeros_like(recurrent_kernel)
    state_gradient = np.ones((2, 2), np.float32)
    for row, previous in reversed(list(zip(rows, states, strict=True))):
        gates_gradient = np.tile(state_gradient, (1, 4)) * 1e-2
        recurrent_gradient += previous.T @ gates_gradient
        kernel_gradient += row.T @ gates_gradient
        state_gradient = gates_gradient @ recurrent_kernel.T
    got = bench._lstm_matmuls(rows, kernel, recurrent_kernel)
    np.testing.assert_allclose(got[0], kernel_gradient, rtol=1e-5)
    np.testing.assert_allclose(got[1], recurrent_gradient, rtol=1e-5)


def test_each_command_runs_cold_then_warm_on_one_cache_with_the_tf1_program_between(
    tmp_path, monkeypatch
):
    calls = []

    def fake_command(command):
        cache = command[command.index("--compile_cache") + 1]
        calls.append(("tfrnn", command[command.index("--workdir") + 1], os.path.exists(cache)))
        os.makedirs(cache, exist_ok=True)  # what a run leaves for the next
        return 10.0 + len(calls), f"time {10.0 + len(calls)} s = start-up 3.0 + …"

    def fake_tf1(peer, name, data_dir, folder):
        calls.append(("tf1", name, data_dir is not None))
        return 20.0

    monkeypatch.setattr(bench, "command_seconds", fake_command)
    monkeypatch.setattr(bench, "tf1_command_seconds", fake_tf1)
    monkeypatch.setattr(bench.mnist_data, "write_synthetic_idx", lambda folder, *_: None)
    options = bench.Options(
        rounds=1, commands=("C2", "echo"), workloads=("commands",), output_dir=str(tmp_path)
    )
    records = bench.run(options, None, log=lambda line: None, tf1_python=sys.executable)
    # Per command: cold (an empty cache), the TF1 program, warm (the cache the cold run filled).
    assert [(side, os.path.basename(where), cached) for side, where, cached in calls] == [
        ("tfrnn", "cold", False), ("tf1", "C2", True), ("tfrnn", "warm", True),
        ("tfrnn", "cold", False), ("tf1", "echo", True), ("tfrnn", "warm", True),
    ]  # fmt: skip
    assert [(r["workload"], r["metric"], r["tfrnn"], r["tf1"]) for r in records] == [
        ("--preset C2 command", "seconds launch to exit, cold compile cache", 11.0, 20.0),
        ("--preset C2 command", "seconds launch to exit, warm compile cache", 13.0, 20.0),
        ("echo suite (make echo-deps)", "seconds launch to exit, cold compile cache", 14.0, 20.0),
        ("echo suite (make echo-deps)", "seconds launch to exit, warm compile cache", 16.0, 20.0),
    ]
    assert records[0]["tf1_ratio"] == pytest.approx(20.0 / 11.0)
    assert records[1]["breakdown"] == "time 13.0 s = start-up 3.0 + …"


def test_a_command_is_timed_launch_to_exit_with_its_breakdown(tmp_path):
    options = bench.Options(command_flags=("--epochs", "1", "--series_length", "200000"))
    command = bench.tfrnn_command(options, "echo", None, str(tmp_path / "run"), "")
    assert command[1:5] == ["-m", "tfrnn.experiments.echo_deps", "--suite", "canonical"]
    seconds, breakdown = bench.command_seconds(command)
    total, parts = time_line_parts(breakdown)
    # The line comes before the process's exit; its total is rounded to 0.1 s, and the
    # process ends within a few hundredths of a second of printing it.
    assert 0 < total < seconds + 0.05
    assert parts["training"] > 0
    preset = bench.tfrnn_command(options, "C2", "mnist_files", "runs/x", "cache")
    assert preset[2:7] == ["tfrnn.experiments.mnist", "--preset", "C2", "--data_dir", "mnist_files"]
