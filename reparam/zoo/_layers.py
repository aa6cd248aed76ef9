"""Layer helpers shared by the zoo: channel scaling, conv-BN factories, the ResNet-style skeleton."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from reparam.blocks import ACB

# (in_channels, out_channels, kernel_size, stride, padding, groups) -> module computing BN(conv(x)).
ConvBNFactory = Callable[[int, int, int, int, int, int], nn.Module]


def scale_channels(channels: int, width: float, divisor: int = 8) -> int:
    """``channels * width`` rounded to a multiple of ``divisor``, at least ``divisor`` (8 by default)."""
    return max(divisor, int(round(channels * width / divisor)) * divisor)


def clamp_groups(channels: int, groups: int) -> int:
    """The largest group count ``<= groups`` that divides ``channels`` (for tiny widths)."""
    for g in range(min(groups, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


def conv_bn(
    in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0, groups: int = 1
) -> nn.Module:
    """Plain ``Conv2d`` (no bias) followed by ``BatchNorm2d``, as a Sequential with ``conv`` and ``bn``."""
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(
                in_ch, out_ch, kernel_size, stride=stride, padding=padding, groups=groups, bias=False
            ),
            bn=nn.BatchNorm2d(out_ch),
        )
    )


def acb_conv_bn(
    in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0, groups: int = 1
) -> nn.Module:
    """An ACB for every kernel larger than 1×1, a plain conv-BN for 1×1 convs."""
    if kernel_size == 1:
        return conv_bn(in_ch, out_ch, kernel_size, stride, padding, groups)
    return ACB(in_ch, out_ch, kernel_size, stride=stride, padding=padding, groups=groups)


class BasicBlock(nn.Module):
    """ResNet basic block: 3×3 conv-BN-ReLU, 3×3 conv-BN, plus shortcut, ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, make: ConvBNFactory):
        super().__init__()
        self.conv1 = make(in_ch, out_ch, 3, stride, 1, 1)
        self.relu = nn.ReLU()
        self.conv2 = make(out_ch, out_ch, 3, 1, 1, 1)
        self.shortcut = (
            make(in_ch, out_ch, 1, stride, 0, 1) if stride != 1 or in_ch != out_ch else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(self.relu(self.conv1(x)))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """ResNet/ResNeXt bottleneck: 1×1, 3×3 (stride, groups), 1×1 conv-BN, plus shortcut, ReLU."""

    def __init__(
        self, in_ch: int, mid_ch: int, out_ch: int, stride: int, make: ConvBNFactory, groups: int = 1
    ):
        super().__init__()
        self.conv1 = make(in_ch, mid_ch, 1, 1, 0, 1)
        self.conv2 = make(mid_ch, mid_ch, 3, stride, 1, groups)
        self.conv3 = make(mid_ch, out_ch, 1, 1, 0, 1)
        self.relu = nn.ReLU()
        self.shortcut = (
            make(in_ch, out_ch, 1, stride, 0, 1) if stride != 1 or in_ch != out_ch else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.conv1(x))
        out = self.relu(self.conv2(out))
        out = self.conv3(out)
        return self.relu(out + self.shortcut(x))


def imagenet_stem(in_chans: int, channels: int, make: ConvBNFactory) -> nn.Module:
    """7×7 stride-2 conv-BN-ReLU and a 3×3 stride-2 max-pool."""
    return nn.Sequential(
        OrderedDict(
            conv=make(in_chans, channels, 7, 2, 3, 1),
            relu=nn.ReLU(),
            pool=nn.MaxPool2d(3, stride=2, padding=1),
        )
    )


def cifar_stem(in_chans: int, channels: int, make: ConvBNFactory) -> nn.Module:
    """3×3 stride-1 conv-BN-ReLU."""
    return nn.Sequential(OrderedDict(conv=make(in_chans, channels, 3, 1, 1, 1), relu=nn.ReLU()))


class StagedNet(nn.Module):
    """``stem → layer1 … layerN → global average pool → fc``: the skeleton of every ResNet-style model."""

    def __init__(self, stem: nn.Module, stages: Sequence[nn.Module], features: int, num_classes: int):
        super().__init__()
        self.stem = stem
        self.num_stages = len(stages)
        for i, stage in enumerate(stages, start=1):
            self.add_module(f"layer{i}", stage)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(features, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def init_weights(model: nn.Module) -> None:
    """He initialisation for convs, unit BatchNorms, small-normal linear layers."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
