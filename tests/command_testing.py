"""Running a tfrnn command in a real process, with an event at a fixed training step.

Not a test module: a helper of the tests whose point is a process (a kill, a signal, a full
disk, the lock, the log). The event runs right after the N-th progress update, which the
engine makes once per training step, right after it; stdout is a pipe, so the progress is
the plain log's (``tfrnn.engine.reporting.PlainProgress``) and nothing depends on timing.
"""

import dataclasses
import os
import pathlib
import subprocess
import sys

import pytest

from tfrnn.tasks.mnist import config as mnist_config
from tfrnn.tasks.mnist import train as mnist_train

REPO = pathlib.Path(__file__).resolve().parent.parent
SIGKILL = "os.kill(os.getpid(), signal.SIGKILL)"  # an ``action``: the process dies at once


def command_script(module, at_update=None, action=SIGKILL):
    """Python source for ``python -m tfrnn.experiments.<module>`` (its arguments after
    ``-c``), running ``action`` (Python source, with os, signal and resource imported) right
    after the ``at_update``-th progress update."""
    script = "import runpy, sys\n"
    if at_update:
        script += (
            "import os, signal, resource\n"
            "from tfrnn.engine import reporting\n"
            "update, calls = reporting.PlainProgress.update, []\n"
            "def hooked(self, *args, **kwargs):\n"
            "    calls.append(1)\n"
            f"    if len(calls) == {at_update}:\n"
            f"        {action}\n"
            "    return update(self, *args, **kwargs)\n"
            "reporting.PlainProgress.update = hooked\n"
        )
    return script + (
        f"sys.argv = ['{module}'] + sys.argv[1:]\n"
        f"runpy.run_module('tfrnn.experiments.{module}', run_name='__main__')\n"
    )


def user_environment(**extra) -> dict:
    """The environment a user's shell gives a command: this process's without the TensorFlow
    log level a test may have set, so that the command quiets TensorFlow's start-up itself
    (:func:`tfrnn.cli.quiet_tensorflow`) as it does for a user; with ``extra`` added."""
    environment = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return environment | extra


def run_command(module, args, at_update=None, action=SIGKILL, timeout=240):
    """Runs :func:`command_script` with ``args``; the finished process (text output)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, "-c", command_script(module, at_update, action), *args],
        capture_output=True,  # stdout is a pipe, not a terminal: the plain log
        text=True,
        env=env,
        timeout=timeout,
    )


def tiny_mnist_config(data_dir, batch_size, epochs):
    """The configuration the tests' MNIST commands run: 8 units on the IDX files of
    ``data_dir``, the command's defaults otherwise."""
    return dataclasses.replace(
        mnist_config.Config(), data_dir=data_dir, units=8, batch_size=batch_size, epochs=epochs
    )


def trained_in_process(config, workdir, checkpoint_every):
    """``workdir`` after an uninterrupted run of ``config`` in this process: the reference a
    stopped and resumed command must end equal to."""
    mnist_train.train_and_evaluate(
        config, str(workdir), checkpoint_every=checkpoint_every, verbose=False
    )
    return workdir


def time_line_parts(line: str) -> tuple[float, dict]:
    """(the total, {phase: seconds}) of a command's ``time … s = phase s + …`` line."""
    total, _, parts = line.removeprefix("time ").partition(" s = ")
    split = dict(part.rsplit(" ", 1) for part in parts.split(" + "))
    return float(total), {phase: float(seconds) for phase, seconds in split.items()}


def assert_time_line_adds_up(stdout: str) -> None:
    """The command's last line splits its time into the phases, and they add up."""
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("time "), last
    total, parts = time_line_parts(last)
    assert list(parts) == [
        "start-up",
        "data",
        "compile",
        "training",
        "evaluation",
        "save and export",
    ]
    assert sum(parts.values()) == pytest.approx(total, abs=0.35), last  # each rounded to 0.1
    assert parts["training"] > 0 and parts["start-up"] > 0, last
