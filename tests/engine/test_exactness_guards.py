"""Each refusal and exactness guard, isolated: one differing property at a time.

Every case converts without the built-in check (so only the guard stands between the model and a
wrong result) and asserts the conv count, the numeric result and, for refusals, the reason.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reparam.engine import convert
from reparam.errors import ReparamError
from reparam.numerics import randomize_batchnorm, scale_relative_error
from tests.engine._models import assert_untouched, count, fingerprint

BN = nn.modules.batchnorm._BatchNorm


def _error(model: nn.Module, deploy: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return scale_relative_error(model(x.clone()).numpy(), deploy(x.clone()).numpy())


class TwoBranches(nn.Module):
    """3x3 conv-BN + a second conv-BN branch whose geometry the test chooses."""

    def __init__(self, second: nn.Conv2d, first_stride: int = 1):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, first_stride, 1, bias=False)
        self.na = nn.BatchNorm2d(4)
        self.b = second
        self.nb = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.na(self.a(x)) + self.nb(self.b(x))


def _prepared(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return randomize_batchnorm(model, 0).eval()


def test_branches_differing_only_in_stride_stay_apart():
    # on a 4x4 input, 3x3/stride 2/pad 1 and 1x1/stride 3/pad 0 both give 2x2 outputs
    model = _prepared(TwoBranches(nn.Conv2d(3, 4, 1, 3, 0, bias=False), first_stride=2))
    x = torch.randn(2, 3, 4, 4)
    result = convert(model, x, check=False)
    assert count(result.model, nn.Conv2d) == 2 and count(result.model, BN) == 0
    assert _error(model, result.model, x) <= 1e-5
    assert any("stride (2, 2) vs (3, 3)" in a.reason for a in result.report.left_alone)


def test_same_geometry_with_equal_stride_merges():
    model = _prepared(TwoBranches(nn.Conv2d(3, 4, 1, 1, 0, bias=False)))
    x = torch.randn(2, 3, 6, 6)
    result = convert(model, x, check=False)
    assert count(result.model, nn.Conv2d) == 1
    assert _error(model, result.model, x) <= 1e-5


def test_reflect_padding_alone_blocks_the_merge():
    model = _prepared(TwoBranches(nn.Conv2d(3, 4, 3, 1, 1, bias=False, padding_mode="reflect")))
    x = torch.randn(2, 3, 6, 6)
    result = convert(model, x, check=False)
    assert count(result.model, nn.Conv2d) == 2
    assert _error(model, result.model, x) <= 1e-5
    assert any("padding mode 'reflect'" in a.reason for a in result.report.left_alone)


class CropPad(nn.Module):
    """3x3 pad 1 + a 1x3 branch on a row-cropped input, padded by ``rows`` rows again."""

    def __init__(self, rows: int):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, 1, (rows, 1))
        self.b = nn.Conv2d(3, 4, (1, 3), 1, (rows, 1))

    def forward(self, x):
        return self.a(x) + self.b(x[:, :, 1:-1, :])


def test_crop_and_zero_pad_on_the_same_side_is_left_alone():
    model = _prepared(CropPad(rows=1))
    x = torch.randn(2, 3, 6, 6)
    result = convert(model, x, check=False)
    assert count(result.model, nn.Conv2d) == 2
    assert _error(model, result.model, x) <= 1e-5
    assert any("crops its input and zero-pads the same side" in a.reason for a in result.report.left_alone)


def test_crop_without_padding_on_that_side_merges():
    model = _prepared(CropPad(rows=0))
    x = torch.randn(2, 3, 6, 6)
    result = convert(model, x, check=False)
    assert count(result.model, nn.Conv2d) == 1
    assert _error(model, result.model, x) <= 1e-5


class Repeated(nn.Module):
    def __init__(self, form: str):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, 1, 1)
        self.bn = nn.BatchNorm2d(4)
        self.form = form

    def forward(self, x):
        y = self.bn(self.conv(x))
        if self.form == "y+y":
            return y + y
        if self.form == "x+x+conv":
            return x + x + y
        return (y + x) + x  # a residual around a block that already has an identity branch


@pytest.mark.parametrize("form", ["y+y", "x+x+conv", "residual_over_identity"])
def test_a_term_summed_twice_counts_twice(form):
    model = _prepared(Repeated(form))
    x = torch.randn(2, 4, 6, 6)
    result = convert(model, x, check=False)
    assert count(result.model, nn.Conv2d) == 1 and count(result.model, BN) == 0
    assert _error(model, result.model, x) <= 1e-5


class InPlace(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.a, self.b = nn.Conv2d(4, 4, 3, 1, 1), nn.Conv2d(4, 4, 1)
        self.c, self.d = nn.Conv2d(4, 4, 3, 1, 1), nn.Conv2d(4, 4, 1)
        self.act = nn.ReLU(inplace=True)
        self.how = how

    def forward(self, x):
        if self.how == "input":
            x.mul_(2)
        h = self.a(x) + self.b(x)
        if self.how == "functional":
            F.relu(h, inplace=True)
        elif self.how == "method":
            h.clamp_(min=0)
        elif self.how == "module":
            self.act(h)
        return self.c(h) + self.d(h)


@pytest.mark.parametrize("how", ["input", "functional", "method", "module"])
def test_in_place_ops_survive_conversion(how):
    model = _prepared(InPlace(how))
    x = torch.randn(2, 4, 6, 6)
    before = x.clone()
    result = convert(model, x, check=True)
    assert torch.equal(x, before)  # the example input was not written into
    assert count(result.model, nn.Conv2d) == 2
    assert _error(model, result.model, x) <= 1e-5


class ViewWrite(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(4, 4, 3, 1, 1), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        h = self.a(x) + self.b(x)
        h[:, :2].mul_(0.5)  # writes through a view into h
        return h


def test_write_through_a_view_is_captured_functionally():
    model = _prepared(ViewWrite())
    x = torch.randn(2, 4, 6, 6)
    result = convert(model, x, check=False)
    assert _error(model, result.model, x) <= 1e-5
    # symbolic tracing refuses the aliasing write; torch.export captures it as a functional scatter
    assert "by torch.export" in result.report.tracing and "shares memory" in result.report.tracing
    assert count(result.model, nn.Conv2d) == 1


def test_fold_that_overflows_float32_is_left_alone():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4, eps=0.0)).eval()
    with torch.no_grad():
        model[0].weight.fill_(1e30)
        model[1].running_var.fill_(1e-30)
        model[1].weight.fill_(1e10)  # 1e30 * 1e10 / 1e-15 overflows float32
    x = torch.randn(1, 3, 5, 5)
    result = convert(model, x, check=False)
    assert count(result.model, BN) == 1 and count(result.model, nn.Conv2d) == 1
    assert any("not finite in float32" in a.reason for a in result.report.left_alone)
    with torch.no_grad():
        assert torch.equal(result.model(x), model(x))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_before_conversion(bad):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = bad
    with pytest.raises(ReparamError, match=r"NaN/Inf values in 0\.weight \(1 of 108\)"):
        convert(model, torch.randn(1, 3, 5, 5))


def test_untraceable_parent_reading_a_child_keeps_the_child():
    class Child(nn.Module):
        def __init__(self):
            super().__init__()
            self.width = 0.5
            self.inner = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4))
            self.side = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            return self.inner(x) + self.side(x)

    class Parent(nn.Module):
        def __init__(self):
            super().__init__()
            self.blk = Child()

        def forward(self, x):
            if x.sum() > 1e9:
                return x
            return self.blk.inner(x) * self.blk.width + self.blk(x)

    model = _prepared(Parent())
    x = torch.randn(2, 4, 6, 6)
    result = convert(model, x)
    assert _error(model, result.model, x) <= 1e-5
    assert any(a.where == "blk" and "reads a part of it" in a.reason for a in result.report.left_alone)


def test_module_names_python_normalizes_convert():
    model = nn.Sequential()
    model.add_module("µ_k", nn.Conv2d(3, 4, 3, padding=1))
    model.add_module("ﬁlter", nn.BatchNorm2d(4))
    model = _prepared(model)
    x = torch.randn(1, 3, 6, 6)
    before = fingerprint(model)
    result = convert(model, x)
    assert_untouched(model, before)
    assert count(result.model, BN) == 0 and count(result.model, nn.Conv2d) == 1
    assert _error(model, result.model, x) <= 1e-5
    assert result.record.entries[0].sources == ["µ_k", "ﬁlter"]


def test_huge_input_shape_is_refused_before_allocation(monkeypatch):
    monkeypatch.setenv("REPARAM_MAX_MEMORY", "1G")
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    with pytest.raises(ReparamError, match="more than the memory limit of 1 GiB") as info:
        convert(model, input_shape=(1, 3, 100000, 100000))
    assert "`max_memory`" in info.value.hint
    # activations count too: this input fits, its conv outputs do not
    with pytest.raises(ReparamError, match="a forward pass on inputs of shape 1x3x8000x8000"):
        convert(nn.Sequential(nn.Conv2d(3, 64, 3)).eval(), input_shape=(1, 3, 8000, 8000))


@pytest.mark.parametrize(("mid", "groups", "merged"), [(8, 1, True), (8, 4, True), (2, 1, False)])
def test_kxk_then_1x1_merges_only_when_not_costlier(mid, groups, merged):
    model = nn.Sequential(
        nn.Conv2d(8, mid, 3, 2, 1, groups=groups),
        nn.BatchNorm2d(mid),
        nn.Conv2d(mid, 4, 1, groups=groups if mid % groups == 0 else 1),
        nn.BatchNorm2d(4),
    )
    model = _prepared(model)
    x = torch.randn(2, 8, 7, 7)
    result = convert(model, x, check=False)
    assert count(result.model, nn.Conv2d) == (1 if merged else 2) and count(result.model, BN) == 0
    assert _error(model, result.model, x) <= 1e-5
    if not merged:
        assert any("would cost" in a.reason for a in result.report.left_alone)
