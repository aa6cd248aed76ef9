"""ResNets and their ACB and SE variants (ScaleNets are in ``reparam.zoo.scalenet``)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from reparam.blocks import SEBasicBlock, SEBottleneck
from reparam.errors import ReparamError
from reparam.zoo._layers import (
    BasicBlock,
    Bottleneck,
    ConvBNFactory,
    StagedNet,
    acb_conv_bn,
    cifar_stem,
    conv_bn,
    imagenet_stem,
    scale_channels,
)
from reparam.zoo.registry import register_model

RESNET_PAPER = "He et al., Deep Residual Learning for Image Recognition (CVPR 2016)"
ACNET_PAPER = "Ding et al., ACNet: Strengthening the Kernel Skeletons for Powerful CNN via Asymmetric Convolution Blocks (ICCV 2019)"
SENET_PAPER = "Hu et al., Squeeze-and-Excitation Networks (CVPR 2018)"


def _basic_resnet(
    layers: Sequence[int], num_classes: int, in_chans: int, width: float, make: ConvBNFactory
) -> StagedNet:
    stem_ch = scale_channels(64, width)
    in_ch, stages = stem_ch, []
    for i, n in enumerate(layers):
        out_ch = scale_channels(64 * 2**i, width)
        blocks = []
        for j in range(n):
            blocks.append(BasicBlock(in_ch, out_ch, 2 if (j == 0 and i > 0) else 1, make))
            in_ch = out_ch
        stages.append(nn.Sequential(*blocks))
    return StagedNet(imagenet_stem(in_chans, stem_ch, make), stages, in_ch, num_classes)


def _bottleneck_resnet(
    layers: Sequence[int], num_classes: int, in_chans: int, width: float, make: ConvBNFactory
) -> StagedNet:
    stem_ch = scale_channels(64, width)
    in_ch, stages = stem_ch, []
    for i, n in enumerate(layers):
        mid_ch, out_ch = scale_channels(64 * 2**i, width), scale_channels(256 * 2**i, width)
        blocks = []
        for j in range(n):
            blocks.append(Bottleneck(in_ch, mid_ch, out_ch, 2 if (j == 0 and i > 0) else 1, make))
            in_ch = out_ch
        stages.append(nn.Sequential(*blocks))
    return StagedNet(imagenet_stem(in_chans, stem_ch, make), stages, in_ch, num_classes)


def _cifar_resnet(
    depth: int, num_classes: int, in_chans: int, width: float, make: ConvBNFactory
) -> StagedNet:
    if depth < 8 or (depth - 2) % 6:
        raise ReparamError(
            f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}", hint="e.g. depth=56, 20 or 8"
        )
    n = (depth - 2) // 6
    stem_ch = scale_channels(16, width)
    in_ch, stages = stem_ch, []
    for i in range(3):
        out_ch = scale_channels(16 * 2**i, width)
        blocks = []
        for j in range(n):
            blocks.append(BasicBlock(in_ch, out_ch, 2 if (j == 0 and i > 0) else 1, make))
            in_ch = out_ch
        stages.append(nn.Sequential(*blocks))
    return StagedNet(cifar_stem(in_chans, stem_ch, make), stages, in_ch, num_classes)


@register_model(paper=RESNET_PAPER)
def resnet18(num_classes: int = 1000, in_chans: int = 3, width: float = 1.0) -> nn.Module:
    """ResNet-18: basic blocks [2, 2, 2, 2], 64-512 channels."""
    return _basic_resnet([2, 2, 2, 2], num_classes, in_chans, width, conv_bn)


@register_model(paper=RESNET_PAPER)
def resnet50(num_classes: int = 1000, in_chans: int = 3, width: float = 1.0) -> nn.Module:
    """ResNet-50: bottlenecks [3, 4, 6, 3], stride on the 3×3 conv."""
    return _bottleneck_resnet([3, 4, 6, 3], num_classes, in_chans, width, conv_bn)


@register_model(paper=ACNET_PAPER, counterpart="resnet18")
def acb_resnet18(num_classes: int = 1000, in_chans: int = 3, width: float = 1.0) -> nn.Module:
    """ResNet-18 with every conv larger than 1×1 (7×7 stem included) replaced by an ACB."""
    return _basic_resnet([2, 2, 2, 2], num_classes, in_chans, width, acb_conv_bn)


@register_model(paper=ACNET_PAPER, counterpart="resnet50")
def acb_resnet50(num_classes: int = 1000, in_chans: int = 3, width: float = 1.0) -> nn.Module:
    """ResNet-50 with every conv larger than 1×1 (7×7 stem included) replaced by an ACB."""
    return _bottleneck_resnet([3, 4, 6, 3], num_classes, in_chans, width, acb_conv_bn)


@register_model(paper=RESNET_PAPER)
def resnet56_cifar(
    num_classes: int = 10, in_chans: int = 3, width: float = 1.0, depth: int = 56
) -> nn.Module:
    """CIFAR ResNet-56: 3×3 stem, 3 stages of (depth-2)/6 basic blocks, 16/32/64 channels."""
    return _cifar_resnet(depth, num_classes, in_chans, width, conv_bn)


@register_model(paper=ACNET_PAPER, counterpart="resnet56_cifar")
def acb_resnet56_cifar(
    num_classes: int = 10, in_chans: int = 3, width: float = 1.0, depth: int = 56
) -> nn.Module:
    """ACNet's CIFAR ResNet-56 with every 3×3 conv (stem included) replaced by an ACB."""
    return _cifar_resnet(depth, num_classes, in_chans, width, acb_conv_bn)


def _se_resnet(
    block: type[nn.Module],
    layers: Sequence[int],
    num_classes: int,
    in_chans: int,
    width: float,
    reduction: int,
) -> StagedNet:
    expansion = block.expansion  # type: ignore[attr-defined]
    stem_ch = scale_channels(64, width)
    in_ch, stages = stem_ch, []
    for i, n in enumerate(layers):
        ch = scale_channels(64 * 2**i, width)
        blocks = []
        for j in range(n):
            blocks.append(block(in_ch, ch, 2 if (j == 0 and i > 0) else 1, reduction))
            in_ch = ch * expansion
        stages.append(nn.Sequential(*blocks))
    return StagedNet(imagenet_stem(in_chans, stem_ch, conv_bn), stages, in_ch, num_classes)


@register_model(paper=SENET_PAPER)
def se_resnet18(
    num_classes: int = 1000, in_chans: int = 3, width: float = 1.0, reduction: int = 16
) -> nn.Module:
    """SE-ResNet-18: ResNet-18 with a squeeze-and-excitation gate on every residual (r = 16)."""
    return _se_resnet(SEBasicBlock, [2, 2, 2, 2], num_classes, in_chans, width, reduction)


@register_model(paper=SENET_PAPER)
def se_resnet50(
    num_classes: int = 1000, in_chans: int = 3, width: float = 1.0, reduction: int = 16
) -> nn.Module:
    """SE-ResNet-50: ResNet-50 with a squeeze-and-excitation gate on every residual (r = 16)."""
    return _se_resnet(SEBottleneck, [3, 4, 6, 3], num_classes, in_chans, width, reduction)
