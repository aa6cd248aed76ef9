"""Merge a 1×1 conv followed by a k×k conv into one k×k conv where that is exact."""

from __future__ import annotations

import math

import torch
from torch import fx, nn

from reparam.engine.base import NotRepresentable, PassContext, PassResult, register_pass
from reparam.engine.graph import (
    CONV,
    CONV_BY_DIM,
    block_path,
    choose_name,
    install,
    module_chains,
    module_of,
)
from reparam.engine.record import FusionEntry
from reparam.kernel_math import merge_sequential_1x1_kxk, merge_sequential_kxk_1x1, regroup_kernel


def _padding(conv) -> tuple[int, ...] | None:
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return (0,) * len(conv.kernel_size)
        if all(k == 1 for k in conv.kernel_size):
            return (0,) * len(conv.kernel_size)
        return None
    return tuple(conv.padding)


def _install_pair(
    gm: fx.GraphModule,
    ctx: PassContext,
    first: fx.Node,
    node: fx.Node,
    shaped_like: nn.Module,
    layout: tuple[int, int, int, dict],
    values: tuple[torch.Tensor, torch.Tensor],
    detail: str,
) -> FusionEntry | None:
    """Replace ``node(first(x))`` by one conv with ``shaped_like``'s kernel size; None if left alone."""
    cin, cout, groups, geometry = layout
    where = str(node.target)
    like = shaped_like.weight
    new = CONV_BY_DIM[len(shaped_like.kernel_size)](
        cin,
        cout,
        shaped_like.kernel_size,
        groups=groups,
        bias=True,
        device="meta",
        dtype=like.dtype,
        **geometry,
    )  # on meta: no initialisation, weight and bias are set below
    try:
        new.weight = ctx.parameter(values[0], like, "weight")
        new.bias = ctx.parameter(values[1], like, "bias")
    except NotRepresentable as exc:
        ctx.leave(where, f"{first.target} -> {where} not merged: {exc}")
        return None
    leaving = {node, first}
    sources = [str(first.target), where]
    fallback = str(first.target) if module_of(gm, first) is shaped_like else where
    name = choose_name(gm, [ctx.parent_of_sources(sources), fallback], leaving)
    install(gm, name, new, node, first.args, leaving)
    return ctx.record(name, new, sources, detail)


def _pointwise(conv: nn.Module) -> bool:
    """A 1×1 conv with stride 1 and no padding: it maps each position on its own."""
    padding = _padding(conv)
    return (
        all(k == 1 for k in conv.kernel_size)
        and all(s == 1 for s in conv.stride)
        and padding is not None
        and not any(padding)
    )


