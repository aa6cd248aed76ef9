"""Helpers shared by the re-parameterizable blocks: argument normalisation and window alignment."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from reparam.errors import ReparamError
from reparam.kernel_math import fold_bn


def pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """Normalise an int or a 2-sequence of ints to a pair."""
    if isinstance(value, int):
        return (value, value)
    seq = tuple(value)
    if len(seq) != 2 or not all(isinstance(v, int) for v in seq):
        raise ReparamError(f"{name} must be an int or a pair of ints, got {value!r}", hint=f"e.g. {name}=1")
    return (seq[0], seq[1])


class CropPad(nn.Module):
    """Crop ``crop[0]`` rows and ``crop[1]`` columns from each border of a NCHW tensor.

    A branch whose kernel is smaller than the block's main kernel must see its window centred on the
    main window's centre. That needs padding ``p - dilation * (k // 2)``, which is negative when the
    block's padding is smaller than half the kernel: a negative padding is a crop (as in ACNet's
    reference code).
    """

    def __init__(self, crop: tuple[int, int]):
        super().__init__()
        self.crop = crop

    def forward(self, x: Tensor) -> Tensor:
        ch, cw = self.crop
        if ch:
            x = x[:, :, ch:-ch, :]
        if cw:
            x = x[:, :, :, cw:-cw]
        return x

    def extra_repr(self) -> str:
        return f"crop={self.crop}"


def aligned_branch_padding(
    padding: tuple[int, int], dilation: tuple[int, int], main: tuple[int, int], small: tuple[int, int]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Padding and crop of a branch with kernel ``small`` so its window is centred in ``main``'s window.

    Returns ``(branch_padding, crop)`` per spatial dimension; at most one of the two is non-zero.
    """
    pads, crops = [], []
    for p, d, k, s in zip(padding, dilation, main, small):
        shift = d * (k // 2) - d * (s // 2)
        pads.append(max(p - shift, 0))
        crops.append(max(shift - p, 0))
    return (pads[0], pads[1]), (crops[0], crops[1])


@torch.no_grad()
def fold_conv_bn64(conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm) -> tuple[Tensor, Tensor]:
    """Fold ``bn(conv(x))`` into ``(kernel, bias)`` computed in float64."""
    if not bn.track_running_stats or bn.running_mean is None:
        raise ReparamError(
            "cannot fold a BatchNorm without running statistics",
            hint="build the BatchNorm with track_running_stats=True",
        )
    return fold_bn(
        conv.weight.detach().double(),
        None if conv.bias is None else conv.bias.detach().double(),
        bn.running_mean.double(),
        bn.running_var.double(),
        None if bn.weight is None else bn.weight.detach().double(),
        None if bn.bias is None else bn.bias.detach().double(),
        bn.eps,
    )
