"""benchmarks/parallel_export.py runs as its docstring shows and reports both sides."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "parallel_export.py"


@pytest.mark.slow
def test_the_script_pairs_the_sequential_and_the_forked_export(capsys: pytest.CaptureFixture[str]) -> None:
    main = runpy.run_path(str(SCRIPT))["main"]
    assert main(["--model", "acb_resnet18", "--size", "32", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "wall s: sequential" in out and "peak MiB (summed PSS): sequential" in out
    assert "forked/sequential" in out
