"""Randomized models, fusible and near miss: zero wrong models, zero raw exceptions.

Each generated model is converted *without* the built-in check, so that nothing but the passes
themselves stands between the model and a wrong result; the test then judges the deploy model
with the fp32 rule. Every outcome must be a correct model or one ReparamError.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from reparam.engine import convert
from reparam.errors import ReparamError
from reparam.numerics import fp32_limit, scale_relative_error
from reparam.profile import count_macs
from tests.engine._models import assert_untouched, count, fingerprint
from tests.engine._random_models import FAMILIES, FUSIBLE, generate

BN = nn.modules.batchnorm._BatchNorm
FAST_SEEDS = range(3)


def _run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x.clone())


def _fp32_noise(model: nn.Module, x: torch.Tensor, out: torch.Tensor) -> float:
    with torch.no_grad():
        out64 = copy.deepcopy(model).double()(x.clone().double())
    return scale_relative_error(out64.numpy(), out.double().numpy())


def judge(seed: int, family: str | None) -> str:
    """Convert one generated model; returns 'fused' or 'refused'; fails the test on a wrong model."""
    g = generate(seed, family)
    family = g.family
    reference_model = copy.deepcopy(g.model).eval()  # a training-mode BN is converted as its eval form
    before = fingerprint(g.model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = convert(g.model, g.x, check=False)
        except ReparamError as exc:
            assert exc.message and "\n" not in exc.message
            assert g.expected_convs is None, f"{family}: a fusible model was refused: {exc}"
            return "refused"
        finally:
            assert_untouched(g.model, before)
    deploy = result.model
    assert result.report.before.macs == count_macs(reference_model, (g.x.clone(),))
    assert result.report.after.macs == count_macs(deploy, (g.x.clone(),))
    ref, got = _run(reference_model, g.x), _run(deploy, g.x)
    assert ref.shape == got.shape
    limit = fp32_limit(_fp32_noise(reference_model, g.x, ref))
    err = scale_relative_error(ref.numpy(), got.numpy())
    assert err <= limit, f"{family} seed {seed}: wrong deploy model (error {err:.3g} > {limit:.3g})"
    if g.expected_convs is not None:
        assert count(deploy, BN) == 0, f"{family}: BatchNorm left"
        assert count(deploy, nn.Conv2d) == g.expected_convs, f"{family}: {count(deploy, nn.Conv2d)} convs"
    if family == "training_bn":
        assert any("training mode" in str(w.message) for w in caught)
    if family in ("inplace_input", "inplace_between"):  # the in-place op survives as its out-of-place form
        assert ("x.mul(2)" if family == "inplace_input" else "inplace = False") in deploy.code
    return "fused"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("seed", FAST_SEEDS)
def test_generated_model_is_exact_or_refused(family, seed):
    judge(seed, family)


def test_fusible_families_reach_the_plain_conv_count():
    outcomes = {f: judge(11, f) for f in FUSIBLE}
    assert set(outcomes.values()) == {"fused"}


@pytest.mark.slow
def test_many_generated_models_are_exact_or_refused():
    outcomes = [judge(seed, None if seed % 3 else FAMILIES[seed % len(FAMILIES)]) for seed in range(400)]
    assert outcomes.count("fused") > 300
