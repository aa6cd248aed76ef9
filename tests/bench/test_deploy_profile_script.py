"""benchmarks/deploy_profile.py runs as its docstring shows and reports both sides of a pair."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "deploy_profile.py"


def _sides(lines: list[str], call: str) -> tuple[str, str]:
    """The two cells (default | legacy) of a call's row."""
    row = next(line for line in lines if line.startswith("  call ") and call in line)
    first, second = row.split("|")
    return first.split(call, 1)[1].strip(), second.strip()


@pytest.mark.slow
def test_the_script_profiles_the_default_and_the_legacy_deploy(capsys: pytest.CaptureFixture[str]) -> None:
    main = runpy.run_path(str(SCRIPT))["main"]
    assert main(["--model", "acb_resnet18", "--size", "32", "--rounds", "1", "--compare", "legacy"]) == 0
    lines = capsys.readouterr().out.splitlines()
    dynamo, legacy = _sides(lines, "run_decompositions")
    assert not dynamo.startswith("-") and legacy.startswith("-")  # only torch.onnx's dynamo path decomposes
    dynamo, legacy = _sides(lines, "free-axes check")
    assert dynamo.startswith("0.00 s") and not legacy.startswith("0.00 s")  # a traced file is run again
    assert any(line.strip().startswith("wall legacy exporter / dynamo exporter:") for line in lines)
