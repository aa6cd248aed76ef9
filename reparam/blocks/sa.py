"""ScaleNet's Scale Aggregation (SA) block.

For each scale s: max-pool by s (kernel s, stride s; none for s = 1) → 3×3 conv → BN → ReLU →
nearest upsampling back to the scale-1 output size; the per-scale results are concatenated along
channels. The per-scale channel counts are an argument so that an allocation learned from BN γ
importance (ScaleNet's data-driven neuron allocation) can be plugged in.

Stride: a stride of 2 is applied by the 3×3 conv of every scale (as in ScaleNet's reference code),
so scale s convolves a map downsampled by s·stride and is upsampled to the strided size. Max-pooling
uses ``ceil_mode=True`` so a map smaller than s still gives one pixel instead of an empty tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reparam.errors import ReparamError


def equal_split(total: int, parts: int) -> list[int]:
    """Split ``total`` channels into ``parts`` near-equal counts (the remainder goes to the first ones)."""
    base, rest = divmod(total, parts)
    return [base + (1 if i < rest else 0) for i in range(parts)]


class SABlock(nn.Module):
    """Scale Aggregation block with ``sum(channels_per_scale)`` output channels.

    ``channels_per_scale`` defaults to an equal split of ``out_channels`` over ``scales``; a scale
    given 0 channels is dropped (as an allocation may do).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        scales: Sequence[int] = (1, 2, 4, 8),
        channels_per_scale: Sequence[int] | None = None,
        stride: int = 1,
    ):
        super().__init__()
        scales = tuple(int(s) for s in scales)
        if not scales or any(s < 1 for s in scales):
            raise ReparamError(
                f"scales must be positive ints, got {scales!r}", hint="e.g. scales=(1, 2, 4, 8)"
            )
        if channels_per_scale is None:
            total = in_channels if out_channels is None else out_channels
            channels_per_scale = equal_split(total, len(scales))
        channels_per_scale = [int(c) for c in channels_per_scale]
        if len(channels_per_scale) != len(scales) or any(c < 0 for c in channels_per_scale):
            raise ReparamError(
                f"channels_per_scale {channels_per_scale} does not match scales {scales}",
                hint="give one non-negative channel count per scale",
            )
        if sum(channels_per_scale) == 0:
            raise ReparamError(
                "SABlock needs at least one output channel", hint="allocate channels to a scale"
            )
        if out_channels is not None and sum(channels_per_scale) != out_channels:
            raise ReparamError(
                f"channels_per_scale sums to {sum(channels_per_scale)}, not out_channels={out_channels}",
                hint="make the per-scale counts add up to out_channels, or omit out_channels",
            )
        self.in_channels, self.stride = in_channels, stride
        self.out_channels = sum(channels_per_scale)
        self.scales = tuple(s for s, c in zip(scales, channels_per_scale) if c > 0)
        self.channels_per_scale = tuple(c for c in channels_per_scale if c > 0)
        self.branches = nn.ModuleList(
            self._branch(s, c) for s, c in zip(self.scales, self.channels_per_scale)
        )

    def _branch(self, scale: int, channels: int) -> nn.Sequential:
        layers = [nn.MaxPool2d(scale, stride=scale, ceil_mode=True)] if scale > 1 else []
        layers += [
            nn.Conv2d(self.in_channels, channels, 3, stride=self.stride, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
        ]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        # Output size of an unpooled 3×3 conv with padding 1 and this stride.
        size = [(x.shape[2] - 1) // self.stride + 1, (x.shape[3] - 1) // self.stride + 1]
        outs = []
        for s, branch in zip(self.scales, self.branches):
            y = branch(x)
            if s > 1:
                y = F.interpolate(y, size=size, mode="nearest")
            outs.append(y)
        return torch.cat(outs, dim=1)
