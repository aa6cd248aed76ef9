"""Float64 kernel arithmetic done a block of output rows at a time.

Folding a per-channel scale into a kernel in float64 and casting the result back used to
materialise the whole kernel in float64 two or three times (the float64 copy, the product, its
absolute value). Fresh allocations of that size are paid in page faults, which cost several times
the arithmetic itself: computed a few hundred KiB of rows at a time, the float64 intermediates stay
in the cache and the allocator reuses them. The values are bitwise those of the whole-tensor
computation: each element is the same float64 product rounded once to the layer's dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

# float64 elements per block: 32 Ki elements = 256 KiB, well inside a core's L2 cache
BLOCK_ELEMENTS = 1 << 15


def scaled_rows(weight: Tensor, scale: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """``(weight.double() * scale[:, None, ...]).to(dtype)``: row ``i`` of ``weight`` times ``scale[i]``.

    ``scale`` is a float64 vector of ``weight.shape[0]`` entries; each product is computed in
    float64 and rounded once to ``dtype`` (default: ``weight``'s).
    """
    out = torch.empty(weight.shape, dtype=dtype or weight.dtype, device=weight.device)
    if weight.numel() == 0:
        return out
    rows = weight.shape[0]
    view = (-1,) + (1,) * (weight.dim() - 1)
    step = max(1, BLOCK_ELEMENTS // max(1, weight[0].numel()))
    scale = scale.to(dtype=torch.float64, device=weight.device).reshape(view)
    for start in range(0, rows, step):
        block = slice(start, start + step)
        # a float64 operand makes float64 the computation's dtype; ``out`` receives it rounded once
        torch.mul(weight[block], scale[block], out=out[block])
    return out


def magnitude(values: Tensor) -> float:
    """The largest absolute value of ``values`` (NaN if any is NaN), without an absolute-value copy."""
    if values.numel() == 0:
        return 0.0
    low, high = torch.aminmax(values)
    low, high = float(low), float(high)
    if low != low or high != high:  # NaN: max() would drop it
        return float("nan")
    return max(-low, high)