@register_pass
class Merge1x1Kxk:
    """``conv_kxk(conv_1x1(x))`` → ``conv_kxk'(x)`` (DiverseBranchBlock's 1×1–k×k branch)."""

    name = "merge_1x1_kxk"
    description = "merge a 1x1 conv followed by a kxk conv into one kxk conv where exact"

    @torch.no_grad()
    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        fused = []
        gone: set[fx.Node] = set()
        for node, c2, first, c1 in module_chains(gm, CONV, CONV, gone, inner_single_input=True):
            if type(c1) is not type(c2):
                continue
            if not _pointwise(c1):
                continue
            where = str(node.target)
            ctx.current_block = ctx.full(block_path(node) or where)
            if len(first.users) != 1:
                continue
            p2 = _padding(c2)
            b1 = c1.bias.detach().double() if c1.bias is not None else None
            if p2 is None or (any(p2) and c2.padding_mode != "zeros"):
                ctx.leave(
                    where,
                    f"{first.target} -> {where}: padding {c2.padding!r} with mode "
                    f"{c2.padding_mode!r} cannot be merged exactly",
                )
                continue
            if any(p2) and b1 is not None and bool(b1.abs().max() > 0):
                ctx.leave(
                    where,
                    f"{first.target} -> {where}: the k×k conv pads with zeros where the 1×1 "
                    "conv's output would be its (non-zero) bias, so merging is not exact",
                )
                continue
            g1, g2 = c1.groups, c2.groups
            groups = g1 if g1 == g2 else 1
            mid, cin, cout = c1.out_channels, c1.in_channels, c2.out_channels
            area = math.prod(c2.kernel_size)
            before = mid * cin // g1 + cout * (mid // g2) * area
            after = cout * (cin // groups) * area
            if after > before:
                ctx.leave(
                    where,
                    f"merging {first.target} -> {where} would cost {after} instead of {before} "
                    "multiply-adds per output position",
                )
                continue
            k1 = regroup_kernel(c1.weight.detach().double(), g1, groups)
            k2 = regroup_kernel(c2.weight.detach().double(), g2, groups)
            b1 = b1 if b1 is not None else k1.new_zeros(mid)
            b2 = c2.bias.detach().double() if c2.bias is not None else k2.new_zeros(cout)
            kernel, bias = merge_sequential_1x1_kxk(k1, b1, k2, b2, groups=groups)
            geometry = {"stride": c2.stride, "padding": p2, "dilation": c2.dilation}
            detail = f"1x1 conv {first.target} merged into {tuple(c2.kernel_size)} conv {where}"
            entry = _install_pair(
                gm, ctx, first, node, c2, (cin, cout, groups, geometry), (kernel, bias), detail
            )
            if entry is not None:
                gone |= {node, first}
                fused.append(entry)
        return PassResult(gm, bool(fused), fused)


@register_pass
class MergeKxk1x1:
    """``conv_1x1(conv_kxk(x))`` → ``conv_kxk'(x)``: exact at the borders, merged when not costlier."""

    name = "merge_kxk_1x1"
    description = "merge a kxk conv followed by an unpadded 1x1 conv into one kxk conv where not costlier"

    @torch.no_grad()
    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        fused = []
        gone: set[fx.Node] = set()
        for node, c2, first, c1 in module_chains(gm, CONV, CONV, gone, inner_single_input=True):
            if type(c1) is not type(c2) or len(first.users) != 1:
                continue
            if not _pointwise(c2) or all(k == 1 for k in c1.kernel_size):
                continue  # (1x1 -> 1x1 is merge_1x1_kxk's)
            where = str(node.target)
            ctx.current_block = ctx.full(block_path(node) or where)
            g1, g2 = c1.groups, c2.groups
            groups = g1 if g1 == g2 else 1
            mid, cin, cout = c1.out_channels, c1.in_channels, c2.out_channels
            area = math.prod(c1.kernel_size)
            before = mid * (cin // g1) * area + cout * (mid // g2)
            after = cout * (cin // groups) * area
            if after > before:
                ctx.leave(
                    where,
                    f"merging {first.target} -> {where} would cost {after} instead of {before} "
                    "multiply-adds per output position",
                )
                continue
            k1 = regroup_kernel(c1.weight.detach().double(), g1, groups)
            k2 = regroup_kernel(c2.weight.detach().double(), g2, groups)
            b1 = c1.bias.detach().double() if c1.bias is not None else k1.new_zeros(mid)
            b2 = c2.bias.detach().double() if c2.bias is not None else k2.new_zeros(cout)
            kernel, bias = merge_sequential_kxk_1x1(k1, b1, k2, b2, groups=groups)
            geometry = {
                "stride": c1.stride,
                "padding": c1.padding,
                "dilation": c1.dilation,
                "padding_mode": c1.padding_mode,
            }
            detail = f"{tuple(c1.kernel_size)} conv {first.target} and the 1x1 conv {where} after it merged"
            entry = _install_pair(
                gm, ctx, first, node, c1, (cin, cout, groups, geometry), (kernel, bias), detail
            )
            if entry is not None:
                gone |= {node, first}
                fused.append(entry)
        return PassResult(gm, bool(fused), fused)
