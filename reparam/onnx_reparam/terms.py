"""Linear maps between two tensors of an ONNX graph, as one convolution each, in float64.

A :class:`Term` is what a chain of linear nodes computes from its source tensor: a convolution
(``kind="conv"``), a fully connected layer (``"gemm"``) or a transposed convolution (``"convT"``),
with explicit geometry. Composing two terms (:func:`then`) or summing terms over one source
(:func:`merge`) either gives one exact term or a reason why not; nothing here is approximate.
The kernel arithmetic itself is :mod:`reparam.kernel_math`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from reparam import kernel_math as km

Reason = str  # why two terms do not combine exactly


@dataclass(frozen=True)
class Term:
    """``y = conv(x)`` with a float64 kernel ``[O, I/groups, *k]`` (``[I, O/groups, *k]`` for convT).

    ``kernel is None`` marks the identity (possibly zero-padded) whose channel count is not yet
    known; :func:`materialize` gives it a kernel once another branch tells the channels.
    """

    kernel: Tensor | None
    bias: Tensor | None
    groups: int = 1
    strides: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()
    begins: tuple[int, ...] = ()
    ends: tuple[int, ...] = ()
    kind: str = "conv"
    node: Any = None  # convT: the original node, whose attributes the fused node keeps
    # the largest bias seen on the way: float32 values that cancel in the bias are compared at this scale
    bias_scale: float = 0.0

    @property
    def is_identity(self) -> bool:
        return self.kernel is None

    @property
    def padded(self) -> bool:
        return any(self.begins) or any(self.ends)

    @property
    def pointwise(self) -> bool:
        """A 1x1 kernel at stride 1 (padding allowed): it mixes channels pixel by pixel."""
        if self.kind not in ("conv", "gemm") or self.kernel is None:
            return self.kernel is None
        return all(k == 1 for k in self.kernel.shape[2:]) and all(s == 1 for s in self.strides)

    @property
    def diagonal(self) -> bool:
        """One scale per channel (``groups == channels``, 1x1): a BatchNorm or constant Mul/Add."""
        k = self.kernel
        return k is not None and self.pointwise and k.shape[1] == 1 and self.groups == k.shape[0]

    @property
    def out_channels(self) -> int | None:
        if self.kernel is None:
            return None
        return self.kernel.shape[1] * self.groups if self.kind == "convT" else self.kernel.shape[0]

    @property
    def in_channels(self) -> int | None:
        if self.kernel is None:
            return None
        return self.kernel.shape[0] if self.kind == "convT" else self.kernel.shape[1] * self.groups

    def describe(self) -> str:
        if self.kernel is None:
            return "identity"
        size = "x".join(str(k) for k in self.kernel.shape[2:]) or "1"
        return f"{size} {self.kind}" + (f" (groups {self.groups})" if self.groups > 1 else "")


def identity(begins: tuple[int, ...] = (), ends: tuple[int, ...] = ()) -> Term:
    """The identity map, optionally zero-padded (a Pad node)."""
    return Term(None, None, begins=begins, ends=ends)


def affine(scale: Tensor, shift: Tensor, spatial: int) -> Term:
    """``x * scale + shift`` per channel (channel axis 1) as a depthwise 1x1 term."""
    ones = (1,) * spatial
    kernel = scale.reshape(-1, 1, *ones).clone()
    kind = "conv" if spatial else "gemm"
    return Term(kernel, shift.clone(), len(scale), ones, ones, (0,) * spatial, (0,) * spatial, kind)


def materialize(term: Term, channels: int, spatial: int) -> Term:
    """Give an identity term the kernel of a depthwise 1x1 convolution with ``channels`` channels."""
    if term.kernel is not None:
        return term
    one = torch.ones(channels, dtype=torch.float64)
    base = affine(one, torch.zeros(channels, dtype=torch.float64), spatial)
    if not term.padded:
        return base
    return replace(base, begins=term.begins, ends=term.ends)


def _regroup_pair(a: Term, b: Term) -> tuple[Tensor, Tensor, int]:
    g = math.gcd(a.groups, b.groups)
    return km.regroup_kernel(a.kernel, a.groups, g), km.regroup_kernel(b.kernel, b.groups, g), g


def _add_pads(a: Term, b: Term) -> tuple[tuple[int, ...], tuple[int, ...]] | Reason:
    """``a``'s padding (negative: a crop), then ``b``'s, as one padding of the input."""
    first = (*(a.begins or (0,) * len(b.begins)), *(a.ends or (0,) * len(b.ends)))
    then_ = (*b.begins, *b.ends)
    if any(x < 0 < y for x, y in zip(first, then_)):
        return "a crop followed by a zero padding of the same border is not one padding"
    total = tuple(x + y for x, y in zip(first, then_))
    return total[: len(b.begins)], total[len(b.begins) :]


def _scale_shift_after(a: Term, b: Term) -> Term:
    scale, shift = b.kernel.flatten(), b.bias
    if a.kind == "convT":
        zero, one = torch.zeros_like(scale), torch.ones_like(scale)
        # a BatchNorm with mean 0, variance 1 and eps 0 is exactly x*scale + shift (rsqrt(1) == 1)
        kernel, bias = km.fold_bn_transposed(a.kernel, a.bias, zero, one, scale, shift, 0.0, a.groups)
    else:
        kernel, bias = km.fold_scale_shift(a.kernel, a.bias, scale, shift)
    seen = max(a.bias_scale, float(a.bias.abs().amax()), float(shift.abs().amax()))
    return replace(a, kernel=kernel, bias=bias, bias_scale=seen)


def cost(term: Term) -> int:
    """Multiply-adds per output pixel of the term as one convolution (its kernel's size)."""
    return 0 if term.kernel is None else term.kernel.numel()


def _costlier(a: Term, b: Term, merged_groups: int) -> Reason | None:
    """Why merging ``b(a(x))`` into one kernel would cost more than running both (else None).

    As the engine's sequential passes count it: per output pixel, kernel sizes only.
    """
    area = math.prod(a.kernel.shape[2:]) * math.prod(b.kernel.shape[2:])
    after = b.out_channels * (a.in_channels // merged_groups) * area
    before = cost(a) + cost(b)
    if after > before:
        return (
            f"merging a {a.describe()} and a {b.describe()} would cost {after} instead of {before} per pixel"
        )
    return None


def then(a: Term, b: Term, costlier_ok: bool = False) -> Term | Reason:
    """The single term equal to ``b(a(x))``, or the reason why there is none.

    A merge of two convolutions that costs more than both is refused unless ``costlier_ok`` (a
    branch of a sum, whose merged whole is judged by its caller).
    """
    if a.is_identity:
        if not a.padded:
            return b
        if b.kind != "conv" or b.is_identity:
            return "a zero padding before a non-convolution"
        pads = _add_pads(a, b)
        return pads if isinstance(pads, str) else replace(b, begins=pads[0], ends=pads[1])
    if b.is_identity:
        return a if not b.padded else "a Pad after a spatial convolution is not a convolution"
    if b.diagonal and not b.padded:
        return _scale_shift_after(a, b)
    if a.kind == "convT" or b.kind == "convT":
        return "a transposed convolution only absorbs a per-channel scale and shift after it"
    sequential = (b.pointwise and not b.padded) or (a.pointwise and not a.diagonal)
    if sequential and not costlier_ok and (why := _costlier(a, b, math.gcd(a.groups, b.groups))):
        return why
    if b.pointwise and not b.padded:
        k1, k2, g = _regroup_pair(a, b)
        kernel, bias = km.merge_sequential_kxk_1x1(k1, a.bias, k2, b.bias, g)
        return replace(a, kernel=kernel, bias=bias, groups=g)
    if a.pointwise:
        return _pointwise_then(a, b)
    return f"a {a.describe()} followed by a {b.describe()} is not one convolution"


def _pointwise_then(a: Term, b: Term) -> Term | Reason:
    if b.padded and bool(torch.any(a.bias != 0)):
        return (
            f"the bias of the {a.describe()} before it would be seen through the {b.describe()}'s "
            "zero padding (it is exact only for an unpadded convolution)"
        )
    pads = _add_pads(a, b)
    if isinstance(pads, str):
        return pads
    begins, ends = pads
    if a.diagonal:
        scale, shift = a.kernel.flatten(), a.bias
        kernel, bias = km.fold_scale_shift_before(b.kernel, b.bias, scale, shift, b.groups)
        return replace(b, kernel=kernel, bias=bias, begins=begins, ends=ends)
    k1, k2, g = _regroup_pair(a, b)
    kernel, bias = km.merge_sequential_1x1_kxk(k1, a.bias, k2, b.bias, g)
    return replace(b, kernel=kernel, bias=bias, groups=g, begins=begins, ends=ends)


def _more_pads(a: Term, begins: tuple[int, ...], ends: tuple[int, ...]) -> Term:
    old_b, old_e = a.begins or (0,) * len(begins), a.ends or (0,) * len(ends)
    return replace(
        a,
        begins=tuple(x + y for x, y in zip(old_b, begins, strict=True)),
        ends=tuple(x + y for x, y in zip(old_e, ends, strict=True)),
    )


def _same_in_float32(values: Tensor, target: float, scale: float) -> bool:
    """Equal up to float32 rounding at ``scale``: a border value written by the training framework
    (in fp32) next to the same value computed here in float64 from the BatchNorm's parameters."""
    tol = 4 * torch.finfo(torch.float32).eps * torch.clamp(values.abs(), min=max(abs(target), scale))
    return bool(torch.all((values - target).abs() <= tol))


def pad_after(a: Term, begins: tuple[int, ...], ends: tuple[int, ...], value: float) -> Term | Reason:
    """The term equal to ``pad(a(x), value)``: exact when ``a`` is pointwise and ``a(0) == value``."""
    before = (*(a.begins or (0,) * len(begins)), *(a.ends or (0,) * len(ends)))
    if any(x < 0 < y for x, y in zip(before, (*begins, *ends))):
        return "a crop followed by a padding of the same border is not one padding"
    if a.is_identity:
        if value != 0.0:
            return f"a Pad with value {value:g} is not a zero padding"
        return _more_pads(a, begins, ends)
    if a.kind != "conv" or not a.pointwise:
        return f"a Pad after a {a.describe()} is not part of one convolution"
    if not _same_in_float32(a.bias, value, a.bias_scale):
        return f"the Pad's value {value:g} differs from the border the fused convolution would give"
    return _more_pads(a, begins, ends)


def crop_after(a: Term, begins: tuple[int, ...], ends: tuple[int, ...]) -> Term | Reason:
    """The term equal to ``a(x)`` with its borders cropped (``begins``/``ends`` <= 0)."""
    if not a.is_identity and (a.kind != "conv" or not a.pointwise):
        return f"a crop after a {a.describe()} is not part of one convolution"
    return _more_pads(a, begins, ends)  # a crop after a padding removes that padding first


def merge(terms: list[Term]) -> Term | Reason:
    """One term equal to the sum of ``terms`` (all reading the same tensor), or why there is none."""
    known = [t for t in terms if t.kernel is not None]
    if not known:
        return "every branch is the input itself"
    ref = known[0]
    if any(t.kind != ref.kind for t in known):
        return "the branches mix convolutions and fully connected layers"
    if ref.kind == "convT":
        return "branches of transposed convolutions are not merged"
    spatial = ref.kernel.dim() - 2
    terms = [materialize(t, ref.in_channels, spatial) for t in terms]
    if len({(t.in_channels, t.out_channels) for t in terms}) > 1:
        return "the branches have different channel counts"
    if len({t.strides for t in terms}) > 1:
        return f"the branches' strides differ ({', '.join(str(t.strides) for t in terms)})"
    if ref.kind == "gemm":
        return replace(ref, kernel=sum(t.kernel for t in terms), bias=sum(t.bias for t in terms))
    return _merge_convs(terms)


def _extent(t: Term, dim: int) -> int:
    """How far past its window's first tap a term reads, in input pixels."""
    return t.dilations[dim] * (t.kernel.shape[2 + dim] - 1)


def _merge_convs(terms: list[Term]) -> Term | Reason:
    spatial = terms[0].kernel.dim() - 2
    # a 1x1 kernel has no dilation to speak of: give it the others' so that it needs no spelling out
    wide = [t.dilations for t in terms if any(k > 1 for k in t.kernel.shape[2:])]
    if wide:
        terms = [
            t if any(k > 1 for k in t.kernel.shape[2:]) else replace(t, dilations=wide[0]) for t in terms
        ]
    for d in range(spatial):
        # every output pixel i reads from i*stride - begin on: equal output sizes at every input size
        if len({t.begins[d] + t.ends[d] - _extent(t, d) for t in terms}) > 1:
            return "the branches' outputs differ in size (padding and kernel size do not match)"
    dilation = terms[0].dilations
    top = tuple(max(t.begins[d] for t in terms) for d in range(spatial))
    aligned = all(
        t.dilations == dilation and all((top[d] - t.begins[d]) % dilation[d] == 0 for d in range(spatial))
        for t in terms
    )
    if not aligned:  # taps of different dilations: spell every kernel out at dilation 1
        terms = [
            replace(t, kernel=km.dilate_kernel(t.kernel, t.dilations), dilations=(1,) * spatial)
            for t in terms
        ]
        dilation = (1,) * spatial
    g = math.gcd(*(t.groups for t in terms))
    offsets = [tuple((top[d] - t.begins[d]) // dilation[d] for d in range(spatial)) for t in terms]
    size = tuple(max(o[d] + t.kernel.shape[2 + d] for o, t in zip(offsets, terms)) for d in range(spatial))
    first = terms[0]
    total = first.kernel.new_zeros(first.out_channels, first.in_channels // g, *size)
    for t, o in zip(terms, offsets, strict=True):
        km.add_kernel_at(total, km.regroup_kernel(t.kernel, t.groups, g), o)
    ends = tuple(
        first.begins[d] + first.ends[d] - _extent(first, d) + dilation[d] * (size[d] - 1) - top[d]
        for d in range(spatial)
    )
    bias = sum(t.bias for t in terms)
    return replace(first, kernel=total, bias=bias, groups=g, dilations=dilation, begins=top, ends=ends)
