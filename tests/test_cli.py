"""Tests of tfrnn.cli: a UsageError becomes one line on stderr and exit status 2."""

import pytest

from tfrnn.cli import UsageError, run


def test_usage_error_is_one_line_and_exit_2(capsys):
    def main(argv):
        raise UsageError("--num_steps must be positive, got 0")

    with pytest.raises(SystemExit) as exit_info:
        run(main, argv=["prog"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: --num_steps must be positive, got 0\n"


def test_other_errors_are_not_hidden():
    def main(argv):
        raise RuntimeError("a bug, not a usage problem")

    with pytest.raises(RuntimeError, match="a bug"):
        run(main, argv=["prog"])
