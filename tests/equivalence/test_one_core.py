"""The engine's check and the verifier judge blocks the same way, because they share one core.

A block with several outputs is compared output by output on both sides: a wrong second output
makes the engine's MismatchError and the verifier's report name the same block.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from reparam.engine import convert
from reparam.engine.base import PassResult
from reparam.equivalence import BoundaryKind
from reparam.errors import MismatchError
from reparam.numerics import randomize_batchnorm
from reparam.verify import verify


class Split(nn.Module):
    """Two conv-BN outputs of one block."""

    def __init__(self, c: int = 4):
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.b, self.bn_b = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)

    def forward(self, x):
        return self.bn_a(self.a(x)), self.bn_b(self.b(x))


class Head(nn.Module):
    def __init__(self, c: int = 4):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(c, c, 1), nn.BatchNorm2d(c)

    def forward(self, x):
        return self.bn(self.conv(x))


class Untraceable(nn.Module):
    """A data-dependent branch at the top: each child is converted on its own (module boundaries)."""

    def __init__(self):
        super().__init__()
        self.split, self.head = Split(), Head()

    def forward(self, x):
        first, second = self.split(x)
        y = first + second if bool(x.sum() > -1e9) else first
        return self.head(y)


class BreakSecondOutput:
    """A deliberately wrong pass: scales the weight of conv ``b`` (the block's second output)."""

    name = "test_break_second_output"
    description = "scales conv b by 1.0002 (small enough to pass the per-child swap guard)"

    def run(self, gm, ctx):
        conv = dict(gm.named_modules()).get("b")
        if conv is None or getattr(conv, "_broken", False):
            return PassResult(gm, False, [])
        with torch.no_grad():
            conv.weight.mul_(1.0002)
        conv._broken = True
        return PassResult(gm, True, [])


def _model() -> nn.Module:
    torch.manual_seed(0)
    return randomize_batchnorm(Untraceable(), seed=3).eval()


def test_engine_and_verifier_name_the_same_block_with_several_outputs():
    model = _model()
    x = torch.randn(2, 4, 8, 8)
    passes = ["fold_bn", BreakSecondOutput()]
    with pytest.raises(MismatchError) as info:
        convert(model, (x,), passes=passes)
    assert "diverging blocks: split" in info.value.message

    broken = convert(model, (x,), passes=passes, check=False)
    assert broken.record.boundaries.kind is BoundaryKind.MODULE and "split" in broken.record.boundaries
    report = verify(model, [broken], [{"input": x.numpy()}])
    [candidate] = report.candidates
    assert not candidate.passed
    assert candidate.divergence.first_diverging == "split"
    split = next(b for b in candidate.divergence.blocks if b.name == "split")
    assert not split.passed and np.isfinite(split.scale_rel) and split.scale_rel > 1e-5


def test_a_correct_conversion_passes_both():
    model = _model()
    x = torch.randn(2, 4, 8, 8)
    good = convert(model, (x,))
    assert good.report.check.passed
    report = verify(model, [good], [{"input": x.numpy()}], localize="always")
    assert report.passed
    assert [b.name for b in report.candidates[0].divergence.blocks] == ["split", "head"]
    assert all(b.passed for b in report.candidates[0].divergence.blocks)
