"""Row-block float64 arithmetic gives bitwise the values of the whole-tensor float64 computation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from reparam.engine import convert
from reparam.engine.base import NotRepresentable, PassContext
from reparam.engine.rowwise import BLOCK_ELEMENTS, magnitude, scaled_rows
from reparam.kernel_math import bn_scale_shift
from reparam.numerics import randomize_batchnorm


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
@pytest.mark.parametrize("shape", [(7, 3, 3, 3), (300, 200, 3, 3), (5, 4), (1, 1, 1)])
def test_scaled_rows_is_the_float64_product_rounded_once(shape, dtype):
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(*shape, generator=g).to(dtype)
    scale = torch.rand(shape[0], generator=g, dtype=torch.float64) * 3 - 1
    expected = (weight.double() * scale.reshape((-1,) + (1,) * (weight.dim() - 1))).to(dtype)
    got = scaled_rows(weight, scale)
    assert got.dtype == dtype and torch.equal(got, expected)
    assert weight.numel() < BLOCK_ELEMENTS or shape[0] > 1  # the large case spans several blocks


def test_magnitude_keeps_nan_and_reads_both_signs():
    assert magnitude(torch.tensor([1.0, -3.0, 2.0])) == 3.0
    assert magnitude(torch.tensor([1.0, float("nan")])) != magnitude(torch.tensor([1.0, float("nan")]))
    assert magnitude(torch.tensor([float("-inf"), 1.0])) == float("inf")
    assert magnitude(torch.empty(0)) == 0.0


def test_parameter_decides_on_the_float64_value_near_a_limit():
    ctx = PassContext()
    like = torch.zeros(2, dtype=torch.float16)
    # 65519 rounds to 65504 in float16, yet the float64 value is beyond its range: refused
    value = torch.tensor([65519.0, 1.0], dtype=torch.float64)
    with pytest.raises(NotRepresentable):
        ctx.parameter(value, like, "weight", value.to(torch.float16))
    with pytest.raises(NotRepresentable):
        ctx.parameter(
            lambda: torch.tensor([float("nan")], dtype=torch.float64),
            like,
            "weight",
            torch.tensor([float("nan")], dtype=torch.float16),
        )
    with pytest.warns(UserWarning, match="beyond float16 range"):
        p = ctx.parameter(torch.tensor([70000.0], dtype=torch.float64), torch.zeros(1), "weight")
    assert p.dtype == torch.float32 and float(p) == 70000.0


class _Branches(nn.Module):
    """RepVGG-style: 3x3+BN, 1x1+BN and a BN identity, summed; wide enough to span several blocks."""

    def __init__(self, c: int = 96, groups: int = 1):
        super().__init__()
        self.k3 = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, groups=groups, bias=False), nn.BatchNorm2d(c))
        self.k1 = nn.Sequential(nn.Conv2d(c, c, 1, groups=groups, bias=True), nn.BatchNorm2d(c))
        self.id = nn.BatchNorm2d(c)
        self.head = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c))

    def forward(self, x):
        return self.head(self.k3(x) + self.k1(x) + self.id(x))


@pytest.mark.parametrize("groups", [1, 4, 96])
def test_row_blocks_give_the_whole_tensor_kernels_bitwise(groups, monkeypatch):
    """Merging (and folding) block by block gives the weights of the whole-tensor float64 path."""
    import reparam.engine.passes.branches as branches
    import reparam.engine.passes.fold_bn as fold

    torch.manual_seed(0)
    model = randomize_batchnorm(_Branches(groups=groups).eval(), 0)
    example = (torch.randn(1, 96, 12, 12),)
    monkeypatch.setattr(branches, "MERGE_BLOCK_ELEMENTS", 1 << 9)  # several blocks for every group count
    deploy = convert(model, example).model
    monkeypatch.undo()
    convs = [m for m in deploy.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 2 and not any(isinstance(m, nn.BatchNorm2d) for m in deploy.modules())

    def whole(weight, scale, dtype=None):
        return (weight.double() * scale.reshape((-1,) + (1,) * (weight.dim() - 1))).to(weight.dtype)

    monkeypatch.setattr(branches, "_merged_by_rows", lambda plan, like: None)
    monkeypatch.setattr(fold, "scaled_rows", whole)
    reference = convert(model, example).model
    ref_convs = [m for m in reference.modules() if isinstance(m, nn.Conv2d)]
    for got, want in zip(convs, ref_convs, strict=True):
        assert torch.equal(_bits(got.weight), _bits(want.weight)) and torch.equal(
            _bits(got.bias), _bits(want.bias)
        )


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The float32 values as their bit patterns: -0.0 and 0.0 differ."""
    return t.detach().view(torch.int32)


def _scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    d = {k: getattr(bn, k).detach().double() for k in ("running_mean", "running_var", "weight", "bias")}
    return bn_scale_shift(d["running_mean"], d["running_var"], d["weight"], d["bias"], bn.eps)


def test_branch_batchnorms_fold_inside_the_merge_rounded_once():
    """Each branch's BatchNorm is applied in float64 inside the merge: the merged kernel is the exact
    float64 sum rounded once, at least as close to it as folding each branch to float32 first."""
    torch.manual_seed(1)
    model = randomize_batchnorm(_Branches(c=24).eval(), 1)
    example = (torch.randn(2, 24, 10, 10),)
    result = convert(model, example)
    merged = next(e for e in result.report.fusions if e.pass_name == "merge_branches")
    assert {"k3.1", "k1.1", "id"} <= set(merged.sources)
    assert not [e for e in result.report.fusions if e.pass_name == "fold_bn" and "k3.1" in e.sources]
    (s3, t3), (s1, t1), (si, ti) = (_scale_shift(bn) for bn in (model.k3[1], model.k1[1], model.id))
    kernel = model.k3[0].weight.detach().double() * s3[:, None, None, None]
    kernel[:, :, 1, 1] += model.k1[0].weight.detach().double()[:, :, 0, 0] * s1[:, None]
    kernel[:, :, 1, 1] += torch.diag(si)
    bias = t3 + (model.k1[0].bias.detach().double() * s1 + t1) + ti
    conv = result.model.get_submodule(merged.fused)
    assert torch.equal(_bits(conv.weight), _bits(kernel.float())) and torch.equal(conv.bias, bias.float())
    earlier = convert(model, example, passes=["fold_bn", "merge_branches"])
    merged_there = next(e for e in earlier.report.fusions if e.pass_name == "merge_branches")
    folded_first = earlier.model.get_submodule(merged_there.fused)
    assert (conv.weight.double() - kernel).abs().max() <= (folded_first.weight.double() - kernel).abs().max()
