"""SKNets: ResNeXt-50 (32×4d) layouts with every bottleneck's 3×3 grouped conv replaced by an SK conv."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from reparam.blocks import SKUnit
from reparam.zoo._layers import StagedNet, clamp_groups, conv_bn, imagenet_stem, scale_channels
from reparam.zoo.registry import register_model

SKNET_PAPER = "Li et al., Selective Kernel Networks (CVPR 2019)"


def _sknet(
    layers: Sequence[int], num_classes: int, in_chans: int, width: float, M: int, G: int, r: int, L: int
) -> StagedNet:
    stem_ch = scale_channels(64, width)
    in_ch, stages = stem_ch, []
    for i, n in enumerate(layers):
        mid_ch, out_ch = scale_channels(128 * 2**i, width), scale_channels(256 * 2**i, width)
        groups = clamp_groups(mid_ch, G)
        blocks = []
        for j in range(n):
            blocks.append(
                SKUnit(in_ch, mid_ch, out_ch, 2 if (j == 0 and i > 0) else 1, M=M, G=groups, r=r, L=L)
            )
            in_ch = out_ch
        stages.append(nn.Sequential(*blocks))
    return StagedNet(imagenet_stem(in_chans, stem_ch, conv_bn), stages, in_ch, num_classes)


@register_model(paper=SKNET_PAPER)
def sknet26(
    num_classes: int = 1000,
    in_chans: int = 3,
    width: float = 1.0,
    M: int = 2,
    G: int = 32,
    r: int = 16,
    L: int = 32,
) -> nn.Module:
    """SKNet-26: SK[2,32,16] units [2, 2, 2, 2] on ResNeXt-50 widths."""
    return _sknet([2, 2, 2, 2], num_classes, in_chans, width, M, G, r, L)


@register_model(paper=SKNET_PAPER)
def sknet50(
    num_classes: int = 1000,
    in_chans: int = 3,
    width: float = 1.0,
    M: int = 2,
    G: int = 32,
    r: int = 16,
    L: int = 32,
) -> nn.Module:
    """SKNet-50: SK[2,32,16] units [3, 4, 6, 3] on ResNeXt-50 widths."""
    return _sknet([3, 4, 6, 3], num_classes, in_chans, width, M, G, r, L)
