"""examples/scalenet_slim_demo.py end to end at a token size: it trains, slims, compares and writes."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn")

_PATH = Path(__file__).resolve().parents[2] / "examples" / "scalenet_slim_demo.py"


@pytest.mark.slow
def test_demo_runs_and_writes_its_table(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("scalenet_slim_demo", _PATH)
    demo = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("scalenet_slim_demo", demo)
    spec.loader.exec_module(demo)
    assert (
        demo.main(["--out", str(tmp_path), "--seeds", "0", "--epochs", "1", "--size", "16", "--threads", "1"])
        == 0
    )
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["slim_macs"] <= results["uniform_macs"]
    assert [r["seed"] for r in results["rows"]] == [0]
    assert "| training seed |" in (tmp_path / "results.md").read_text()
    written = {p.name for p in tmp_path.iterdir()}
    assert {"slim.pth", "slim.structure.json", "slim.report.json", "slim.report.png"} <= written
    assert "slim allocation" in capsys.readouterr().out
