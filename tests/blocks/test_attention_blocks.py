"""SEBlock, SE residual units, SKConv/SKUnit and SABlock: shapes, gradients, parameter formulas."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from reparam.blocks import SABlock, SEBasicBlock, SEBlock, SEBottleneck, SKConv, SKUnit
from reparam.errors import ReparamError


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _assert_all_grads(module: nn.Module) -> None:
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# --- SE -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels,r", [(64, 16), (32, 4), (48, 16)])
def test_se_param_count_matches_formula(channels, r):
    se = SEBlock(channels, r)
    assert _n_params(se) == 2 * channels * channels // r + channels // r + channels


def test_se_scales_each_channel_by_a_sigmoid_gate():
    se = SEBlock(32, 4)
    x = torch.randn(2, 32, 5, 7)
    with torch.no_grad():
        out = se(x)
        s = torch.sigmoid(se.fc2(torch.relu(se.fc1(x.mean((2, 3))))))
    assert out.shape == x.shape
    assert torch.allclose(out, x * s[:, :, None, None])
    assert ((s > 0) & (s < 1)).all()


@pytest.mark.parametrize("stride", [1, 2])
def test_se_residual_units(stride):
    x = torch.randn(2, 16, 9, 12)
    basic = SEBasicBlock(16, 32, stride)
    bottleneck = SEBottleneck(16, 8, stride, reduction=4)
    out_b, out_n = basic(x), bottleneck(x)
    h, w = (9 - 1) // stride + 1, (12 - 1) // stride + 1
    assert out_b.shape == (2, 32, h, w) and out_n.shape == (2, 32, h, w)
    (out_b.sum() + out_n.sum()).backward()
    _assert_all_grads(basic)
    _assert_all_grads(bottleneck)


def test_se_is_applied_to_the_residual_before_the_add():
    unit = SEBasicBlock(8, 8, 1, reduction=2)
    with torch.no_grad():  # a gate of exactly 0 removes the residual: the unit is relu(x)
        unit.se.fc2.weight.zero_()
        unit.se.fc2.bias.fill_(-1e4)
    x = torch.randn(2, 8, 5, 5)
    assert torch.allclose(unit(x), torch.relu(x))


# --- SK -------------------------------------------------------------------------------------------


def test_sk_d_is_max_of_c_over_r_and_L():
    assert SKConv(64, G=8, r=16, L=32).d == 32
    assert SKConv(1024, G=32, r=16, L=32).d == 64
    assert SKConv(64, G=8, r=4, L=8).d == 16


@pytest.mark.parametrize("M,G", [(2, 8), (3, 4), (1, 1)])
def test_sk_param_count_matches_formula(M, G):
    c, r, L = 64, 16, 32
    sk = SKConv(c, M=M, G=G, r=r, L=L)
    d = max(c // r, L)
    branches = M * (c * (c // G) * 9 + 2 * c)  # grouped 3×3 conv + BN(γ, β)
    fuse = c * d + 2 * d  # W (no bias, BN follows) + BN on z
    select = M * d * c  # A_m heads
    assert _n_params(sk) == branches + fuse + select


def test_sk_branches_use_increasing_dilation():
    sk = SKConv(16, M=3, G=4)
    assert [b[0].dilation for b in sk.branches] == [(1, 1), (2, 2), (3, 3)]
    assert all(b[0].kernel_size == (3, 3) and b[0].groups == 4 for b in sk.branches)


@pytest.mark.parametrize("stride", [1, 2])
def test_sk_shapes_and_gradients(stride):
    sk = SKConv(16, M=2, G=4, r=2, L=8, stride=stride)
    x = torch.randn(2, 16, 11, 8)
    out = sk(x)
    assert out.shape == (2, 16, (11 - 1) // stride + 1, (8 - 1) // stride + 1)
    out.square().sum().backward()
    _assert_all_grads(sk)


def test_sk_output_is_attention_weighted_sum_of_branches():
    sk = SKConv(8, M=2, G=2, r=2, L=4).eval()
    x = torch.randn(3, 8, 6, 6)
    with torch.no_grad():
        u = [b(x) for b in sk.branches]
        z = torch.relu(sk.fc_bn(sk.fc((u[0] + u[1]).mean((2, 3)))))
        a = torch.softmax(torch.stack([h(z) for h in sk.heads], 1), dim=1)
        expected = a[:, 0, :, None, None] * u[0] + a[:, 1, :, None, None] * u[1]
        assert torch.allclose(sk(x), expected, atol=1e-6)
        assert torch.allclose(a.sum(1), torch.ones(3, 8))


@pytest.mark.parametrize("in_ch,out_ch,stride", [(32, 32, 1), (16, 64, 2)])
def test_sk_unit(in_ch, out_ch, stride):
    unit = SKUnit(in_ch, 16, out_ch, stride, M=2, G=4, r=4, L=8)
    x = torch.randn(2, in_ch, 10, 10)
    out = unit(x)
    assert out.shape == (2, out_ch, 10 // stride, 10 // stride)
    assert isinstance(unit.shortcut, nn.Identity) == (in_ch == out_ch and stride == 1)
    out.sum().backward()
    _assert_all_grads(unit)
    unit.eval()
    assert unit(x[:1]).shape == (1, out_ch, 10 // stride, 10 // stride)


def test_sk_rejects_groups_not_dividing_channels():
    with pytest.raises(ReparamError, match="divisible"):
        SKConv(24, G=16)


# --- SA -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,hw,expected",
    [
        (dict(in_channels=16, out_channels=32), (16, 16), (32, 16, 16)),
        (dict(in_channels=16, out_channels=32, stride=2), (16, 12), (32, 8, 6)),
        (dict(in_channels=8, out_channels=8, stride=2), (7, 5), (8, 4, 3)),  # odd sizes, map < scale 8
        (dict(in_channels=8, channels_per_scale=[4, 0, 2, 6]), (9, 13), (12, 9, 13)),
        (dict(in_channels=8, scales=(1, 3), channels_per_scale=[3, 5]), (10, 10), (8, 10, 10)),
    ],
)
def test_sa_shapes(kwargs, hw, expected):
    sa = SABlock(**kwargs)
    out = sa(torch.randn(2, kwargs["in_channels"], *hw))
    assert out.shape == (2, *expected)
    out.sum().backward()
    _assert_all_grads(sa)


def test_sa_default_split_and_param_count():
    sa = SABlock(16, 30)
    assert sa.channels_per_scale == (8, 8, 7, 7)
    # 3×3 conv per scale + BN(γ, β): the same count as one 3×3 conv-BN from 16 to 30 channels
    assert _n_params(sa) == 16 * 30 * 9 + 2 * 30


def test_sa_scale_branch_is_pool_conv_upsample():
    sa = SABlock(4, channels_per_scale=[0, 0, 3, 0]).eval()
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        out = sa(x)
        small = sa.branches[0][1:](nn.functional.max_pool2d(x, 4))
        expected = small.repeat_interleave(4, 2).repeat_interleave(4, 3)
    assert sa.scales == (4,)
    assert torch.allclose(out, expected)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(in_channels=8, channels_per_scale=[1, 2]),
        dict(in_channels=8, channels_per_scale=[0, 0, 0, 0]),
        dict(in_channels=8, out_channels=10, channels_per_scale=[1, 2, 3, 3]),
        dict(in_channels=8, scales=(0, 2)),
    ],
)
def test_sa_rejects_bad_allocations(kwargs):
    with pytest.raises(ReparamError):
        SABlock(**kwargs)
