"""Pure kernel arithmetic shared by every block and rewrite pass.

Nothing here knows about modules: functions take and return tensors. Callers that want exactness
pass float64 tensors and cast the results back to the model's dtype.

Shapes follow PyTorch: a convolution kernel is ``[out, in/groups, *k]``; a transposed convolution
kernel is ``[in, out/groups, *k]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def bn_scale_shift(
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
) -> tuple[Tensor, Tensor]:
    """Per-channel ``(scale, shift)`` such that ``bn(x) == x * scale + shift`` in eval mode.

    ``weight``/``bias`` are the BN's affine parameters (gamma, beta), or None when ``affine=False``.
    """
    scale = torch.rsqrt(running_var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -running_mean * scale
    if bias is not None:
        shift = shift + bias
    return scale, shift


def fold_scale_shift(
    kernel: Tensor, bias: Tensor | None, scale: Tensor, shift: Tensor
) -> tuple[Tensor, Tensor]:
    """Fold a per-output-channel affine map ``y*scale + shift`` into a kernel ``[out, ...]`` and bias."""
    view = (-1,) + (1,) * (kernel.dim() - 1)
    new_kernel = kernel * scale.reshape(view)
    old_bias = bias if bias is not None else torch.zeros_like(scale)
    return new_kernel, old_bias * scale + shift


def fold_bn(
    kernel: Tensor,
    bias: Tensor | None,
    running_mean: Tensor,
    running_var: Tensor,
    gamma: Tensor | None,
    beta: Tensor | None,
    eps: float,
) -> tuple[Tensor, Tensor]:
    """Fold an eval-mode BatchNorm that follows a conv/linear with kernel ``[out, ...]`` (ACNet eq. 2).

    Returns ``(gamma/sigma * kernel, beta + (bias - mu) * gamma/sigma)``.
    """
    scale, shift = bn_scale_shift(running_mean, running_var, gamma, beta, eps)
    return fold_scale_shift(kernel, bias, scale, shift)


def fold_bn_before(
    kernel: Tensor,
    bias: Tensor | None,
    running_mean: Tensor,
    running_var: Tensor,
    gamma: Tensor | None,
    beta: Tensor | None,
    eps: float,
    groups: int = 1,
) -> tuple[Tensor, Tensor]:
    """Fold an eval-mode BatchNorm that *precedes* an unpadded conv/linear with kernel ``[out, in/g, ...]``.

    ``conv(s * x + t) = conv_{W * s}(x) + b + sum W * t``: every input channel's scale multiplies its
    kernel slice, and its shift, summed through the kernel, adds to the bias. Exact only when the
    conv adds no padding (padded zeros would otherwise stand for ``t``, not 0).
    """
    scale, shift = bn_scale_shift(running_mean, running_var, gamma, beta, eps)
    return fold_scale_shift_before(kernel, bias, scale, shift, groups)


def fold_scale_shift_before(
    kernel: Tensor, bias: Tensor | None, scale: Tensor, shift: Tensor, groups: int = 1
) -> tuple[Tensor, Tensor]:
    """Fold a per-input-channel affine map ``x*scale + shift`` into the unpadded conv/linear after it.

    The kernel is ``[out, in/groups, ...]``; see :func:`fold_bn_before` for when this is exact.
    """
    out_ch, in_per_group = kernel.shape[0], kernel.shape[1]
    # input channel read by kernel[o, j]: group of o times in/g, plus j
    group_of_out = torch.arange(out_ch, device=kernel.device) // (out_ch // groups)
    in_index = (
        group_of_out[:, None] * in_per_group + torch.arange(in_per_group, device=kernel.device)[None, :]
    )
    view = (out_ch, in_per_group) + (1,) * (kernel.dim() - 2)
    new_kernel = kernel * scale[in_index].reshape(view)
    added = (kernel * shift[in_index].reshape(view)).flatten(1).sum(1)
    new_bias = added if bias is None else bias + added
    return new_kernel, new_bias


def fold_bn_transposed(
    kernel: Tensor,
    bias: Tensor | None,
    running_mean: Tensor,
    running_var: Tensor,
    gamma: Tensor | None,
    beta: Tensor | None,
    eps: float,
    groups: int = 1,
) -> tuple[Tensor, Tensor]:
    """Fold a BatchNorm following a transposed convolution (kernel ``[in, out/groups, *k]``)."""
    scale, shift = bn_scale_shift(running_mean, running_var, gamma, beta, eps)
    in_ch, out_per_group = kernel.shape[:2]
    k = kernel.shape[2:]
    grouped = kernel.reshape(groups, in_ch // groups, out_per_group, *k)
    s = scale.reshape(groups, 1, out_per_group, *([1] * len(k)))
    new_kernel = (grouped * s).reshape(kernel.shape)
    old_bias = bias if bias is not None else torch.zeros_like(scale)
    return new_kernel, old_bias * scale + shift


def centered_offset(small: Sequence[int], large: Sequence[int]) -> tuple[int, ...]:
    """Offset that centres a kernel of size ``small`` inside ``large`` (both odd per dim, or equal parity)."""
    offsets = []
    for s, big in zip(small, large, strict=True):
        if (big - s) % 2:
            raise ValueError(f"cannot centre a size-{s} kernel in a size-{big} kernel")
        offsets.append((big - s) // 2)
    return tuple(offsets)


def pad_kernel(kernel: Tensor, size: Sequence[int], offset: Sequence[int] | None = None) -> Tensor:
    """Embed ``kernel [O, I, *k]`` in a zero kernel of spatial ``size`` at ``offset`` (centred by default).

    By the additivity of convolution (ACNet eq. 3), a conv with the small kernel equals a conv with the
    padded kernel when their sliding windows align, which is what the offset expresses.
    """
    spatial = tuple(kernel.shape[2:])
    size = tuple(size)
    if offset is None:
        offset = centered_offset(spatial, size)
    if len(offset) != len(spatial) or len(size) != len(spatial):
        raise ValueError("kernel, size and offset must have the same number of spatial dims")
    out = kernel.new_zeros(*kernel.shape[:2], *size)
    add_kernel_at(out, kernel, offset)
    return out


def add_kernel_at(total: Tensor, kernel: Tensor, offset: Sequence[int]) -> Tensor:
    """``total += pad_kernel(kernel, total's size, offset)`` in place, without building the padded copy."""
    spatial, size = tuple(kernel.shape[2:]), tuple(total.shape[2:])
    if len(offset) != len(spatial) or len(size) != len(spatial):
        raise ValueError("kernel, size and offset must have the same number of spatial dims")
    index = [slice(None), slice(None)]
    for o, s, big in zip(offset, spatial, size, strict=True):
        if o < 0 or o + s > big:
            raise ValueError(f"a size-{s} kernel at offset {o} does not fit in size {big}")
        index.append(slice(o, o + s))
    total[tuple(index)] += kernel
    return total


def identity_kernel(
    channels: int,
    groups: int = 1,
    size: Sequence[int] = (1, 1),
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """A kernel ``[C, C/groups, *size]`` whose convolution (padding = size//2) is the identity map."""
    if channels % groups:
        raise ValueError(f"channels ({channels}) must be divisible by groups ({groups})")
    per_group = channels // groups
    kernel = torch.zeros(channels, per_group, *size, dtype=dtype, device=device)
    centre = tuple(s // 2 for s in size)
    c = torch.arange(channels, device=kernel.device)
    kernel[(c, c % per_group, *centre)] = 1.0  # one indexed write, not one per channel
    return kernel


def avgpool_kernel(
    channels: int,
    groups: int,
    size: Sequence[int],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """A kernel equal to channel-wise average pooling over ``size`` (count_include_pad semantics)."""
    if channels % groups:
        raise ValueError(f"channels ({channels}) must be divisible by groups ({groups})")
    per_group = channels // groups
    kernel = torch.zeros(channels, per_group, *size, dtype=dtype, device=device)
    area = 1
    for s in size:
        area *= s
    for c in range(channels):
        kernel[c, c % per_group] = 1.0 / area
    return kernel


def expand_groups(kernel: Tensor, groups: int) -> Tensor:
    """Turn a grouped kernel ``[O, I/g, *k]`` into the equivalent dense kernel ``[O, I, *k]``."""
    if groups == 1:
        return kernel
    out_ch, in_per_group = kernel.shape[:2]
    out_per_group = out_ch // groups
    dense = kernel.new_zeros(out_ch, in_per_group * groups, *kernel.shape[2:])
    for g in range(groups):
        rows = slice(g * out_per_group, (g + 1) * out_per_group)
        dense[rows, g * in_per_group : (g + 1) * in_per_group] = kernel[rows]
    return dense


def merge_sequential_1x1_kxk(
    k1: Tensor, b1: Tensor, k2: Tensor, b2: Tensor, groups: int = 1
) -> tuple[Tensor, Tensor]:
    """Merge ``conv_kxk(conv_1x1(x))`` into one kxk conv (DiverseBranchBlock's 1x1-kxk branch).

    Exact when the kxk conv sees the 1x1 conv's bias in its padded border too (padding 0, or a
    border filled with ``b1`` as DBB does); the caller checks that. ``k1`` is ``[M, C/g, 1, 1]``,
    ``k2`` is ``[O, M/g, k, k]``.
    """
    if groups == 1:
        kernel = torch.einsum("om...,mc->oc...", k2, k1.flatten(1))
    else:
        m_g = k1.shape[0] // groups
        o_g = k2.shape[0] // groups
        parts = []
        for g in range(groups):
            k1g = k1[g * m_g : (g + 1) * m_g].flatten(1)
            k2g = k2[g * o_g : (g + 1) * o_g]
            parts.append(torch.einsum("om...,mc->oc...", k2g, k1g))
        kernel = torch.cat(parts, 0)
    # Bias of the 1x1 conv goes through the kxk kernel: sum over space and the mid channels.
    if groups == 1:
        bias = b2 + torch.einsum("om...,m->o", k2, b1)
    else:
        m_g = k1.shape[0] // groups
        o_g = k2.shape[0] // groups
        pieces = [
            torch.einsum("om...,m->o", k2[g * o_g : (g + 1) * o_g], b1[g * m_g : (g + 1) * m_g])
            for g in range(groups)
        ]
        bias = b2 + torch.cat(pieces)
    return kernel, bias


def merge_sequential_kxk_1x1(
    k1: Tensor, b1: Tensor, k2: Tensor, b2: Tensor, groups: int = 1
) -> tuple[Tensor, Tensor]:
    """Merge ``conv_1x1(conv_kxk(x))`` into one kxk conv.

    Exact at every border: the 1x1 conv mixes channels pixel by pixel, after the kxk conv's own
    padding. ``k1`` is ``[M, C/g, k, k]``, ``k2`` is ``[O, M/g, 1, 1]``; both use ``groups``.
    """
    m_g, o_g = k1.shape[0] // groups, k2.shape[0] // groups
    kernels, biases = [], []
    for g in range(groups):
        k1g, b1g = k1[g * m_g : (g + 1) * m_g], b1[g * m_g : (g + 1) * m_g]
        k2g = k2[g * o_g : (g + 1) * o_g].flatten(1)
        kernels.append(torch.einsum("om,mc...->oc...", k2g, k1g))
        biases.append(k2g @ b1g)
    return torch.cat(kernels, 0), b2 + torch.cat(biases)


def dilate_kernel(kernel: Tensor, factor: Sequence[int]) -> Tensor:
    """Insert ``factor - 1`` zeros between taps per spatial dim: ``[O, I, *k]`` -> ``[O, I, *((k-1)*f+1)]``.

    A conv with the dilated kernel and dilation ``D`` equals a conv with ``kernel`` and dilation
    ``D * factor`` (same padding), which lets branches with different dilations share one kernel.
    """
    spatial = tuple(kernel.shape[2:])
    factor = tuple(int(f) for f in factor)
    if len(factor) != len(spatial) or any(f < 1 for f in factor):
        raise ValueError(f"need one factor >= 1 per spatial dim, got {factor} for kernel size {spatial}")
    if all(f == 1 for f in factor):
        return kernel
    size = tuple((k - 1) * f + 1 for k, f in zip(spatial, factor))
    out = kernel.new_zeros(*kernel.shape[:2], *size)
    out[(slice(None), slice(None), *(slice(None, None, f) for f in factor))] = kernel
    return out


def regroup_kernel(kernel: Tensor, groups: int, target_groups: int) -> Tensor:
    """Express a conv kernel with ``groups`` as the equivalent kernel for ``target_groups``.

    ``target_groups`` must divide ``groups``; each target group holds ``groups // target_groups``
    original groups as a block-diagonal kernel (``target_groups=1`` is :func:`expand_groups`).
    """
    if groups == target_groups:
        return kernel
    if target_groups < 1 or groups % target_groups:
        raise ValueError(f"cannot regroup a kernel with {groups} groups into {target_groups} groups")
    out_ch = kernel.shape[0]
    chunk = out_ch // target_groups
    per = groups // target_groups
    parts = [expand_groups(kernel[t * chunk : (t + 1) * chunk], per) for t in range(target_groups)]
    return torch.cat(parts, 0)


def spread_pointwise(kernel: Tensor, size: Sequence[int]) -> Tensor:
    """The k×k kernel of a 1×1 conv followed by an average pool over ``size`` (DBB's 1×1–avg branch).

    ``kernel`` is ``[O, I/g, 1, ...]``; each tap becomes ``prod(size)`` taps of ``tap / prod(size)``.
    Exact with count_include_pad semantics, where the pool averages the 1×1 conv's outputs. Groups
    are kept: the pool acts channel by channel.
    """
    spatial = tuple(kernel.shape[2:])
    size = tuple(size)
    if any(s != 1 for s in spatial) or len(size) != len(spatial):
        raise ValueError(f"need a 1x1 kernel with {len(size)} spatial dims, got kernel size {spatial}")
    return kernel.expand(*kernel.shape[:2], *size) / math.prod(size)
