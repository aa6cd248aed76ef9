import json

import numpy as np

from reparam.equivalence.compare import BlockError, Divergence
from reparam.verify import VerifyReport, compare_outputs, make_tolerance
from reparam.verify.quant import LayerRisk


def _report():
    rng = np.random.default_rng(0)
    ref = {"output": rng.standard_normal((4, 10))}
    good = compare_outputs(ref, {"output": ref["output"] + 1e-8}, name="model.pt2", kind="pt2")
    bad_out = ref["output"].copy()
    bad_out[0, 0] = np.nan
    bad = compare_outputs(ref, {"output": bad_out}, name="model.onnx", kind="onnx")
    bad.divergence = Divergence(
        [BlockError("stem", 1e-8, 1.0, 1e-8, True), BlockError("layer1", 0.3, 0.9, 2.0, False)], "layer1"
    )
    report = VerifyReport(
        "ckpt.pt",
        make_tolerance("fp32"),
        {"source": "random", "shape": "4x3x8x8"},
        [good, bad],
        [LayerRisk("layer1.conv", "layer1.rbr_dense.conv", 8, 1.0, 1.5, 9.0, 14.0, 14.0 / 1.5, "high")],
    )
    return report


def test_report_files_contain_the_metrics(tmp_path):
    report = _report()
    assert not report.passed
    report.write_json(tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["passed"] is False
    cands = {c["name"]: c for c in data["candidates"]}
    assert cands["model.pt2"]["passed"] and not cands["model.onnx"]["passed"]
    assert cands["model.onnx"]["outputs"][0]["nonfinite"] == 1
    assert cands["model.onnx"]["divergence"]["first_diverging_block"] == "layer1"
    assert data["quantization_risk"][0]["risk"] == "high"
    assert data["tolerance"]["max_scale_rel"] == 1e-5

    report.write_markdown(tmp_path / "r.md")
    md = (tmp_path / "r.md").read_text()
    assert md.startswith("## reparam verify: FAIL")
    assert "| candidate | output | status | scale-rel | ref noise |" in md
    assert "| model.onnx | output | FAIL |" in md
    assert "first diverging block: layer1" in md
    assert "| `layer1.conv` | 8 |" in md

    assert report.write_plot(tmp_path / "e.png") is None
    png = (tmp_path / "e.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


def test_terminal_rendering_names_failures():
    text = _report().render_text()
    assert "model.onnx: output: 1 NaN/Inf values where the reference is finite" in text
    assert "first diverging block: layer1" in text
    assert "result: FAIL" in text
