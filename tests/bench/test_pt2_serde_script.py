"""benchmarks/pt2_serde.py runs as its docstring shows and checks what it compares."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "pt2_serde.py"


def test_the_script_times_both_paths_and_they_write_the_same_bytes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    main = runpy.run_path(str(SCRIPT))["main"]
    assert main(["--model", "acb_resnet18", "--size", "32", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "save: plain" in out and "load: plain" in out and "memoized/plain" in out
