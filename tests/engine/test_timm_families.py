"""Every timm model family with re-parameterization hooks, converted by reparam and by timm itself.

timm ships ``fuse()`` / ``reparameterize()`` / ``switch_to_deploy()`` hooks in these families (see
``timm.models._manipulate.reparameterize_model``); each is tested in its smallest variant, with
random BatchNorm statistics and a small input. For each, reparam's deploy model must

* execute no more convolutions and no more batch norms than timm's own deploy model (counted at
  the dispatcher, so a conv or BN is counted however the model calls it);
* give the original's output within the fp32 rule (and timm's deploy output within twice that);
* run at batch 1, 2 and 3 and, where the original accepts another input size, at that size too,
  giving the original's output there.

Each model is converted once per process (a module-scoped fixture); the cheapest families run in
the fast suite, the rest are marked slow. EfficientViT (MIT) has no hooks: timm's deploy model is
the model itself there, which is still the bar reparam has to reach.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from reparam.engine import ConversionResult, convert
from reparam.numerics import randomize_batchnorm, scale_relative_error
from tests.engine._models import assert_untouched, fingerprint
from tests.timm_support import executed_ops, fp32_judgement, import_timm


@dataclass(frozen=True)
class Family:
    model: str
    size: int  # the input size converted at: the smallest the model's stages handle comfortably
    other_size: int | None  # a second input size the original accepts, or None


FAST = {
    "lcnetv2": Family("lcnetv2_small", 64, 96),
    "mobileone": Family("mobileone_s0", 64, 96),
    "repghost": Family("repghostnet_050", 64, 96),
}
SLOW = {
    "repvgg": Family("repvgg_a0", 64, 96),
    "fastvit": Family("fastvit_t8", 64, 96),
    "repvit": Family("repvit_m1", 64, 96),
    "ghostnetv3": Family("ghostnetv3_050", 64, 96),
    # LeViT's attention biases are tables for one resolution: 224x224 only
    "levit": Family("levit_128s", 224, None),
    "levit_conv": Family("levit_conv_128s", 224, None),
    "efficientvit_msra": Family("efficientvit_m0", 64, 96),
    "efficientvit_mit": Family("efficientvit_b0", 64, 96),
    "tiny_vit": Family("tiny_vit_5m_224", 64, 96),
    "nextvit": Family("nextvit_small", 64, 96),
    "shvit": Family("shvit_s1", 64, 96),
    "efficientvim": Family("efficientvim_m1", 64, 96),
    "iformer": Family("iformer_t", 64, 96),
}
PARAMS = [pytest.param(f, id=k) for k, f in FAST.items()] + [
    pytest.param(f, id=k, marks=pytest.mark.slow) for k, f in SLOW.items()
]


@dataclass
class Converted:
    family: Family
    model: nn.Module  # the original, eval, random BatchNorms
    result: ConversionResult
    theirs: nn.Module  # timm's reparameterize_model of the original
    x: torch.Tensor
    seconds: float
    before: dict  # the original's fingerprint before the conversion


def _inputs(batch: int, size: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x.clone())


@pytest.fixture(scope="module", params=PARAMS)
def converted(request) -> Converted:
    family: Family = request.param
    timm = import_timm()
    from timm.utils.model import reparameterize_model

    torch.manual_seed(0)
    model = timm.create_model(family.model, num_classes=10)
    randomize_batchnorm(model, 0).eval()
    x = _inputs(1, family.size, 0)
    before = fingerprint(model)
    start = time.perf_counter()
    result = convert(model, x)  # the built-in check runs too
    seconds = time.perf_counter() - start
    theirs = reparameterize_model(copy.deepcopy(model))
    return Converted(family, model, result, theirs, x, seconds, before)


def test_input_model_is_left_untouched(converted):
    assert_untouched(converted.model, converted.before)


def test_fuses_at_least_as_far_as_timm(converted):
    c = converted
    ours, timms = executed_ops(c.result.model, c.x), executed_ops(c.theirs, c.x)
    counts = (
        f"{c.family.model} ({c.result.report.tracing}, converted in {c.seconds:.1f} s): convs {ours.convs} "
        f"vs timm's {timms.convs}, batch norms {ours.batch_norms} vs timm's {timms.batch_norms}"
    )
    assert ours.convs <= timms.convs, counts
    assert ours.batch_norms <= timms.batch_norms, counts


def test_deploy_model_is_exact(converted):
    c = converted
    ref, ours, timms = _run(c.model, c.x), _run(c.result.model, c.x), _run(c.theirs, c.x)
    limit = c.result.report.check.tolerance
    err = scale_relative_error(ref.numpy(), ours.numpy())
    assert err <= limit, f"{c.family.model}: error {err:.3g} > {limit:.3g}"
    assert scale_relative_error(timms.numpy(), ours.numpy()) <= 2 * limit


@pytest.mark.parametrize("batch", [1, 2, 3])
def test_deploy_model_runs_at_other_batch_sizes(converted, batch):
    c = converted
    x = _inputs(batch, c.family.size, batch)
    _judge(c, x)


def test_deploy_model_runs_at_another_input_size(converted):
    c = converted
    if c.family.other_size is None:
        pytest.skip(f"{c.family.model} runs at {c.family.size}x{c.family.size} only")
    for batch in (1, 2):
        _judge(c, _inputs(batch, c.family.other_size, 10 + batch))


def _judge(c: Converted, x: torch.Tensor) -> None:
    ref = _run(c.model, x)
    report = c.result.report
    notes = "; ".join(report.notes)[:300]
    where = (
        f"{c.family.model} converted at {list(c.x.shape)} ({report.tracing}; {notes}), run at {list(x.shape)}"
    )
    try:
        got = _run(c.result.model, x)
    except Exception as exc:
        pytest.fail(f"{where}: the deploy model fails ({type(exc).__name__}: {str(exc)[:200]})")
    assert got.shape == ref.shape, where
    err, limit = fp32_judgement(c.model, x, ref, got)
    assert err <= limit, f"{where}: error {err:.3g} > {limit:.3g}"
