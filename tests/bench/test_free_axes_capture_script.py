"""benchmarks/free_axes_capture.py runs as its docstring shows and checks what it compares."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "free_axes_capture.py"


def test_the_script_times_both_captures_and_they_write_the_same_program(
    capsys: pytest.CaptureFixture[str],
) -> None:
    main = runpy.run_path(str(SCRIPT))["main"]
    assert main(["--model", "acb_resnet18", "--size", "32", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "capture: cache on" in out and "off/on" in out
