"""The shared command wrapper: one-line errors, exit statuses, warnings."""

from __future__ import annotations

import warnings

import pytest

from apparate_trt.cli._common import Parser, run_main
from apparate_trt.errors import ApparateError


def test_user_error_is_one_line_with_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    def fail() -> None:
        raise ApparateError("the file is bad\nfix it")

    assert run_main(fail) == 2
    assert capsys.readouterr().err == "error: the file is bad; fix it\n"


def test_ctrl_c_exits_130(capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted() -> None:
        raise KeyboardInterrupt

    assert run_main(interrupted) == 130
    assert capsys.readouterr().err.strip() == "interrupted"


def test_success_and_warning_format() -> None:
    assert run_main(lambda: None) == 0
    assert run_main(lambda: 0) == 0
    text = warnings.formatwarning("labels ignored\nsee docs", UserWarning, "x.py", 1)
    assert text == "warning: labels ignored; see docs\n"


def test_bugs_are_not_hidden() -> None:
    def bug() -> None:
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        run_main(bug)


def test_usage_error_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    parser = Parser(prog="tool")
    parser.add_argument("--n", type=int, required=True)
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--n", "x"])
    assert info.value.code == 2
    assert capsys.readouterr().err == "error: argument --n: invalid int value: 'x' (see tool --help)\n"
