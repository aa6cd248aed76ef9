"""Fusions the authors' own converters do: Diverse Branch Block's average branch and LeViT's LinearNorm.

Every fused model is checked numerically (fp32 rule, BN statistics and affine parameters
randomized, several batch and spatial sizes) and structurally (conv and batch-norm counts); near
misses stay unfused, exact, with a reason in the report.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
from torch import fx, nn

from reparam.engine import convert
from reparam.numerics import fp32_limit, randomize_batchnorm, scale_relative_error
from tests.engine import _published as pub
from tests.engine._models import assert_untouched, count, fingerprint
from tests.engine.test_published_designs import structure
from tests.timm_support import import_timm

BN = nn.modules.batchnorm._BatchNorm


def _prepared(model: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomize_batchnorm(model, seed + 1).eval()


def _assert_exact(model: nn.Module, deploy: nn.Module, reference64: nn.Module, x: torch.Tensor) -> None:
    """The deploy model's error on ``x`` is within the fp32 rule (10x the reference's own fp32 noise)."""
    with torch.no_grad():
        ref, got = model(x.clone()), deploy(x.clone())
        ref64 = reference64(x.clone().double())
    assert ref.shape == got.shape
    limit = fp32_limit(scale_relative_error(ref64.numpy(), ref.double().numpy()))
    err = scale_relative_error(ref.numpy(), got.numpy())
    assert err <= limit, f"error {err:.3g} > {limit:.3g} at input {tuple(x.shape)}"


def _converted(model: nn.Module, x: torch.Tensor, *others: torch.Tensor):
    """Convert ``model`` on ``x``; check the input model is untouched and the deploy model exact on all inputs."""
    reference64 = copy.deepcopy(model).double()
    before = fingerprint(model)
    result = convert(model, x)
    assert_untouched(model, before)
    gen = torch.Generator().manual_seed(7)
    for shape in [x.shape, *(o.shape for o in others)]:
        _assert_exact(model, result.model, reference64, torch.randn(shape, generator=gen))
    return result


def _reasons(result) -> str:
    return " | ".join(item.reason for item in result.report.left_alone)


@pytest.mark.parametrize(
    ("c", "k", "stride", "groups"),
    [(4, 3, 1, 1), (4, 5, 1, 1), (4, 3, 2, 2), (8, 5, 2, 4), (4, 3, 1, 4)],
)
def test_diverse_branch_block_becomes_one_conv_like_its_own_converter(c, k, stride, groups):
    model = _prepared(pub.DiverseBranchBlock(c, c, k, stride, groups))
    x = torch.randn(2, c, 9, 9)
    result = _converted(model, x, torch.randn(1, c, 9, 9), torch.randn(3, c, 9, 9), torch.randn(2, c, 12, 10))
    assert structure(result.model) == {"convs": 1, "norms": 0, "param_only": 0}, result.report.render()
    assert count(result.model, nn.AvgPool2d) == 0
    conv = next(m for m in result.model.modules() if isinstance(m, nn.Conv2d))
    # the deploy conv of the authors' switch_to_deploy: dbb_origin's geometry
    assert conv.kernel_size == (k, k) and conv.padding == (k // 2, k // 2)
    assert conv.stride == (stride, stride) and conv.groups == groups


def test_average_branch_fusion_is_reported_with_its_sources():
    model = _prepared(pub.DiverseBranchBlock(4, 4, 3))
    result = _converted(model, torch.randn(2, 4, 9, 9))
    merged = [e for e in result.report.fusions if e.pass_name == "merge_branches"]
    # the conv + BatchNorm branches merge first (their BatchNorms folded inside the merge); the
    # average and 1x1-kxk branches join once fold_bn and merge_1x1_kxk made them convs of the input
    assert len(merged) == 2 and "1x1 conv + pool 3x3" in merged[1].detail
    assert {"dbb_origin.conv", "dbb_origin.bn", "dbb_1x1.conv", "dbb_1x1.bn"} == set(merged[0].sources)
    assert {"dbb_avg.conv", "dbb_avg.bn.bn", "dbb_avg.avgbn", *merged[0].sources} <= set(merged[1].sources)
    assert [e.fused for e in result.record.entries] == [merged[1].fused]


def _avg_branch_near_miss(kind: str) -> nn.Module:
    block = pub.DiverseBranchBlock(4, 4, 3)
    avg = block.dbb_avg
    if kind == "exclusive_pool_padding":  # the pool's divisor changes at the borders
        avg.bn = pub.FillBorderWithBN(4, 0)
        avg.avg = nn.AvgPool2d(3, 1, 1, count_include_pad=False)
    elif kind == "pool_pads_a_biased_conv":  # zeros padded after the 1x1 conv stand for 0, not its bias
        avg.bn = pub.FillBorderWithBN(4, 0)
        avg.avg = nn.AvgPool2d(3, 1, 1)
    else:  # a ReLU between the 1x1 conv and the pool
        block.dbb_avg = nn.Sequential(
            OrderedDict(conv=avg.conv, bn=avg.bn, relu=nn.ReLU(), avg=avg.avg, avgbn=avg.avgbn)
        )
    return block


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("exclusive_pool_padding", "count_include_pad=False"),
        ("pool_pads_a_biased_conv", "(non-zero) bias"),
        ("relu_before_pool", "nonlinearity"),
    ],
)
def test_average_branch_near_misses_stay_unfused_with_a_reason(kind, reason):
    model = _prepared(_avg_branch_near_miss(kind))
    result = _converted(model, torch.randn(2, 4, 9, 9), torch.randn(3, 4, 8, 11))
    assert reason in _reasons(result), result.report.render()
    # the other three branches still become one conv; the average branch keeps its 1x1 conv and BN
    assert structure(result.model) == {"convs": 2, "norms": 1, "param_only": 0}, result.report.render()
    assert count(result.model, nn.AvgPool2d) == 1


def _graph_methods(deploy: nn.Module) -> set[str]:
    return {
        str(n.target)
        for gm in deploy.modules()
        if isinstance(gm, fx.GraphModule)
        for n in gm.graph.nodes
        if n.op == "call_method"
    }


def test_linear_norm_folds_into_its_linear():
    model = _prepared(pub.TokenMlp(8))
    result = _converted(model, torch.randn(2, 5, 8), torch.randn(1, 5, 8), torch.randn(3, 7, 8))
    assert count(result.model, BN) == 0 and count(result.model, nn.Linear) == 2
    assert not {"flatten", "reshape_as"} & _graph_methods(result.model)  # the round trip goes too
    folded = [e for e in result.report.fusions if "flattened rows" in e.detail]
    assert sorted(e.fused for e in folded) == ["ln1", "ln2"]
    assert sorted(folded[0].sources) == ["ln1.bn", "ln1.linear"]


class NormAcrossAxes(nn.Module):
    """A Linear over the last axis of ``[B, C, N]``, then a BatchNorm over ``flatten(1)``: C*M features."""

    def __init__(self, c: int, n: int, m: int):
        super().__init__()
        self.linear = nn.Linear(n, m)
        self.bn = nn.BatchNorm1d(c * m)

    def forward(self, x):
        y = self.linear(x)
        return self.bn(y.flatten(1)).reshape_as(y)


class NormAndRawOutput(nn.Module):
    """LinearNorm whose raw Linear output is also added back."""

    def __init__(self, c: int):
        super().__init__()
        self.linear = nn.Linear(c, c)
        self.bn = nn.BatchNorm1d(c)

    def forward(self, x):
        y = self.linear(x)
        return self.bn(y.flatten(0, 1)).reshape_as(y) + y


@pytest.mark.parametrize(
    ("make", "shape", "reason"),
    [
        (lambda: NormAcrossAxes(3, 6, 4), (2, 3, 6), "not the Linear's 4 output features"),
        (lambda: NormAndRawOutput(6), (2, 5, 6), "also feeds"),
    ],
)
def test_linear_norm_near_misses_stay_unfused_with_a_reason(make, shape, reason):
    model = _prepared(make())
    result = _converted(model, torch.randn(*shape))
    assert count(result.model, BN) == 1 and count(result.model, nn.Linear) == 1
    assert reason in _reasons(result), result.report.render()


@pytest.mark.slow  # a full-size model, converted once (about 10 s)
def test_timm_levit_keeps_no_more_batch_norms_than_timms_own_reparameterization():
    timm = import_timm()
    from timm.utils.model import reparameterize_model

    torch.manual_seed(0)
    model = randomize_batchnorm(timm.create_model("levit_128s"), 0).eval()
    theirs = reparameterize_model(copy.deepcopy(model))
    x = torch.randn(1, 3, 224, 224)
    result = _converted(model, x, torch.randn(2, 3, 224, 224), torch.randn(3, 3, 224, 224))
    left = structure(result.model)["norms"]
    assert left <= count(theirs, BN) == 0, result.report.render()
    assert count(result.model, nn.Linear) == count(theirs, nn.Linear)
