"""ScaleNet's Scale Aggregation (SA) block.

For each scale s: max-pool by s (kernel s, stride s; none for s = 1) → 3×3 conv → BN → ReLU →
nearest upsampling back to the scale-1 output size; the per-scale results are concatenated along
channels. The per-scale channel counts are an argument so that an allocation learned from BN γ
importance (ScaleNet's data-driven neuron allocation) can be plugged in.

Stride: a stride of 2 is applied by the 3×3 conv of every scale, so scale s convolves a map
downsampled by s·stride and is upsampled to the strided size. Max-pooling uses ``ceil_mode=True`` so
a map smaller than s still gives one pixel instead of an empty tensor.

The published ScaleNets (``reparam.zoo.scalenet``) need a few per-scale knobs, all static so the block
stays traceable: the pooling factors (the fourth scale pools by 7), floor-mode pooling (a map smaller
than the factor pools to one pixel), 1×1 kernels on tiny maps and bilinear upsampling where the
factor is not an integer. ``side`` only records the feature-map
side the layout was chosen for.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reparam.errors import ReparamError


def equal_split(total: int, parts: int) -> list[int]:
    """Split ``total`` channels into ``parts`` near-equal counts (the remainder goes to the first ones)."""
    base, rest = divmod(total, parts)
    return [base + (1 if i < rest else 0) for i in range(parts)]


def scale_pool(x: Tensor, factor: int) -> Tensor:
    """Floor-mode max-pool by ``factor``; a map smaller than ``factor`` pools to one pixel."""
    with warnings.catch_warnings():
        # The TorchScript tracer (ONNX export) sees traced sizes; the kernel must be a constant, so
        # the export is specialised to the example's spatial size, as every other pooling is.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        kh, kw = min(factor, int(x.shape[2])), min(factor, int(x.shape[3]))
    return F.max_pool2d(x, (kh, kw), (kh, kw))


# A leaf for torch.fx: its shape test runs on real shapes, not on symbolic ones.
torch.fx.wrap("scale_pool")


class ScalePool(nn.Module):
    """:func:`scale_pool` as a module (the published ScaleNet's floor-mode scale pooling)."""

    def __init__(self, factor: int):
        super().__init__()
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        return scale_pool(x, self.factor)

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


def _per_scale(values: Sequence | None, default, scales: Sequence[int], name: str) -> list:
    if values is None:
        return [default] * len(scales)
    if len(values) != len(scales):
        raise ReparamError(
            f"{name} has {len(values)} entries for {len(scales)} scales", hint="give one entry per scale"
        )
    return list(values)


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
        *,
        kernel_sizes: Sequence[int] | None = None,
        pool_ceil: bool = True,
        upsample_modes: Sequence[str] | None = None,
        side: int | None = None,
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
        kernel_sizes = _per_scale(kernel_sizes, 3, scales, "kernel_sizes")
        upsample_modes = _per_scale(upsample_modes, "nearest", scales, "upsample_modes")
        if any(k not in (1, 3) for k in kernel_sizes) or any(
            m not in ("nearest", "bilinear") for m in upsample_modes
        ):
            raise ReparamError(
                f"unsupported kernel_sizes {kernel_sizes} or upsample_modes {upsample_modes}",
                hint="kernel sizes are 1 or 3, upsampling 'nearest' or 'bilinear'",
            )
        self.in_channels, self.stride, self.pool_ceil, self.side = in_channels, stride, pool_ceil, side
        self.out_channels = sum(channels_per_scale)
        # The full per-scale allocation, zeros included (a structure file records dropped scales).
        self.all_scales, self.allocation = scales, tuple(channels_per_scale)
        kept = [i for i, c in enumerate(channels_per_scale) if c > 0]
        self.scale_positions = tuple(kept)  # index into all_scales of each branch
        self.scales = tuple(scales[i] for i in kept)
        self.channels_per_scale = tuple(channels_per_scale[i] for i in kept)
        self.kernel_sizes = tuple(kernel_sizes[i] for i in kept)
        self.upsample_modes = tuple(upsample_modes[i] for i in kept)
        self.branches = nn.ModuleList(
            self._branch(s, c, k, m == "nearest" or s == 1)
            for s, c, k, m in zip(
                self.scales, self.channels_per_scale, self.kernel_sizes, self.upsample_modes
            )
        )

    def _branch(self, scale: int, channels: int, kernel: int, relu: bool) -> nn.Sequential:
        pool = nn.MaxPool2d(scale, stride=scale, ceil_mode=True) if self.pool_ceil else ScalePool(scale)
        layers = [pool] if scale > 1 else []
        layers += [
            nn.Conv2d(
                self.in_channels, channels, kernel, stride=self.stride, padding=kernel // 2, bias=False
            ),
            nn.BatchNorm2d(channels),
        ]
        return nn.Sequential(*layers, *([nn.ReLU()] if relu else []))

    def forward(self, x: Tensor) -> Tensor:
        # Output size of an unpooled 3×3 conv with padding 1 and this stride.
        size = [(x.shape[2] - 1) // self.stride + 1, (x.shape[3] - 1) // self.stride + 1]
        outs = []
        for s, mode, branch in zip(self.scales, self.upsample_modes, self.branches):
            y = branch(x)
            if s > 1:
                # BN sits before the upsampling (the same in eval mode; BN then folds into the conv).
                # ReLU commutes with nearest upsampling only, so a bilinear branch applies it after.
                if mode == "bilinear":
                    y = F.relu(F.interpolate(y, size=size, mode="bilinear", align_corners=False))
                else:
                    y = F.interpolate(y, size=size, mode="nearest")
            outs.append(y)
        return torch.cat(outs, dim=1)
