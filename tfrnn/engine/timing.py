"""Where a run's wall time goes: phases that add up to it, and the compiling inside them.

A training command ends with one line that splits its wall time, from the process's start to
the line, into :data:`PHASES`::

    time 21.3 s = start-up 3.6 + data 0.9 + compile 4.1 + training 9.8 + evaluation 1.3
                  + save and export 1.6          (on one line)

:class:`Phases` is a stopwatch with one hand per phase: :meth:`Phases.enter` stops the running
phase and starts another, so every second between the start and the line is in exactly one
phase. Compiling happens inside the calls of the training and evaluation steps (the first
call of a ``tf.function`` traces it, and XLA compiles it or loads it from the compile cache);
:class:`CompileMeter` tells those calls from the steady ones and estimates the compiling as
the traced calls' time beyond what as many steady units of work take. :meth:`Phases.line`
moves that estimate from training and evaluation to compile. A command measures its run
inside :func:`measured`, and the code it runs enters phases on :func:`current`.
"""

from __future__ import annotations

import contextlib
import os
import time

PHASES = ("start-up", "data", "compile", "training", "evaluation", "save and export")


def process_start() -> float:
    """When this process started, as ``time.time()``: from /proc on Linux (to 10 ms), else
    now."""
    try:
        with open("/proc/self/stat") as handle:
            # Field 22, the start in clock ticks after boot; the command name (field 2) may
            # hold spaces, so count from its closing parenthesis.
            ticks = int(handle.read().rpartition(")")[2].split()[19])
        with open("/proc/uptime") as handle:
            uptime = float(handle.read().split()[0])
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.time()


class Phases:
    """A run's wall time by phase (:data:`PHASES`), from ``started`` (a ``time.time()``) on.

    The first phase is ``start-up``; every second until :meth:`line` belongs to the phase
    that was running then.
    """

    def __init__(self, started: float | None = None):
        self.started = time.time() if started is None else started
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.current, self._since = "start-up", self.started
        self.compiling = {"training": 0.0, "evaluation": 0.0}

    def add_compiling(self, seconds: dict) -> None:
        """Counts ``seconds`` ({"training": …, "evaluation": …}) of those phases as compile."""
        for phase, compiling in seconds.items():
            self.compiling[phase] += compiling

    def enter(self, phase: str) -> str:
        """Ends the running phase and starts ``phase``; returns the phase it ended."""
        if phase not in self.seconds:
            raise ValueError(f"phase must be one of {', '.join(PHASES)}; got {phase!r}")
        now = time.time()
        self.seconds[self.current] += now - self._since
        previous, self.current, self._since = self.current, phase, now
        return previous

    @contextlib.contextmanager
    def phase(self, phase: str):
        """``phase`` for the block's length, then the phase that ran before it again."""
        previous = self.enter(phase)
        try:
            yield
        finally:
            self.enter(previous)

    def split(self) -> dict:
        """Seconds by phase up to now, the compiling moved out of training and evaluation."""
        self.enter(self.current)
        seconds = dict(self.seconds)
        for phase, compiling in self.compiling.items():
            moved = min(compiling, seconds[phase])
            seconds[phase] -= moved
            seconds["compile"] += moved
        return seconds

    def line(self) -> str:
        """``time 21.3 s = start-up 3.6 + data 0.9 + …``: the whole and its phases."""
        seconds = self.split()
        parts = " + ".join(f"{phase} {seconds[phase]:.1f}" for phase in PHASES)
        return f"time {sum(seconds.values()):.1f} s = {parts}"


class CompileMeter:
    """Times the calls of some ``tf.function``\\ s and estimates the time spent compiling them.

    A call during which one of the functions traced (its tracing count went up) compiled a
    program, or loaded it from the compile cache; the others are steady. Each call does some
    units of work (training steps, evaluation batches): the compiling is the traced calls'
    time beyond what their units take at the steady calls' rate, or none while no steady call
    has been timed.
    """

    def __init__(self, *functions):
        self.functions = functions
        self.traced_seconds = self.traced_units = 0.0
        self.steady_seconds = self.steady_units = 0.0

    def _traces(self) -> int:
        return sum(function.experimental_get_tracing_count() for function in self.functions)

    @contextlib.contextmanager
    def call(self, units: float):
        """Times the block, one call of ``units`` units of work."""
        traces, start = self._traces(), time.perf_counter()
        yield
        seconds = time.perf_counter() - start
        if self._traces() > traces:
            self.traced_seconds += seconds
            self.traced_units += units
        else:
            self.steady_seconds += seconds
            self.steady_units += units

    def compile_seconds(self) -> float:
        """The estimated seconds of compiling so far."""
        if not self.steady_units:
            return 0.0
        rate = self.steady_seconds / self.steady_units
        return max(0.0, self.traced_seconds - self.traced_units * rate)


_measured: Phases | None = None


@contextlib.contextmanager
def measured():
    """Measures a command's run: inside the block, :func:`current` is the :class:`Phases`
    yielded, started when the process did (:func:`process_start`), which the block's
    training enters."""
    global _measured
    previous, _measured = _measured, Phases(process_start())
    try:
        yield _measured
    finally:
        _measured = previous


def current() -> Phases:
    """The phases of the run being measured (:func:`measured`); outside one, a new
    :class:`Phases` that nothing reads."""
    return _measured if _measured is not None else Phases()
