"""The built-in check judges fp32 with the verifier's rule: max(1e-5, 10 x the original's own noise)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from reparam.engine import PassResult, convert, register_pass
from reparam.engine import base as engine_base
from reparam.errors import MismatchError
from reparam.numerics import FP32_SCALE_REL, calibrate_batchnorm, fp32_limit
from reparam.zoo import create_model


def _deep() -> nn.Module:
    # A tiny ResNet-50 whose fp32 output is ~3e-5 (scale-relative) away from its float64 output.
    torch.manual_seed(0)
    return calibrate_batchnorm(create_model("resnet50", width=0.125, num_classes=10), 0)


def test_fp32_limit_rule():
    assert fp32_limit(None) == fp32_limit(float("nan")) == FP32_SCALE_REL
    assert fp32_limit(1e-7) == FP32_SCALE_REL
    assert fp32_limit(3e-5) == pytest.approx(3e-4)


def test_deep_model_passes_with_a_limit_from_its_own_noise():
    model = _deep()
    result = convert(model, torch.randn(1, 3, 32, 32))
    check = result.report.check
    assert check.passed
    # the base 1e-5 would have failed this correct conversion
    assert check.relative_error > FP32_SCALE_REL
    assert check.reference_noise is not None and check.reference_noise > 1e-6
    assert check.tolerance == pytest.approx(fp32_limit(check.reference_noise))
    assert "rounding error" in result.report.render()
    inplace = convert(_deep(), torch.randn(1, 3, 32, 32), inplace=True).report.check
    assert inplace.passed and inplace.reference_noise == pytest.approx(check.reference_noise)


class _OneChannelOff:
    name = "test_one_channel_off"
    description = "scales one output channel of the last fused conv by 1.01"

    def run(self, gm, ctx):
        convs = [m for m in gm.modules() if isinstance(m, nn.Conv2d)]
        if not convs or getattr(convs[-1], "_off", False):
            return PassResult(gm, False, [])
        with torch.no_grad():
            convs[-1].weight[0].mul_(1.01)
        convs[-1]._off = True
        return PassResult(gm, True, [])


def test_a_one_percent_error_in_one_channel_still_fails_and_is_located():
    register_pass(_OneChannelOff)
    try:
        with pytest.raises(MismatchError) as info:
            convert(_deep(), torch.randn(1, 3, 32, 32), passes=["fold_bn", "test_one_channel_off"])
        assert "layer4" in info.value.message
    finally:
        engine_base._REGISTRY.pop("test_one_channel_off", None)
