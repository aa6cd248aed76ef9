"""Plain test networks with unusual names and layouts. Names deliberately say nothing about the layers."""

from __future__ import annotations

import torch
from torch import nn


class FanOut(nn.Module):
    """A conv-BN whose output feeds two consumers, grouped/depthwise/dilated/stride-2 convs, a bias-only conv."""

    def __init__(self):
        super().__init__()
        self.bn = nn.Conv2d(3, 8, 3, padding=1, bias=False)  # a conv called "bn"...
        self.conv = nn.BatchNorm2d(8)  # ...and a BatchNorm called "conv"
        self.left = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2, bias=False)
        self.left_n = nn.BatchNorm2d(8)
        self.right = nn.Conv2d(8, 8, 3, stride=2, padding=0, groups=8, bias=False)  # depthwise, crops
        self.right_n = nn.BatchNorm2d(8)
        self.wide = nn.Conv2d(8, 12, (3, 5), stride=2, padding=(1, 2), bias=False)
        self.wide_n = nn.BatchNorm2d(12)
        self.head = nn.Conv2d(12, 6, 5, padding=1, bias=True)  # bias and no BN; padding < 2
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        shared = self.conv(self.bn(x))
        a = torch.relu(self.left_n(self.left(shared)))
        b = self.right_n(self.right(shared))
        a = nn.functional.max_pool2d(a, 2)
        y = torch.relu(self.wide_n(self.wide(a[:, :, : b.shape[2], : b.shape[3]] + b)))
        y = self.head(y)
        return self.fc(y.mean((2, 3)))


class Refusals(nn.Module):
    """Convs no scheme may take: even kernel, 1×1, reflect padding, raw output fanning out, no BN no bias, shared."""

    def __init__(self):
        super().__init__()
        self.even = nn.Conv2d(3, 8, 2, bias=False)
        self.even_n = nn.BatchNorm2d(8)
        self.point = nn.Conv2d(8, 8, 1, bias=False)
        self.point_n = nn.BatchNorm2d(8)
        self.mirror = nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect", bias=False)
        self.mirror_n = nn.BatchNorm2d(8)
        self.tap = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.tap_n = nn.BatchNorm2d(8)
        self.bare = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.twice = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.twice_a = nn.BatchNorm2d(8)
        self.twice_b = nn.BatchNorm2d(8)
        self.ok = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.ok_n = nn.BatchNorm2d(8)

    def forward(self, x):
        x = self.point_n(self.point(self.even_n(self.even(x))))
        x = self.mirror_n(self.mirror(x))
        t = self.tap(x)
        x = self.tap_n(t) + 0.5 * t
        x = self.bare(x)
        x = self.twice_a(self.twice(x)) + self.twice_b(self.twice(x))
        return self.ok_n(self.ok(x))


class Seq1d(nn.Module):
    """1-D convs: stride 2, a depthwise one, a conv with bias, no BN and more padding than half its kernel."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv1d(4, 8, 5, stride=2, padding=2, bias=False)
        self.an = nn.BatchNorm1d(8)
        self.b = nn.Conv1d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn_ = nn.BatchNorm1d(8)
        self.c = nn.Conv1d(8, 8, 3, padding=2)  # wider than "same": the output grows

    def forward(self, x):
        x = torch.relu(self.an(self.a(x)))
        x = torch.relu(self.bn_(self.b(x)))
        return self.c(x)


class Vol3d(nn.Module):
    """3-D convs: a stride-2 one with padding 0 (branches crop), a grouped dilated one."""

    def __init__(self):
        super().__init__()
        self.p = nn.Conv3d(2, 6, 3, stride=2, padding=0, bias=False)
        self.q = nn.BatchNorm3d(6)
        self.r = nn.Conv3d(6, 6, 3, padding=2, dilation=2, groups=3, bias=False)
        self.s = nn.BatchNorm3d(6)

    def forward(self, x):
        return self.s(self.r(torch.relu(self.q(self.p(x)))))


MODELS = {
    "fanout": (FanOut, (2, 3, 20, 20)),
    "refusals": (Refusals, (2, 3, 12, 12)),
    "seq1d": (Seq1d, (2, 4, 33)),
    "vol3d": (Vol3d, (2, 2, 9, 9, 9)),
}


class FanOutRenamed(nn.Module):
    """FanOut's computation with other names, nesting and registration order (what a user's copy may look like)."""

    def __init__(self):
        super().__init__()
        self.tail = nn.ModuleDict({"lin": nn.Linear(6, 4), "k5": nn.Conv2d(12, 6, 5, padding=1)})
        self.body = nn.Sequential(
            nn.Conv2d(8, 12, (3, 5), stride=2, padding=(1, 2), bias=False),
            nn.BatchNorm2d(12),
            nn.Conv2d(8, 8, 3, stride=2, padding=0, groups=8, bias=False),
            nn.BatchNorm2d(8),
            nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2, bias=False),
            nn.BatchNorm2d(8),
        )
        self.entry = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))

    def forward(self, x):
        shared = self.entry(x)
        a = torch.relu(self.body[5](self.body[4](shared)))
        b = self.body[3](self.body[2](shared))
        a = nn.functional.max_pool2d(a, 2)
        y = torch.relu(self.body[1](self.body[0](a[:, :, : b.shape[2], : b.shape[3]] + b)))
        return self.tail["lin"](self.tail["k5"](y).mean((2, 3)))


class FanOutGelu(FanOut):
    """Same layers as FanOut, another activation: matches by shape, must fail the numeric check."""

    def forward(self, x):
        shared = self.conv(self.bn(x))
        a = nn.functional.gelu(self.left_n(self.left(shared)))
        b = self.right_n(self.right(shared))
        a = nn.functional.max_pool2d(a, 2)
        y = torch.relu(self.wide_n(self.wide(a[:, :, : b.shape[2], : b.shape[3]] + b)))
        return self.fc(self.head(y).mean((2, 3)))


class NoBiasHead(FanOut):
    """FanOut whose last conv has no bias: it cannot hold the fused bias."""

    def __init__(self):
        super().__init__()
        self.head = nn.Conv2d(12, 6, 5, padding=1, bias=False)


class Pointwise(nn.Module):
    """Only 1×1 convs: no scheme has anything to add."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1, bias=False)
        self.b = nn.BatchNorm2d(8)

    def forward(self, x):
        return self.b(self.a(x))


class DataDependent(nn.Module):
    """torch.fx cannot trace the top level (a branch on tensor values); its children trace fine."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.stem_n = nn.BatchNorm2d(8)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())

    def forward(self, x):
        x = self.stem_n(self.stem(x))
        if x.mean() > 0:
            x = -x
        return self.block(x)


class InputNorm(nn.Module):
    """BatchNorms *before* a conv and before the linear head (folded forwards unless the conv pads)."""

    def __init__(self, pad: int = 0):
        super().__init__()
        self.norm_in = nn.BatchNorm2d(3)
        self.conv = nn.Conv2d(3, 8, 3, padding=pad, bias=False)
        self.conv_n = nn.BatchNorm2d(8)
        self.norm_head = nn.BatchNorm1d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = torch.relu(self.conv_n(self.conv(self.norm_in(x))))
        return self.fc(self.norm_head(y.mean((2, 3))))
