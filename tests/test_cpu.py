"""Tests of tfrnn.engine.cpu on generated /proc/cpuinfo files."""

import pytest

from tfrnn.engine import cpu

XEON = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx avx2 avx512f avx512bw amx_tile aes

processor\t: 1
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx avx2 avx512f avx512bw amx_tile aes
"""
EPYC = """processor\t: 0
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx avx2 aes
"""


@pytest.fixture
def cpuinfo(tmp_path, monkeypatch):
    """Writes the text given to a file that tfrnn.engine.cpu reads as /proc/cpuinfo; given
    None, that file is missing."""

    def write(text):
        path = tmp_path / "cpuinfo"
        if text is not None:
            path.write_text(text)
        monkeypatch.setattr(cpu, "CPUINFO", str(path))

    return write


def test_an_avx512_xeon(cpuinfo):
    cpuinfo(XEON)
    assert cpu.model_name() == "Intel(R) Xeon(R) Processor"
    assert cpu.instruction_sets() == (
        "amx_tile", "avx", "avx2", "avx512bw", "avx512f", "fma", "sse4_1", "sse4_2"
    )  # fmt: skip


def test_an_avx2_epyc(cpuinfo):
    cpuinfo(EPYC)
    assert cpu.model_name() == "AMD EPYC 7B13"
    assert cpu.instruction_sets() == ("avx", "avx2", "fma", "sse4_1", "sse4_2")


def test_without_cpuinfo_nothing_is_claimed(cpuinfo):
    cpuinfo(None)
    assert cpu.instruction_sets() == ()
    assert cpu.model_name()  # platform's answer, or "unknown"
