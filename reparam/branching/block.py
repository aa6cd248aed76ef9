"""The training-time block that replaces one ``conv (+ BN)`` of a plain network.

The original conv (and its BatchNorm, when one follows it) is kept as the main branch; the scheme's
extra branches read the same input and their outputs are added. Every branch ends in a BatchNorm,
so the block fuses back into one conv of the original geometry with ``reparam.reparameterize``.
"""

from __future__ import annotations

from torch import Tensor, nn


class Branch(nn.Module):
    """``bn(pool(conv(first(crop(x)))))``; all but ``bn`` may be absent (an identity-BN branch is ``bn(x)``).

    ``crop`` removes that many elements from both ends of each spatial dim: a branch whose kernel
    is smaller than the main one needs a negative padding to keep its window centred, and a
    negative padding is a crop.
    """

    def __init__(
        self,
        bn: nn.Module,
        conv: nn.Module | None = None,
        first: nn.Module | None = None,
        crop: tuple[int, ...] = (),
        pool: nn.Module | None = None,
    ):
        super().__init__()
        self.crop = tuple(crop)
        self.first = first
        self.conv = conv
        self.pool = pool
        self.bn = bn

    def forward(self, x: Tensor) -> Tensor:
        if any(self.crop):
            x = x[(slice(None), slice(None), *(slice(c, -c) if c else slice(None) for c in self.crop))]
        if self.first is not None:
            x = self.first(x)
        if self.conv is not None:
            x = self.conv(x)
        if self.pool is not None:
            x = self.pool(x)
        return self.bn(x)

    def extra_repr(self) -> str:
        return f"crop={self.crop}" if any(self.crop) else ""


class ExpandedConv(nn.Module):
    """``bn(conv(x)) + sum(branch(x))``: a plain conv (+ BN) expanded into a multi-branch block.

    ``bn`` is None for a conv with bias and no BatchNorm after it. ``scheme`` names the recipe
    the branches follow (``acb``, ``repvgg``, ``dbb``).
    """

    def __init__(self, conv: nn.Module, bn: nn.Module | None, branches: dict[str, Branch], scheme: str):
        super().__init__()
        self.scheme = scheme
        self.conv = conv
        self.bn = bn
        self.branches = nn.ModuleDict(branches)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        if self.bn is not None:
            out = self.bn(out)
        for branch in self.branches.values():
            out = out + branch(x)
        return out

    def extra_repr(self) -> str:
        return f"scheme={self.scheme!r}"
