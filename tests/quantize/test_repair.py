"""A RepVGG model with a deliberately wide identity-branch BN: the risk report names that branch, the
sensitivity pass keeps the layer reading its output float and agreement with the training model
comes back above the target on held-out data. A benign model needs no exclusion."""

from __future__ import annotations

import pytest

from reparam.quantize import quantize
from reparam.quantize.evaluate import verify_int8
from reparam.verify.quant import quantization_risk

from ._models import WIDE_BLOCK, WIDE_CHANNELS, batches, export_deploy, synthetic_data, tiny_repvgg

TARGET = 0.98
INT8 = "int8 Q/DQ ONNX"


@pytest.fixture(scope="module")
def data():
    calib, _ = synthetic_data(128, 1)
    held_out, labels = synthetic_data(256, 2)  # a different seed: not the calibration samples
    return batches(calib), batches(held_out), labels


def _run(tmp_path, wide: bool, data):
    calib, held_out, labels = data
    model = tiny_repvgg(wide=wide)
    conv = export_deploy(model, tmp_path / "model.onnx", calib[0]["input"][:2])
    risks = {r.fused: r for r in quantization_risk(model, conv.model, conv.record)}
    plain = quantize(tmp_path / "model.onnx", tmp_path / "plain.onnx", calib)
    fixed = quantize(tmp_path / "model.onnx", tmp_path / "fixed.onnx", calib, repair_target=TARGET)
    check = {
        name: verify_int8(
            model, tmp_path / f"{name}.onnx", held_out, labels=labels, record=conv.record, target=TARGET
        )
        for name in ("plain", "fixed")
    }
    return risks, plain, fixed, check


def test_wide_identity_branch_is_blamed_and_repaired(tmp_path, data):
    risks, plain, fixed, check = _run(tmp_path, True, data)
    risk = risks[f"{WIDE_BLOCK}.rbr_dense"]
    assert risk.risk == "high" and risk.culprit == f"{WIDE_BLOCK}.rbr_identity"
    assert "BN gain" in risk.reason and str(list(WIDE_CHANNELS)) in risk.reason
    identity = next(b for b in risk.branches if b.branch == risk.culprit)
    assert identity.kind == "identity bn" and identity.ratio_without < 2.0 < 10.0 < risk.after_ratio
    assert all(r.risk != "high" for name, r in risks.items() if name != f"{WIDE_BLOCK}.rbr_dense")
    assert any("QARepVGG" in r for r in risk.remedies)

    # plain int8 loses the training model's predictions on held-out data ...
    assert not check["plain"].passed and check["plain"].metric(INT8, "top1") < 0.9
    assert check["plain"].accuracy[INT8] < check["plain"].accuracy["training model"] - 0.05
    # ... the report localizes the first block that diverges: the one reading the widened channels
    assert check["plain"].report.candidates[0].divergence.first_diverging == "stage3.0"
    # the repair keeps exactly that consumer float and agreement comes back above the target
    repair = fixed.repair
    assert repair.sensitivity[0].module == "stage3.0.rbr_dense"
    assert repair.sensitivity[0].damage > 10 * repair.sensitivity[1].damage
    assert repair.met and fixed.excluded == ["/rbr_dense_4/Conv"] and repair.cost().startswith("1 of 8")
    assert check["fixed"].passed and check["fixed"].metric(INT8, "top1") >= TARGET
    assert abs(check["fixed"].accuracy[INT8] - check["fixed"].accuracy["training model"]) <= 0.02


def test_benign_model_low_risk_and_no_exclusions(tmp_path, data):
    risks, plain, fixed, check = _run(tmp_path, False, data)
    assert all(r.risk != "high" for r in risks.values())
    assert max(r.after_ratio for r in risks.values()) < 10.0
    assert fixed.excluded == [] and fixed.repair.met and fixed.repair.sensitivity == []
    assert check["plain"].passed and check["plain"].metric(INT8, "top1") >= TARGET
    assert check["plain"].metric(INT8, "cosine") >= 0.99
    assert check["plain"].accuracy[INT8] >= check["plain"].accuracy["training model"] - 0.01
