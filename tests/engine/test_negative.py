"""Patterns that must stay unfused (and be reported), and BatchNorms that cannot be folded."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from reparam.engine import convert
from tests.engine._models import count, error, prepared

BN = nn.modules.batchnorm._BatchNorm


def _reasons(result, pass_name="merge_branches") -> str:
    return " | ".join(x.reason for x in result.report.left_alone if x.pass_name == pass_name)


class NonlinearBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.k3 = nn.Conv2d(4, 4, 3, padding=1)
        self.k1 = nn.Conv2d(4, 4, 1)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.k3(x) + self.act(self.k1(x))


def test_branch_with_nonlinearity_is_left_alone_and_reported():
    model = prepared(NonlinearBranch())
    x = torch.randn(2, 4, 8, 8)
    result = convert(model, x)
    assert count(result.model, nn.Conv2d) == 2
    assert "nonlinearity" in _reasons(result)
    assert error(model, result.model, x) <= 1e-6


class StrideMismatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.k3 = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.n3 = nn.BatchNorm2d(4)
        self.k1 = nn.Conv2d(4, 4, 1, stride=1)
        self.n1 = nn.BatchNorm2d(4)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x):
        return self.n3(self.k3(x)) + self.pool(self.n1(self.k1(x)))


def test_mismatched_strides_stay_unmerged():
    model = prepared(StrideMismatch())
    x = torch.randn(2, 4, 8, 8)
    result = convert(model, x)
    assert count(result.model, nn.Conv2d) == 2
    assert count(result.model, BN) == 0  # each BN still folds into its own conv
    assert error(model, result.model, x) <= 1e-5


class DirectStrideMismatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.k3 = nn.Conv2d(4, 4, 3, stride=1, padding=0)
        self.k1 = nn.Conv2d(4, 4, 1, stride=2, padding=0)

    def forward(self, x):
        return self.k3(x) + self.k1(x)


@pytest.mark.parametrize("size", [5, 3])
def test_summed_branches_with_different_strides_are_reported(size):
    # 5x5 input: both branches give 3x3 outputs; 3x3 input: 1x1 + 2x2 broadcast. Neither merges.
    model = prepared(DirectStrideMismatch())
    x = torch.randn(1, 4, size, size)
    result = convert(model, x)
    assert count(result.model, nn.Conv2d) == 2
    assert "stride" in _reasons(result)
    assert error(model, result.model, x) <= 1e-5


class Reflect(nn.Module):
    def __init__(self):
        super().__init__()
        self.k3 = nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")
        self.k1 = nn.Conv2d(4, 4, 1)
        self.n1 = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.k3(x) + self.n1(self.k1(x)) + x


def test_reflect_padding_branch_is_left_alone_but_others_merge():
    model = prepared(Reflect())
    x = torch.randn(2, 4, 8, 8)
    result = convert(model, x)
    assert "reflect" in _reasons(result)
    # the 1x1 branch and the identity still merge into one conv; the reflect conv stays
    assert count(result.model, nn.Conv2d) == 2
    assert count(result.model, BN) == 0
    assert error(model, result.model, x) <= 1e-5


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(4)
        self.bn_b = nn.BatchNorm2d(4)

    def forward(self, x):
        a = self.bn_a(self.conv(x))
        b = self.bn_b(self.conv(torch.relu(a)))
        return a - b


def test_conv_shared_by_two_paths_is_cloned_per_call_site():
    model = prepared(Shared())
    x = torch.randn(2, 4, 8, 8)
    result = convert(model, x)
    assert count(result.model, BN) == 0
    assert count(result.model, nn.Conv2d) == 2  # one copy per call site, each with its own BN folded
    details = " ".join(e.detail for e in result.report.fusions)
    assert "called 2 times" in details
    assert error(model, result.model, x) <= 1e-5
    assert count(model, BN) == 2  # the input model is untouched


class ConvFeedsTwo(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


def test_bn_not_folded_when_conv_output_has_other_users():
    model = prepared(ConvFeedsTwo())
    x = torch.randn(2, 4, 8, 8)
    result = convert(model, x)
    assert count(result.model, BN) == 1
    assert any("also feeds" in x.reason for x in result.report.left_alone)
    assert error(model, result.model, x) <= 1e-5


def test_bn_without_running_stats_stays_unfused_with_a_reason():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)).eval()
    x = torch.randn(2, 3, 8, 8)
    result = convert(model, x)
    assert count(result.model, BN) == 1 and count(result.model, nn.Conv2d) == 1
    assert any(
        x.pass_name == "fold_bn" and "track_running_stats=False" in x.reason for x in result.report.left_alone
    )
    assert error(model, result.model, x) <= 1e-5


def test_model_in_training_mode_is_converted_from_an_eval_copy():
    model = prepared(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()))
    model.train()
    x = torch.randn(2, 3, 8, 8)
    with pytest.warns(UserWarning, match=r"1 BatchNorm layer\(s\) are in training mode \(1\)"):
        result = convert(model, x)
    assert result.report.converted_from_eval_copy
    assert any("training mode" in n for n in result.report.notes)
    assert any("training mode (1)" in w for w in result.report.warnings)
    assert model.training and model[1].training  # input left as it was
    assert not result.model.training
    model.eval()
    assert error(model, result.model, x) <= 1e-5
    assert count(result.model, BN) == 0
