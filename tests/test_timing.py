"""Tests of tfrnn.engine.timing: the phases add up to the wall time, compiling is told apart."""

import subprocess
import sys
import time

import pytest
import tensorflow as tf
from command_testing import time_line_parts

from tfrnn.engine import timing


def test_every_second_is_in_one_phase_and_the_line_adds_up():
    started = time.time() - 0.05  # the process started a little before
    phases = timing.Phases(started)
    phases.enter("data")
    time.sleep(0.02)
    with phases.phase("evaluation"):
        time.sleep(0.03)
    assert phases.current == "data"  # the block's end returned to the phase before it
    phases.enter("training")
    time.sleep(0.02)
    seconds = phases.split()
    assert sum(seconds.values()) == pytest.approx(time.time() - started, abs=0.01)
    assert seconds["start-up"] >= 0.05 and seconds["evaluation"] >= 0.03
    assert seconds["compile"] == seconds["save and export"] == 0.0
    total, parts = time_line_parts(phases.line())
    assert list(parts) == list(timing.PHASES)
    assert sum(parts.values()) == pytest.approx(total, abs=0.35)  # each rounded to 0.1


def test_compiling_moves_out_of_training_and_evaluation_and_never_below_zero():
    phases = timing.Phases(time.time())
    with phases.phase("training"):
        time.sleep(0.05)
    with phases.phase("evaluation"):
        time.sleep(0.01)
    phases.add_compiling({"training": 0.03, "evaluation": 1.0})
    seconds = phases.split()
    assert seconds["training"] == pytest.approx(0.02, abs=0.01)
    assert seconds["evaluation"] == 0.0  # at most what the phase had
    assert seconds["compile"] == pytest.approx(0.03 + 0.01, abs=0.01)
    with pytest.raises(ValueError, match="phase must be one of"):
        phases.enter("thinking")


def test_the_meter_counts_calls_that_traced_as_compiling_beyond_the_steady_rate():
    @tf.function(jit_compile=True)
    def work(x):
        return tf.reduce_sum(tf.matmul(x, x))

    meter = timing.CompileMeter(work)
    square = tf.ones((64, 64))
    with meter.call(1):
        work(square)  # traces and compiles
    assert meter.compile_seconds() == 0.0  # no steady call yet to compare with
    for _ in range(5):
        with meter.call(1):
            work(square)
    first = meter.compile_seconds()
    assert first > 0 and meter.traced_units == 1 and meter.steady_units == 5
    with meter.call(1):
        work(tf.ones((32, 32)))  # a new shape: traced and compiled again
    assert meter.traced_units == 2 and meter.compile_seconds() > first


def test_the_process_start_is_when_python_started():
    script = "import time; now = time.time(); from tfrnn.engine import timing; "
    script += "print(now - timing.process_start())"
    finished = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    # The time Python took to start, read to the kernel's 10 ms ticks.
    assert -0.02 <= float(finished.stdout) < 5.0
