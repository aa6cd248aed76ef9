"""Zoo networks exported in training form fuse to their plain counterpart's structure."""

from __future__ import annotations

import pytest

from reparam.zoo import create_model
from tests.onnx_reparam._helpers import assert_equal_in_ort, convert, export, ops


def _pair(tmp_path, name, plain, shape, **kwargs):
    src = export(create_model(name, **kwargs), tmp_path / f"{name}.onnx", shape, dynamic=False)
    plain_src = export(create_model(plain, **kwargs), tmp_path / f"{plain}.onnx", shape, dynamic=False)
    result = convert(src, tmp_path)
    assert result.report.check.passed
    assert_equal_in_ort(src, result.output, shape)
    return ops(src), ops(result.output), ops(plain_src), result


@pytest.mark.parametrize(("name", "plain"), [("acb_resnet18", "resnet18"), ("repvgg_a0", "repvgg_a0_plain")])
def test_narrow_networks(tmp_path, name, plain):
    before, after, plain_ops, result = _pair(tmp_path, name, plain, (2, 3, 64, 64), width=0.125)
    assert after["Conv"] == plain_ops["Conv"] < before["Conv"]
    assert "BatchNormalization" not in after
    assert not result.report.left_alone


@pytest.mark.slow
def test_acb_resnet18_full_size(tmp_path):
    before, after, plain_ops, result = _pair(tmp_path, "acb_resnet18", "resnet18", (1, 3, 224, 224))
    assert before["Conv"] == 54 and before["BatchNormalization"] == 54
    assert after["Conv"] == plain_ops["Conv"] == 20
    assert "BatchNormalization" not in after
    assert after == {k: v for k, v in plain_ops.items() if k != "BatchNormalization"}


@pytest.mark.slow
def test_repvgg_a0_full_size(tmp_path):
    before, after, plain_ops, result = _pair(tmp_path, "repvgg_a0", "repvgg_a0_plain", (1, 3, 224, 224))
    assert after["Conv"] == plain_ops["Conv"] == 22
    assert "BatchNormalization" not in after and "Add" not in after
