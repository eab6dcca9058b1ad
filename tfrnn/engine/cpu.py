"""What CPU this is: its model name and the vector instruction sets its kernels can use.

Speed depends on them: XLA and PyTorch compile or pick kernels for the instruction sets the
CPU reports, so every speed figure names the CPU it was measured on (``make bench``'s
environment.json).
"""

from __future__ import annotations

import platform

CPUINFO = "/proc/cpuinfo"


def _cpuinfo_field(name: str) -> str | None:
    """The first ``name : value`` line's value in /proc/cpuinfo, or None (no such file)."""
    try:
        with open(CPUINFO) as handle:
            for line in handle:
                if line.split(":", 1)[0].strip() == name:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def model_name() -> str:
    """The CPU's model, e.g. ``Intel(R) Xeon(R) Processor`` or ``AMD EPYC 7B13``."""
    return _cpuinfo_field("model name") or platform.processor() or "unknown"


def instruction_sets() -> tuple[str, ...]:
    """The vector and matrix instruction sets the CPU reports (/proc/cpuinfo's flags: SSE4,
    AVX, AVX2, FMA, AVX-512, AMX, ...), sorted; empty where the file is missing."""
    flags = (_cpuinfo_field("flags") or "").split()
    return tuple(sorted(flag for flag in flags if flag.startswith(("sse4", "avx", "fma", "amx"))))
