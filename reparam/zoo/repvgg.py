"""RepVGG-A0 and its plain (conv-BN-ReLU) counterpart with identical layer shapes."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from reparam.blocks import RepVGGBlock
from reparam.zoo._layers import init_weights, scale_channels
from reparam.zoo.registry import register_model

REPVGG_PAPER = "Ding et al., RepVGG: Making VGG-style ConvNets Great Again (CVPR 2021)"

# (in_channels, out_channels, stride) -> block whose output is after the ReLU.
BlockFactory = Callable[[int, int, int], nn.Module]


def conv_bn_relu(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    """3×3 conv (no bias) → BN → ReLU: the plain layer a fused RepVGG block is compared with."""
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
            bn=nn.BatchNorm2d(out_ch),
            relu=nn.ReLU(),
        )
    )


def repvgg_block(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    return RepVGGBlock(in_ch, out_ch, 3, stride=stride)


class RepVGG(nn.Module):
    """VGG-style body: stage0 (one stride-2 block) and stage1-4 (first block stride 2), GAP, linear."""

    def __init__(
        self,
        num_blocks: Sequence[int],
        width_multipliers: Sequence[float],
        make: BlockFactory,
        num_classes: int,
        in_chans: int,
        width: float,
    ):
        super().__init__()
        a, b = width_multipliers
        stage0_ch = scale_channels(min(64, 64 * a), width)
        widths = [
            scale_channels(64 * a, width),
            scale_channels(128 * a, width),
            scale_channels(256 * a, width),
            scale_channels(512 * b, width),
        ]
        self.stage0 = make(in_chans, stage0_ch, 2)
        in_ch = stage0_ch
        for i, (n, ch) in enumerate(zip(num_blocks, widths), start=1):
            blocks = []
            for j in range(n):
                blocks.append(make(in_ch, ch, 2 if j == 0 else 1))
                in_ch = ch
            self.add_module(f"stage{i}", nn.Sequential(*blocks))
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(in_ch, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stage0(x)
        x = self.stage4(self.stage3(self.stage2(self.stage1(x))))
        return self.linear(torch.flatten(self.gap(x), 1))


@register_model(paper=REPVGG_PAPER, counterpart="repvgg_a0_plain")
def repvgg_a0(
    num_classes: int = 1000,
    in_chans: int = 3,
    width: float = 1.0,
    num_blocks: Sequence[int] = (2, 4, 14, 1),
    width_multipliers: Sequence[float] = (0.75, 2.5),
) -> nn.Module:
    """RepVGG-A0 (training form): stages [1, 2, 4, 14, 1], widths [48, 48, 96, 192, 1280]."""
    return RepVGG(num_blocks, width_multipliers, repvgg_block, num_classes, in_chans, width)


@register_model(paper=REPVGG_PAPER)
def repvgg_a0_plain(
    num_classes: int = 1000,
    in_chans: int = 3,
    width: float = 1.0,
    num_blocks: Sequence[int] = (2, 4, 14, 1),
    width_multipliers: Sequence[float] = (0.75, 2.5),
) -> nn.Module:
    """Plain VGG-style counterpart of RepVGG-A0: 3×3 conv-BN-ReLU with identical layer shapes."""
    return RepVGG(num_blocks, width_multipliers, conv_bn_relu, num_classes, in_chans, width)
