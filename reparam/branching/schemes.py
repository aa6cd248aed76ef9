"""Expansion schemes: which branches a conv of a given geometry gets, and how they are built.

A scheme only adds branches whose fused sum is exactly a conv of the original kernel size,
stride, padding, dilation and groups (ACNet eq. 3): smaller kernels are centred in the main window
(a crop where the padding is too small), a 1×1→k×k chain is one k×k conv, an identity BatchNorm is
an identity kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from reparam.branching.block import Branch
from reparam.errors import ReparamError
from reparam.kernel_math import identity_kernel

SCHEMES: dict[str, str] = {
    "acb": "ACNet: k×k + 1×k + k×1 (one axis-aligned 1-D kernel per spatial dim), each with BN",
    "repvgg": "RepVGG: k×k + 1×1, plus an identity BN where channels, stride and padding allow",
    "dbb": "DBB-like: k×k + 1×1 + a 1×1→k×k chain + a k×k average pool where channels allow, each with BN",
}

CONV_BY_DIM = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
BN_BY_DIM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
POOL_BY_DIM = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}


@dataclass(frozen=True)
class BranchSpec:
    """One extra branch: a conv kernel, an identity BN (``kernel is None``), a 1×1→k×k chain or a pool."""

    name: str
    kernel: tuple[int, ...] | None
    sequential: bool = False
    pool: bool = False


def check_scheme(scheme: str) -> None:
    """Raise a ReparamError for an unknown scheme name."""
    if not isinstance(scheme, str) or scheme not in SCHEMES:
        shown = repr(scheme) if isinstance(scheme, str) else f"of type {type(scheme).__name__}"
        raise ReparamError(
            f"unknown expansion scheme {shown}",
            hint=f"choose one of: {', '.join(SCHEMES)}",
        )


def numeric_padding(conv: nn.Module) -> tuple[int, ...] | None:
    """Per-dim symmetric padding of a conv, or None when the two sides differ."""
    k, d = conv.kernel_size, conv.dilation
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return (0,) * len(k)
        total = [di * (ki - 1) for di, ki in zip(d, k)]
        if any(t % 2 for t in total):
            return None
        return tuple(t // 2 for t in total)
    return tuple(conv.padding)


def _dims(kernel: tuple[int, ...]) -> str:
    return "×".join(map(str, kernel))


def branch_specs(scheme: str, conv: nn.Module) -> list[BranchSpec] | str:
    """The scheme's branches for ``conv``, or why the conv cannot take the scheme exactly."""
    k = tuple(conv.kernel_size)
    nd = len(k)
    pad = numeric_padding(conv)
    if pad is None:
        return f"padding {conv.padding!r} is not the same on both sides"
    if conv.padding_mode != "zeros" and any(pad):
        return (
            f"padding mode {conv.padding_mode!r}: branches merge exactly only with zero padding "
            "(the engine refuses other modes)"
        )
    if any(ki % 2 == 0 for ki in k):
        return f"even kernel {_dims(k)}: a smaller branch kernel cannot be centred in it"
    if all(ki == 1 for ki in k):
        return f"{_dims(k)} kernel: the scheme's branches would be the same 1×1 kernel"
    ones = (1,) * nd
    if scheme == "acb":
        if nd == 1:
            return "a 1-D kernel has no asymmetric (1×k / k×1) counterpart"
        if any(ki < 3 for ki in k):
            return f"kernel {_dims(k)} is already asymmetric (ACB needs k ≥ 3 in every dim)"
        specs = []
        for axis in reversed(range(nd)):  # 2-D: 1×k first, then k×1, as in ACNet
            size = tuple(k[a] if a == axis else 1 for a in range(nd))
            specs.append(BranchSpec(_dims(size).replace("×", "x"), size))
        return specs
    specs = [BranchSpec("x".join("1" * nd), ones)]
    if scheme == "repvgg":
        same = pad == tuple(di * (ki // 2) for di, ki in zip(conv.dilation, k))
        if conv.in_channels == conv.out_channels and all(s == 1 for s in conv.stride) and same:
            specs.append(BranchSpec("identity", None))
        return specs
    if scheme == "dbb":
        specs.append(BranchSpec("1x1_" + _dims(k).replace("×", "x"), k, sequential=True))
        # An average pool is channel-wise: it needs as many outputs as inputs, and has no dilation.
        poolable = all(p <= ki // 2 for p, ki in zip(pad, k)) and all(d == 1 for d in conv.dilation)
        if conv.in_channels == conv.out_channels and poolable:
            specs.append(BranchSpec("avg", k, pool=True))
        return specs
    check_scheme(scheme)
    raise AssertionError("unreachable")


def aligned_padding(
    padding: tuple[int, ...], dilation: tuple[int, ...], main: tuple[int, ...], small: tuple[int, ...]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Padding and crop per dim that centre a ``small`` kernel's window in the ``main`` one's."""
    pads, crops = [], []
    for p, d, k, s in zip(padding, dilation, main, small):
        shift = d * (k // 2) - d * (s // 2)
        pads.append(max(p - shift, 0))
        crops.append(max(shift - p, 0))
    return tuple(pads), tuple(crops)


def _new_bn(nd: int, channels: int, like: nn.Module | None, init: str, factory: dict) -> nn.Module:
    eps = like.eps if like is not None else 1e-5
    momentum = like.momentum if like is not None else 0.1
    bn = BN_BY_DIM[nd](channels, eps=eps, momentum=momentum, **factory)
    if init == "preserve":
        # gamma = beta = 0: the branch adds exactly zero (train and eval mode) until training moves gamma.
        nn.init.zeros_(bn.weight)
    return bn


@torch.no_grad()
def build_branch(spec: BranchSpec, conv: nn.Module, bn: nn.Module | None, init: str) -> Branch:
    """A freshly initialised branch for ``conv`` (BN ``gamma = 0`` under ``preserve``)."""
    k = tuple(conv.kernel_size)
    nd = len(k)
    w = conv.weight
    factory = {"device": w.device, "dtype": w.dtype}
    new_bn = _new_bn(nd, conv.out_channels, bn, init, factory)
    if spec.kernel is None:
        return Branch(new_bn)
    pad = numeric_padding(conv)
    if spec.pool:
        pool = POOL_BY_DIM[nd](k, stride=conv.stride, padding=pad, count_include_pad=True)
        return Branch(new_bn, pool=pool)
    common = {"stride": conv.stride, "dilation": conv.dilation, "groups": conv.groups, "bias": False}
    conv_cls = CONV_BY_DIM[nd]
    if spec.sequential:
        first = conv_cls(conv.in_channels, conv.in_channels, 1, groups=conv.groups, bias=False, **factory)
        # DBB starts its 1×1 as the identity, so the chain begins as a plain k×k conv.
        first.weight.copy_(identity_kernel(conv.in_channels, conv.groups, (1,) * nd, **factory))
        second = conv_cls(conv.in_channels, conv.out_channels, k, padding=pad, **common, **factory)
        return Branch(new_bn, second, first)
    padding, crop = aligned_padding(pad, tuple(conv.dilation), k, spec.kernel)
    small = conv_cls(conv.in_channels, conv.out_channels, spec.kernel, padding=padding, **common, **factory)
    return Branch(new_bn, small, crop=crop)
