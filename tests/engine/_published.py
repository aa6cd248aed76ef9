"""Re-implementations of published re-parameterizable block designs, written the way their authors'
code is written: functional BatchNorm and conv calls, BatchNorm subclasses with their own forward,
weights computed in ``forward``, in-place border writes, shape checks in ``forward``. Names are
deliberately unlike the project's own blocks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FunctionalConvBN(nn.Module):
    """Parameters held directly; conv and BN written with torch.nn.functional."""

    def __init__(self, cin: int, cout: int, k: int = 3):
        super().__init__()
        self.kern = nn.Parameter(torch.randn(cout, cin, k, k) * 0.2)
        self.gain = nn.Parameter(torch.rand(cout) + 0.5)
        self.offset = nn.Parameter(torch.randn(cout) * 0.1)
        self.register_buffer("avg", torch.randn(cout) * 0.1)
        self.register_buffer("spread", torch.rand(cout) + 0.5)
        self.pad = k // 2

    def forward(self, x):
        y = F.conv2d(x, self.kern, None, 1, self.pad)
        return F.batch_norm(y, self.avg, self.spread, self.gain, self.offset, False, 0.1, 1e-5)


class NormAct(nn.BatchNorm2d):
    """A BatchNorm subclass with its own forward (norm + activation), as timm's BatchNormAct2d."""

    def __init__(self, c: int, act: bool = True):
        super().__init__(c)
        self.act = nn.ReLU() if act else nn.Identity()

    def forward(self, x):
        torch._assert(x.ndim == 4, f"expected 4D input (got {x.ndim}D input)")
        x = F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, self.training, 0.0, self.eps
        )
        return self.act(x)


class RepStyleWithNormAct(nn.Module):
    """3x3 and 1x1 conv branches, each normalised by NormAct without activation, summed, then ReLU."""

    def __init__(self, c: int):
        super().__init__()
        self.k3 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.n3 = NormAct(c, act=False)
        self.k1 = nn.Conv2d(c, c, 1, bias=False)
        self.n1 = NormAct(c, act=False)
        self.skip = NormAct(c, act=False)

    def forward(self, x):
        return F.relu(self.n3(self.k3(x)) + self.n1(self.k1(x)) + self.skip(x))


class OnlineReparam(nn.Module):
    """Online re-parameterization style: the kernel is built in forward, then one conv runs."""

    def __init__(self, cin: int, cout: int, groups: int = 1):
        super().__init__()
        self.groups = groups
        self.base = nn.Parameter(torch.randn(cout, cin // groups, 3, 3) * 0.2)
        self.pointwise = nn.Parameter(torch.randn(cout, cin // groups, 1, 1) * 0.2)
        self.mix = nn.Parameter(torch.randn(cout, cout) * 0.2)  # einsum of parameters
        self.scales = nn.Parameter(torch.rand(2) + 0.5)  # sums of scaled kernels
        self.prior = nn.Parameter(torch.randn(cout, cout, 1, 1) * 0.2)  # conv of parameter tensors

    def weight(self) -> torch.Tensor:
        point = F.pad(self.pointwise, [1, 1, 1, 1])
        w = self.scales[0] * self.base + self.scales[1] * point
        w = torch.einsum("oi,ichw->ochw", self.mix, w)
        return F.conv2d(w.transpose(0, 1), self.prior).transpose(0, 1)

    def forward(self, x):
        per_group = int(x.size(1) / self.groups)  # int() of a traced size stops symbolic tracing
        assert per_group * self.groups == x.size(1)
        return F.conv2d(x, self.weight(), None, 1, 1, 1, self.groups)


class FillBorderWithBN(nn.Module):
    """BN followed by a pad filled, in place, with the BN's value at zero (DBB's BNAndPad)."""

    def __init__(self, c: int, pad: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(c)
        self.pad = pad

    def forward(self, x):
        out = self.bn(x)
        if self.pad > 0:
            bn = self.bn
            value = bn.bias.detach() - bn.running_mean * bn.weight.detach() / torch.sqrt(
                bn.running_var + bn.eps
            )
            out = F.pad(out, [self.pad] * 4)
            value = value.view(1, -1, 1, 1)
            p = self.pad
            out[:, :, 0:p, :] = value
            out[:, :, -p:, :] = value
            out[:, :, :, 0:p] = value
            out[:, :, :, -p:] = value
        return out


class DiverseBranches(nn.Module):
    """k x k conv-BN, 1x1 conv-BN, 1x1 -> BN-and-pad -> k x k -> BN, avg-pool -> BN; summed."""

    def __init__(self, c: int, k: int = 3):
        super().__init__()
        self.origin = nn.Sequential(nn.Conv2d(c, c, k, 1, k // 2, bias=False), nn.BatchNorm2d(c))
        self.one = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c))
        self.chain_in = nn.Conv2d(c, c, 1, bias=False)
        self.chain_fill = FillBorderWithBN(c, k // 2)
        self.chain_out = nn.Sequential(nn.Conv2d(c, c, k, bias=False), nn.BatchNorm2d(c))
        self.pooled = nn.Sequential(nn.AvgPool2d(k, 1, k // 2), nn.BatchNorm2d(c))

    def forward(self, x):
        chain = self.chain_out(self.chain_fill(self.chain_in(x)))
        return self.origin(x) + self.one(x) + chain + self.pooled(x)


class PreNormPointwise(nn.Module):
    """BatchNorm before an unpadded 1x1 conv (large-kernel designs' pre-norm)."""

    def __init__(self, c: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(c)
        self.proj = nn.Conv2d(c, 2 * c, 1)
        self.large = nn.Conv2d(2 * c, 2 * c, 5, padding=2, groups=2 * c)
        self.large_bn = nn.BatchNorm2d(2 * c)

    def forward(self, x):
        return self.large_bn(self.large(self.proj(self.norm(x))))


class ShapeCheckTop(nn.Module):
    """A shape ``if`` at the top level (untraceable by torch.fx) around fusible blocks."""

    def __init__(self, c: int):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.body = RepStyleWithNormAct(c)
        self.head = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        if x.shape[-1] % 2:
            x = F.pad(x, [0, 1, 0, 1])
        return self.head(self.body(self.stem(x)))


class SyncNormNet(nn.Module):
    """SyncBatchNorm (which runs as BatchNorm in eval mode on one process)."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(3, c, 3, padding=1)
        self.norm = nn.SyncBatchNorm(c)
        self.side = nn.Conv2d(3, c, 1)
        self.side_norm = nn.SyncBatchNorm(c)

    def forward(self, x):
        return self.norm(self.conv(x)) + self.side_norm(self.side(x))


def _conv_bn(
    cin: int, cout: int, k: int, stride: int = 1, padding: int = 0, groups: int = 1
) -> nn.Sequential:
    """A Sequential with children ``conv`` and ``bn``, as Diverse Branch Block's code builds them."""
    block = nn.Sequential()
    block.add_module("conv", nn.Conv2d(cin, cout, k, stride, padding, groups=groups, bias=False))
    block.add_module("bn", nn.BatchNorm2d(cout))
    return block


class IdentityPlusConv1x1(nn.Conv2d):
    """A 1x1 conv whose kernel is its weight plus a constant identity kernel, added in ``forward``."""

    def __init__(self, channels: int, groups: int = 1):
        super().__init__(channels, channels, 1, groups=groups, bias=False)
        per_group = channels // groups
        eye = torch.zeros(channels, per_group, 1, 1)
        eye[torch.arange(channels), torch.arange(channels) % per_group] = 1.0
        self.id_tensor = eye  # a plain attribute, not a buffer
        nn.init.normal_(self.weight, std=0.1)

    def forward(self, x):
        kernel = self.weight + self.id_tensor.to(self.weight.device)
        return F.conv2d(x, kernel, None, 1, 0, self.dilation, self.groups)


class DiverseBranchBlock(nn.Module):
    """Diverse Branch Block laid out as its authors' code lays it out (``dbb_origin``, ``dbb_1x1``,
    ``dbb_avg`` with ``conv``/``bn``/``avg``/``avgbn``, ``dbb_1x1_kxk``), summed with in-place adds.

    The average branch is a 1x1 conv, a BatchNorm whose padded border holds its value at zero, an
    unpadded k x k average pool and a BatchNorm; with as many groups as channels it is a padded pool.
    """

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1):
        super().__init__()
        padding = k // 2
        self.dbb_origin = _conv_bn(cin, cout, k, stride, padding, groups)
        self.dbb_avg = nn.Sequential()
        if groups < cout:
            self.dbb_avg.add_module("conv", nn.Conv2d(cin, cout, 1, groups=groups, bias=False))
            self.dbb_avg.add_module("bn", FillBorderWithBN(cout, padding))
            self.dbb_avg.add_module("avg", nn.AvgPool2d(k, stride, 0))
            self.dbb_1x1 = _conv_bn(cin, cout, 1, stride, 0, groups)
        else:
            self.dbb_avg.add_module("avg", nn.AvgPool2d(k, stride, padding))
        self.dbb_avg.add_module("avgbn", nn.BatchNorm2d(cout))
        internal = cin if groups < cout else 2 * cin
        self.dbb_1x1_kxk = nn.Sequential()
        if internal == cin:
            self.dbb_1x1_kxk.add_module("idconv1", IdentityPlusConv1x1(cin, groups))
        else:
            self.dbb_1x1_kxk.add_module("conv1", nn.Conv2d(cin, internal, 1, groups=groups, bias=False))
        self.dbb_1x1_kxk.add_module("bn1", FillBorderWithBN(internal, padding))
        self.dbb_1x1_kxk.add_module(
            "conv2", nn.Conv2d(internal, cout, k, stride, 0, groups=groups, bias=False)
        )
        self.dbb_1x1_kxk.add_module("bn2", nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.dbb_origin(x)
        if hasattr(self, "dbb_1x1"):
            out += self.dbb_1x1(x)
        out += self.dbb_avg(x)
        out += self.dbb_1x1_kxk(x)
        return out


class LinearRowNorm(nn.Module):
    """LeViT's LinearNorm: a Linear over the last axis, a BatchNorm1d over the flattened rows."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.linear = nn.Linear(cin, cout, bias=False)
        self.bn = nn.BatchNorm1d(cout)

    def forward(self, x):
        x = self.linear(x)
        return self.bn(x.flatten(0, 1)).reshape_as(x)


class TokenMlp(nn.Module):
    """LeViT's residual MLP on tokens ``[B, N, C]``: LinearNorm, Hardswish, LinearNorm."""

    def __init__(self, c: int):
        super().__init__()
        self.ln1 = LinearRowNorm(c, 2 * c)
        self.act = nn.Hardswish()
        self.ln2 = LinearRowNorm(2 * c, c)

    def forward(self, x):
        return x + self.ln2(self.act(self.ln1(x)))
