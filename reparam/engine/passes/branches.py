"""Merge parallel linear branches over one input whose outputs are summed into one conv.

A sum (``+``, ``torch.add``, ``Tensor.add``, ``sum([...])``) is flattened into its terms. Each term
is read as a linear map of some input tensor: a conv (possibly on a constant crop of the input,
which is a negative padding), a BatchNorm on the input (an identity kernel scaled by the BN), an
average pool (count_include_pad semantics) of the input or of a 1×1 conv of it (Diverse Branch
Block's average branch: the 1×1 weights spread over the pool window), or the input itself
(identity kernel). Terms over the same input whose sliding windows can be aligned exactly become
one conv: kernels are regrouped, dilated and padded into a common window by offset
``(P - p_i) / D`` per dim, and biases add.
"""

from __future__ import annotations

import math
import operator
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import reduce

import torch
import torch.nn.functional as F
from torch import fx, nn

from reparam.engine.base import NotRepresentable, PassContext, PassResult, register_pass
from reparam.engine.graph import (
    BN,
    CONV,
    CONV_BY_DIM,
    ModuleNames,
    blank_conv,
    block_path,
    choose_name,
    is_add,
    module_of,
    replace_with,
    shape_of,
)
from reparam.engine.shapes import propagate_shapes
from reparam.kernel_math import (
    add_kernel_at,
    avgpool_kernel,
    bn_scale_shift,
    dilate_kernel,
    identity_kernel,
    regroup_kernel,
    spread_pointwise,
)

_POOL = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)


@dataclass
class Branch:
    """One summed term read as ``conv(x)`` with per-side padding ``lo``/``hi`` (negative = crop)."""

    leaf: fx.Node
    input: fx.Node
    kind: str  # conv | bn | pool | identity
    ndim: int
    in_ch: int
    out_ch: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    lo: tuple[int, ...]
    hi: tuple[int, ...]
    groups: int | None = None  # None: can take any group count (identity, BN, pool)
    module: nn.Module | None = None
    module_name: str | None = None
    nodes: list[fx.Node] = field(default_factory=list)
    problem: str | None = None
    bn: nn.Module | None = None  # a BatchNorm applied after a pool branch
    pointwise: nn.Module | None = None  # a 1x1 conv before a pool branch
    parts: list[str] = field(default_factory=list)  # modules it consumes besides ``module_name``

    @property
    def label(self) -> str:
        return self.module_name or f"identity({self.input.name})"

    @property
    def weighted(self) -> bool:
        """Whether the branch holds a conv (its own, or a 1x1 conv before a pool)."""
        return self.kind == "conv" or self.pointwise is not None

    @property
    def conv(self) -> nn.Module:
        """The conv whose weights the branch holds (for ``weighted`` branches)."""
        return self.pointwise if self.pointwise is not None else self.module

    def describe(self) -> str:
        size = "x".join(map(str, self.kernel))
        if self.pointwise is not None:
            return f"1x1 conv + pool {size}"
        return (
            f"conv {size} + {type(self.bn).__name__}"
            if self.kind == "conv" and self.bn
            else f"{self.kind} {size}"
        )

    def reach(self) -> tuple[int, ...]:
        """``lo + hi - dilation * (kernel - 1)``: equal values give equal output sizes."""
        return tuple(
            lo + hi - d * (k - 1) for lo, hi, d, k in zip(self.lo, self.hi, self.dilation, self.kernel)
        )

    def macs(self) -> int:
        if self.kind == "conv":
            return self.out_ch * (self.in_ch // self.groups) * math.prod(self.kernel)
        pool = self.out_ch * math.prod(self.kernel)
        return pool + (self.out_ch * (self.in_ch // self.groups) if self.pointwise is not None else 0)


def _tuple(v, n: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, list | tuple) else (int(v),) * n


@dataclass
class Window:
    """What constant spatial crops and zero pads between a tensor and a conv do, per side."""

    source: fx.Node
    crop_lo: list[int]
    crop_hi: list[int]
    pad_lo: list[int]
    pad_hi: list[int]
    nodes: list[fx.Node]


_aten = torch.ops.aten
_PAD_FUNCTIONS = {F.pad, torch.constant_pad_nd, _aten.pad.default, _aten.constant_pad_nd.default}


def _zero_pad(node: fx.Node, ndim: int) -> tuple[list[int], list[int]] | None:
    """Per-side padding of ``F.pad(x, pad)`` with zeros on spatial dims only; None otherwise."""
    constant_nd = node.target in (torch.constant_pad_nd, _aten.constant_pad_nd.default)
    names = ("input", "pad", "value") if constant_nd else ("input", "pad", "mode", "value")
    if len(node.args) > len(names) or set(node.kwargs) - set(names):
        return None
    kw = {**dict(zip(names, node.args)), **node.kwargs}
    pad, mode, value = kw.get("pad"), kw.get("mode", "constant"), kw.get("value", 0)
    if mode != "constant" or value not in (0, 0.0, None) or not isinstance(pad, list | tuple):
        return None
    if len(pad) % 2 or len(pad) > 2 * ndim or not all(isinstance(p, int) and p >= 0 for p in pad):
        return None
    lo, hi = [0] * ndim, [0] * ndim
    for i in range(len(pad) // 2):  # F.pad lists the last dim first
        lo[ndim - 1 - i], hi[ndim - 1 - i] = pad[2 * i], pad[2 * i + 1]
    return lo, hi


def _slice_crop(node: fx.Node, ndim: int) -> tuple[list[int], list[int]] | None:
    """Per-side crop of ``x[:, :, a:-b, ...]`` with constant bounds on spatial dims; None otherwise."""
    src, idx = node.args
    idx = idx if isinstance(idx, tuple) else (idx,)
    if len(idx) > ndim + 2 or not all(isinstance(s, slice) for s in idx):
        return None
    lo, hi = [0] * ndim, [0] * ndim
    for dim, s in enumerate(idx):
        if s == slice(None):
            continue
        if dim < 2 or s.step not in (None, 1):
            return None
        start, stop = s.start or 0, s.stop
        if not isinstance(start, int) or start < 0 or not (stop is None or isinstance(stop, int)):
            return None
        end = 0
        if stop is not None and stop < 0:
            end = -stop
        elif stop is not None:
            shape = shape_of(src)
            if shape is None:
                return None
            end = shape[dim] - stop
            if end < 0:
                return None
        lo[dim - 2] += start
        hi[dim - 2] += end
    return lo, hi


def _aten_slice_crop(node: fx.Node, ndim: int) -> tuple[list[int], list[int]] | None:
    """Per-side crop of ``aten.slice(x, dim, start, end)`` on a spatial dim; None otherwise."""
    names = ("input", "dim", "start", "end", "step")
    kw = {**dict(zip(names, node.args)), **node.kwargs}
    shape = shape_of(kw["input"])
    dim, start, end = kw.get("dim", 0), kw.get("start") or 0, kw.get("end")
    if shape is None or kw.get("step", 1) != 1 or not isinstance(dim, int):
        return None
    dim = dim % len(shape)
    if dim < 2 or len(shape) != ndim + 2 or not isinstance(start, int) or start < 0:
        return None
    size = shape[dim]
    stop = size if end is None or end >= size else (end + size if end < 0 else end)
    if not isinstance(stop, int) or stop < start:
        return None
    lo, hi = [0] * ndim, [0] * ndim
    lo[dim - 2], hi[dim - 2] = start, size - stop
    return lo, hi


def _window_of(node: fx.Node, ndim: int) -> Window:
    """Follow constant crops and zero pads back from a conv's input to the tensor they start from."""
    w = Window(node, [0] * ndim, [0] * ndim, [0] * ndim, [0] * ndim, [])
    while node.op == "call_function" and node.args and isinstance(node.args[0], fx.Node):
        if node.target is operator.getitem:
            step, crop = _slice_crop(node, ndim), True
        elif node.target is _aten.slice.Tensor:
            step, crop = _aten_slice_crop(node, ndim), True
        elif node.target in _PAD_FUNCTIONS:
            step, crop = _zero_pad(node, ndim), False
        else:
            break
        if step is None:
            break
        lo, hi = (w.crop_lo, w.crop_hi) if crop else (w.pad_lo, w.pad_hi)
        for d in range(ndim):
            lo[d] += step[0][d]
            hi[d] += step[1][d]
        w.nodes.append(node)
        node = node.args[0]
    w.source = node
    return w


def _conv_padding(conv: nn.Module) -> tuple[list[int], list[int]] | None:
    n = len(conv.kernel_size)
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return [0] * n, [0] * n
        total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        return [t // 2 for t in total], [t - t // 2 for t in total]
    return list(conv.padding), list(conv.padding)


def _channels(node: fx.Node) -> tuple[int, int] | None:
    shape = shape_of(node)
    if shape is None or len(shape) < 2:
        return None
    return shape[1], len(shape) - 2


def _pool_branch(gm: fx.GraphModule, leaf: fx.Node, mod: nn.Module, exclusive: bool) -> Branch | None:
    info = _channels(leaf.args[0])
    if info is None:
        return None
    c, ndim = info
    k = _tuple(mod.kernel_size, ndim)
    s = _tuple(mod.stride if mod.stride is not None else mod.kernel_size, ndim)
    p = _tuple(mod.padding, ndim)
    b = Branch(
        leaf, leaf.args[0], "pool", ndim, c, c, k, s, (1,) * ndim, p, p, None, mod, str(leaf.target), [leaf]
    )
    unequal = _border_divisors(mod, p)
    if unequal:
        b.problem = f"average pool ({', '.join(unequal)}) is not a convolution at the borders"
    elif not exclusive:
        b.problem = "its output is also used outside the sum"
    _absorb_pointwise(gm, b, leaf.args[0])
    return b


def _border_divisors(mod: nn.Module, padding: tuple[int, ...]) -> list[str]:
    """The pool's settings that change its divisor at the borders (none: it is a fixed kernel)."""
    found = []
    if mod.ceil_mode:
        found.append("ceil_mode=True")
    if getattr(mod, "divisor_override", None):
        found.append(f"divisor_override={mod.divisor_override}")
    if any(padding) and not mod.count_include_pad:
        found.append(f"padding {padding} with count_include_pad=False")
    return found


def _absorb_pointwise(gm: fx.GraphModule, b: Branch, src: fx.Node) -> None:
    """Read ``pool(conv_1x1(x))`` as one branch over ``x``: a k×k conv with the 1×1 weights spread.

    The pool averages the 1×1 conv's outputs, its bias included, over windows of ``x`` (padded
    zeros before the 1×1 conv included: the conv maps them to its bias, as the merged conv does).
    Zeros the pool itself pads stand for zero, not for that bias: then the bias must be zero.
    """
    conv = module_of(gm, src)
    if not isinstance(conv, CONV) or len(conv.kernel_size) != b.ndim or not _per_pixel(conv):
        return
    if len(src.users) != 1 or len(src.args) != 1 or src.kwargs or not isinstance(src.args[0], fx.Node):
        return
    win = _window_of(src.args[0], b.ndim)
    lo, hi = _conv_padding(conv)
    pads = [
        *(a + c + p for a, c, p in zip(lo, win.pad_lo, b.lo)),
        *(a + c + p for a, c, p in zip(hi, win.pad_hi, b.hi)),
    ]
    pool_pads = any(b.lo) or any(b.hi)
    b.lo = tuple(a + c + p - r for a, c, p, r in zip(lo, win.pad_lo, b.lo, win.crop_lo))
    b.hi = tuple(a + c + p - r for a, c, p, r in zip(hi, win.pad_hi, b.hi, win.crop_hi))
    b.input, b.in_ch, b.out_ch, b.groups = win.source, conv.in_channels, conv.out_channels, conv.groups
    b.pointwise = conv
    b.nodes += [src, *win.nodes]
    b.parts.append(str(src.target))
    if b.problem:
        return
    if any(c > 0 and p > 0 for c, p in zip([*win.crop_lo, *win.crop_hi], pads)):
        b.problem = "it crops its input and zero-pads the same side"
    elif conv.padding_mode != "zeros" and (any(lo) or any(hi)):
        b.problem = f"padding mode {conv.padding_mode!r} (only zero padding merges exactly)"
    elif pool_pads and conv.bias is not None and bool(conv.bias.detach().abs().amax() > 0):
        b.problem = (
            f"the pool zero-pads the output of {src.target}, where a merged conv would see that "
            "1x1 conv's (non-zero) bias"
        )


def _per_pixel(conv: nn.Module) -> bool:
    """A 1×1 conv with stride 1: it maps each position on its own."""
    return all(k == 1 for k in conv.kernel_size) and all(s == 1 for s in conv.stride)


def _pool_then_bn(gm: fx.GraphModule, leaf: fx.Node, bn: nn.Module, exclusive: bool) -> Branch | None:
    """``bn(avg_pool(x))`` with the pool feeding only the BatchNorm: a pool branch scaled by the BN."""
    src = leaf.args[0]
    pool = module_of(gm, src)
    if not isinstance(pool, _POOL) or len(src.users) != 1 or len(src.args) != 1:
        return None
    if not isinstance(src.args[0], fx.Node):
        return None
    b = _pool_branch(gm, src, pool, True)
    if b is None:
        return None
    b.leaf, b.bn, b.module_name = leaf, bn, str(leaf.target)
    b.nodes = [leaf, *b.nodes]
    if b.problem is None and (not bn.track_running_stats or bn.running_mean is None):
        b.problem = "BatchNorm uses batch statistics (track_running_stats=False)"
    elif b.problem is None and not exclusive:
        b.problem = "its output is also used outside the sum"
    return b


def _conv_branch(leaf: fx.Node, mod: nn.Module, users_outside: list[fx.Node]) -> Branch:
    """``conv(x)`` (through constant crops and zero pads of ``x``) as a branch over ``x``."""
    n = len(mod.kernel_size)
    win = _window_of(leaf.args[0], n)
    lo, hi = _conv_padding(mod)
    pad_lo = [a + b for a, b in zip(lo, win.pad_lo)]
    pad_hi = [a + b for a, b in zip(hi, win.pad_hi)]
    b = Branch(
        leaf,
        win.source,
        "conv",
        n,
        mod.in_channels,
        mod.out_channels,
        tuple(mod.kernel_size),
        tuple(mod.stride),
        tuple(mod.dilation),
        tuple(a - c for a, c in zip(pad_lo, win.crop_lo)),
        tuple(a - c for a, c in zip(pad_hi, win.crop_hi)),
        mod.groups,
        mod,
        str(leaf.target),
        [leaf, *win.nodes],
    )
    if any(c > 0 and p > 0 for c, p in zip([*win.crop_lo, *win.crop_hi], [*pad_lo, *pad_hi])):
        # zeros padded where a crop removed input values: not a shorter padding of the input
        b.problem = "it crops its input and zero-pads the same side"
    if mod.padding_mode != "zeros" and (any(lo) or any(hi)):
        b.problem = f"padding mode {mod.padding_mode!r} (only zero padding merges exactly)"
    if users_outside:
        b.problem = f"its output is also used outside the sum ({', '.join(u.name for u in users_outside)})"
    return b


def _plain_call(node: fx.Node) -> bool:
    """A module called on one graph value and nothing else."""
    return len(node.args) == 1 and not node.kwargs and isinstance(node.args[0], fx.Node)


def _conv_then_bn(gm: fx.GraphModule, leaf: fx.Node, bn: nn.Module, outside: list[fx.Node]) -> Branch | None:
    """``bn(conv(x))`` with the conv feeding only the BatchNorm: a conv branch with the BatchNorm
    folded into the merge (in float64, rounded once with the sum); None when that is not the pattern.

    A BatchNorm with batch statistics, or one over other features than the conv's outputs, is
    not read this way: the term stays a BatchNorm over the conv's output, which merges with nothing.
    """
    src = leaf.args[0]
    conv = module_of(gm, src)
    if not isinstance(conv, CONV) or len(src.users) != 1 or not _plain_call(src):
        return None
    if not bn.track_running_stats or bn.running_mean is None or bn.running_var is None:
        return None
    if bn.num_features != conv.out_channels:
        return None
    b = _conv_branch(src, conv, outside)
    b.leaf, b.bn = leaf, bn
    b.nodes = [leaf, *b.nodes]
    b.parts.append(str(leaf.target))
    return b


def _interpret(gm: fx.GraphModule, leaf: fx.Node, tree: set[fx.Node]) -> Branch | None:
    """Read a summed term as a linear map of one input (None when it is not even a tensor term)."""
    mod = module_of(gm, leaf)
    outside = [u for u in leaf.users if u not in tree]
    exclusive = not outside
    if isinstance(mod, CONV) and _plain_call(leaf):
        return _conv_branch(leaf, mod, outside)
    if isinstance(mod, BN) and _plain_call(leaf):
        conv_bn = _conv_then_bn(gm, leaf, mod, outside)
        if conv_bn is not None:
            return conv_bn
        pooled = _pool_then_bn(gm, leaf, mod, exclusive)
        if pooled is not None:
            return pooled
        info = _channels(leaf.args[0])
        dims = {nn.BatchNorm2d: 2, nn.BatchNorm3d: 3}.get(type(mod))
        ndim = info[1] if info else dims
        if ndim is None or ndim < 1:
            return None
        c = mod.num_features
        one = (1,) * ndim
        b = Branch(
            leaf,
            leaf.args[0],
            "bn",
            ndim,
            c,
            c,
            one,
            one,
            one,
            (0,) * ndim,
            (0,) * ndim,
            None,
            mod,
            str(leaf.target),
            [leaf],
        )
        if not mod.track_running_stats or mod.running_mean is None:
            b.problem = "BatchNorm uses batch statistics (track_running_stats=False)"
        elif not exclusive:
            b.problem = "its output is also used outside the sum"
        return b
    if isinstance(mod, _POOL) and len(leaf.args) == 1 and isinstance(leaf.args[0], fx.Node):
        return _pool_branch(gm, leaf, mod, exclusive)
    info = _channels(leaf)
    if info is None:
        return None
    c, ndim = info
    one = (1,) * ndim
    return Branch(leaf, leaf, "identity", ndim, c, c, one, one, one, (0,) * ndim, (0,) * ndim)


def _as_identity(b: Branch) -> Branch | None:
    info = _channels(b.leaf)
    if info is None:
        return None
    c, ndim = info
    one = (1,) * ndim
    return Branch(b.leaf, b.leaf, "identity", ndim, c, c, one, one, one, (0,) * ndim, (0,) * ndim)


def _sum_of_exactly(adds: set[fx.Node], leaves: set, root: fx.Node) -> fx.Node:
    """The add node whose value is the sum of exactly ``leaves`` (``root`` if there is none).

    When only some terms of an add tree merge (an ACB's branches summed with a residual), the fused
    conv computes that inner sum: it takes over that node's metadata, so the block whose output the
    inner sum was (the ACB) keeps a boundary in the deploy graph.
    """
    for node in adds:
        terms = _terms_within(node, adds)
        if len(terms) == len(leaves) and set(terms) == leaves:
            return node
    return root


def _terms_within(node: fx.Node, adds: set[fx.Node]) -> list:
    """Terms of the part of an add tree below ``node``."""
    terms: list = []
    stack = [node]
    while stack:
        n = stack.pop()
        for arg in n.args:
            if isinstance(arg, fx.Node) and arg in adds:
                stack.append(arg)
            else:
                terms.append(arg)
    return terms


def _flatten(root: fx.Node) -> tuple[list, set[fx.Node]]:
    """Terms of an add tree (nodes or numbers) and the add nodes that form it."""
    terms: list = []
    adds = {root}
    stack = [root]
    while stack:
        node = stack.pop()
        for arg in reversed(node.args):
            if isinstance(arg, fx.Node) and is_add(arg) and len(arg.users) == 1:
                adds.add(arg)
                stack.append(arg)
            else:
                terms.append(arg)
    return terms, adds


def _is_root(node: fx.Node) -> bool:
    if not is_add(node):
        return False
    return not (len(node.users) == 1 and is_add(next(iter(node.users))))


@dataclass
class Plan:
    """A merged conv: geometry and the members it replaces."""

    members: list[Branch]
    kernel: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    offsets: list[tuple[int, ...]]


def _plan(members: list[Branch]) -> Plan | str:
    """Geometry of one conv equal to the sum of ``members`` (same input, stride and output size)."""
    first = members[0]
    nd = first.ndim
    reach = first.reach()
    dil, pad, size = [], [], []
    for d in range(nd):
        wide = [b.dilation[d] for b in members if b.kernel[d] > 1]
        dd = reduce(math.gcd, wide) if wide else 1
        p0 = max(max(b.lo[d], b.hi[d]) for b in members)
        if p0 < 0:
            return "every branch crops its input, the merged conv would need a crop"
        for p in range(p0, p0 + dd):
            if (2 * p - reach[d]) % dd == 0 and all((p - b.lo[d]) % dd == 0 for b in members):
                break
        else:
            return f"no exact alignment of the branch windows in spatial dim {d} (dilation {dd})"
        dil.append(dd)
        pad.append(p)
        size.append((2 * p - reach[d]) // dd + 1)
    offsets = []
    for b in members:
        off = tuple((pad[d] - b.lo[d]) // dil[d] for d in range(nd))
        span = tuple(
            (b.kernel[d] - 1) * (b.dilation[d] // dil[d] if b.kernel[d] > 1 else 1) + 1 for d in range(nd)
        )
        if any(o < 0 or o + s > k for o, s, k in zip(off, span, size)):
            return "no exact alignment of the branch windows"
        offsets.append(off)
    conv_groups = [b.groups for b in members if b.groups is not None]
    groups = reduce(math.gcd, conv_groups) if conv_groups else first.out_ch
    if first.in_ch != first.out_ch and any(b.groups is None for b in members):
        return "identity-like branch where input and output channels differ"
    after = first.out_ch * (first.in_ch // groups) * math.prod(size)
    before = sum(b.macs() for b in members)
    if after > before:
        return (
            f"merged conv (groups={groups}, kernel={tuple(size)}) would cost {after} instead of {before} "
            "multiply-adds per output position"
        )
    return Plan(members, tuple(size), tuple(pad), tuple(dil), groups, offsets)


@torch.no_grad()
def _kernel_bias(b: Plan, m: Branch) -> tuple[torch.Tensor, torch.Tensor]:
    """The member's kernel in the plan's groups and dilation (unpadded), and its bias, in float64."""
    device = next((x.conv.weight.device for x in b.members if x.weighted), None)
    nd = m.ndim
    if m.weighted:
        # a copy of its own even in float64: the BatchNorm below scales it in place
        k = m.conv.weight.detach().to(torch.float64, copy=True)
        if m.pointwise is not None:
            k = spread_pointwise(k, m.kernel)
        k = regroup_kernel(k, m.groups, b.groups)
        factor = tuple(m.dilation[d] // b.dilation[d] if m.kernel[d] > 1 else 1 for d in range(nd))
        k = dilate_kernel(k, factor)
        bias = m.conv.bias.detach().double() if m.conv.bias is not None else k.new_zeros(m.out_ch)
    elif m.kind == "pool":
        k = avgpool_kernel(m.out_ch, b.groups, m.kernel, dtype=torch.float64, device=device)
        bias = k.new_zeros(m.out_ch)
    else:
        k = identity_kernel(m.out_ch, b.groups, (1,) * nd, dtype=torch.float64, device=device)
        bias = k.new_zeros(m.out_ch)
    bn = m.module if m.kind == "bn" else m.bn
    if bn is not None:
        # ``k`` is this function's own tensor (every step above returns a new one or the copy):
        # scaled in place, as fold_bn scales it, without a second float64 kernel
        scale, shift = bn_scale_shift(*_bn64(bn), bn.eps)
        k.mul_(scale.reshape((-1,) + (1,) * (k.dim() - 1)))
        bias = bias * scale + shift
    return k, bias


def _merged_kernel_bias(plan: Plan) -> tuple[torch.Tensor, torch.Tensor]:
    """The merged kernel and bias in float64, each member's kernel padded in at its offset."""
    kernel = bias = None
    for m, off in zip(plan.members, plan.offsets):
        k, b = _kernel_bias(plan, m)
        if kernel is None:
            kernel = k.new_zeros(*k.shape[:2], *plan.kernel)
        add_kernel_at(kernel, k, off)
        bias = b if bias is None else bias + b
    return kernel, bias


# float64 elements of the merged kernel computed per block: 512 KiB, which with a member's rows
# and their product stays in a core's L2 cache, in few enough blocks that the per-operation cost
# of torch stays small next to the arithmetic
MERGE_BLOCK_ELEMENTS = 1 << 16


@dataclass
class _Rows:
    """One member's part of the merged kernel, read a block of output rows at a time.

    ``source[rows]`` (made float64 and reshaped by ``shape`` when given), times ``scale[rows]``
    (its BatchNorm's, when it has one), is added at ``index`` of the merged kernel; ``bias`` is
    the member's bias with the BatchNorm folded in: the pieces :func:`_kernel_bias` combines.
    """

    source: torch.Tensor
    shape: Callable[[torch.Tensor], torch.Tensor] | None
    scale: torch.Tensor | None
    bias: torch.Tensor
    index: tuple[slice, ...]


def _member_rows(b: Plan, m: Branch, offset: tuple[int, ...]) -> _Rows:
    """The member's :class:`_Rows` at ``offset`` of the plan's kernel."""
    device = next((x.conv.weight.device for x in b.members if x.weighted), None)
    shape = None
    if m.weighted:
        source = m.conv.weight.detach()
        factor = tuple(m.dilation[d] // b.dilation[d] if m.kernel[d] > 1 else 1 for d in range(m.ndim))
        if m.pointwise is not None or any(f != 1 for f in factor):

            def shape(k: torch.Tensor) -> torch.Tensor:
                if m.pointwise is not None:
                    k = spread_pointwise(k, m.kernel)
                return dilate_kernel(k, factor)

        bias = m.conv.bias.detach().double() if m.conv.bias is not None else None
    else:
        size = m.kernel if m.kind == "pool" else (1,) * m.ndim
        make = avgpool_kernel if m.kind == "pool" else identity_kernel
        source = make(m.out_ch, b.groups, size, dtype=torch.float64, device=device)
        bias = None
    bias = bias if bias is not None else torch.zeros(m.out_ch, dtype=torch.float64, device=device)
    spatial = shape(source[:1].double()).shape[2:] if shape is not None else source.shape[2:]
    index = (slice(None), slice(None), *(slice(o, o + s) for o, s in zip(offset, spatial)))
    bn = m.module if m.kind == "bn" else m.bn
    if bn is None:
        return _Rows(source, shape, None, bias, index)
    scale, shift = bn_scale_shift(*_bn64(bn), bn.eps)
    rows_view = scale.reshape((-1,) + (1,) * (source.dim() - 1))
    return _Rows(source, shape, rows_view, bias * scale + shift, index)


@torch.no_grad()
def _merged_by_rows(plan: Plan, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """:func:`_merged_kernel_bias`'s kernel rounded to ``like``'s dtype, and its float64 bias,
    computed a block of output rows at a time (see :mod:`reparam.engine.rowwise`): the same
    float64 sums, bitwise, without a float64 copy of the whole kernel. None when a member must be
    regrouped (a regrouped kernel's rows are not those of the member's)."""
    members = plan.members
    if any(m.weighted and m.groups != plan.groups for m in members):
        return None
    parts = [_member_rows(plan, m, off) for m, off in zip(members, plan.offsets)]
    out_ch, in_per_group = members[0].out_ch, members[0].in_ch // plan.groups
    out = torch.empty(out_ch, in_per_group, *plan.kernel, dtype=like.dtype, device=like.device)
    step = max(1, MERGE_BLOCK_ELEMENTS // max(1, math.prod(out.shape[1:])))
    work = torch.empty(min(step, out_ch), *out.shape[1:], dtype=torch.float64, device=out.device)
    for start in range(0, out_ch, step):
        block = slice(start, start + step)
        total = work[: min(step, out_ch - start)]
        total.zero_()
        for part in parts:
            rows = part.source[block]
            if part.shape is not None:
                rows = part.shape(rows.to(torch.float64))
            # float32 rows times a float64 scale (or added to float64) are computed in float64:
            # the products and sums of the whole-tensor path, in its order
            total[part.index].add_(rows if part.scale is None else rows * part.scale[block])
        out[block].copy_(total)
    bias = parts[0].bias
    for part in parts[1:]:
        bias = bias + part.bias
    return out, bias


def _bn64(bn: nn.Module) -> tuple:
    def d(t):
        return None if t is None else t.detach().double()

    return d(bn.running_mean), d(bn.running_var), d(bn.weight), d(bn.bias)


def _nonlinear_path(leaf: fx.Node, targets: set[fx.Node], depth: int = 2) -> list[fx.Node] | None:
    """Nodes between ``leaf`` and one of ``targets`` (at most ``depth`` steps back), or None."""
    queue = deque([(leaf, [leaf])])
    while queue:
        node, path = queue.popleft()
        if len(path) > depth:
            continue
        for src in node.all_input_nodes:
            if src in targets:
                return path
            queue.append((src, [*path, src]))
    return None


def _describe(gm: fx.GraphModule, node: fx.Node) -> str:
    mod = module_of(gm, node)
    if mod is not None:
        return f"{node.target} ({type(mod).__name__})"
    target = getattr(node.target, "__name__", str(node.target))
    return f"{node.name} ({target})"


@register_pass
class MergeBranches:
    """Sum of linear branches over one input → one conv (ACB, RepVGG, identity, avg-pool branches)."""

    name = "merge_branches"
    description = "merge parallel conv / BN / identity / avg-pool branches whose outputs are summed"

    @torch.no_grad()
    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        propagate_shapes(gm, ctx.example_inputs)
        fused = []
        gone: set[fx.Node] = set()
        names = ModuleNames(gm)
        for root in [n for n in gm.graph.nodes if _is_root(n)]:
            terms, adds = _flatten(root)
            if root in gone or any(isinstance(t, fx.Node) and t in gone for t in terms):
                continue
            where = block_path(root)
            ctx.current_block = ctx.full(where)
            entry = self._merge_tree(gm, ctx, root, terms, adds, where, names)
            if entry is not None:
                fused.append(entry[0])
                gone |= entry[1]
        return PassResult(gm, bool(fused), fused)

    def _merge_tree(self, gm, ctx, root, terms, adds, where, names):
        branches: list[Branch] = []
        for t in terms:
            if isinstance(t, fx.Node):
                b = _interpret(gm, t, adds)
                if b is not None:
                    branches.append(b)
        inputs = {b.input for b in branches}
        branches = [
            (_as_identity(b) or b) if b.kind != "identity" and b.leaf in inputs else b for b in branches
        ]
        by_input: dict[fx.Node, list[Branch]] = {}
        for b in branches:
            by_input.setdefault(b.input, []).append(b)
        chosen: Plan | None = None
        conv_inputs = {x for x, bs in by_input.items() if any(b.weighted for b in bs)}
        for group in by_input.values():
            if len(group) < 2 or not any(b.weighted for b in group):
                continue
            ok = []
            for b in group:
                if b.problem:
                    ctx.leave(where, f"branch {b.label} not merged: {b.problem}")
                else:
                    ok.append(b)
            classes: dict[tuple, list[Branch]] = {}
            for b in ok:
                key = (b.ndim, b.stride, b.reach(), b.in_ch, b.out_ch, shape_of(b.leaf))
                classes.setdefault(key, []).append(b)
            ranked = sorted(
                classes.values(), key=lambda bs: (any(b.weighted for b in bs), len(bs)), reverse=True
            )
            if not ranked:
                continue
            best = ranked[0]
            for other in ranked[1:]:
                for b in other:
                    ctx.leave(
                        where,
                        f"branch {b.label} not merged with {best[0].label}: strides, channels or "
                        f"output shapes differ (stride {b.stride} vs {best[0].stride}, output size offset "
                        f"{b.reach()} vs {best[0].reach()})",
                    )
            if len(best) < 2 or not any(b.weighted for b in best):
                continue
            plan = _plan(best)
            if isinstance(plan, str):
                ctx.leave(where, f"branches {', '.join(b.label for b in best)} not merged: {plan}")
                continue
            if chosen is None or len(plan.members) > len(chosen.members):
                chosen = plan
        merged_leaves = {id(m) for m in chosen.members} if chosen else set()
        for b in branches:
            if id(b) in merged_leaves:
                continue
            if b.kind == "identity" and b.input is b.leaf:
                path = _nonlinear_path(b.leaf, conv_inputs)
                if path:
                    ops = " <- ".join(_describe(gm, n) for n in path)
                    ctx.leave(
                        where, f"branch through {ops} holds a nonlinearity or an unsupported op; left unfused"
                    )
            elif b.kind == "pool" and b.input not in conv_inputs:
                # a pool over something other than a conv input or a 1x1 conv of it (a ReLU between)
                path = _nonlinear_path(b.input, conv_inputs, depth=4)
                if path:
                    ops = " <- ".join(_describe(gm, n) for n in path)
                    ctx.leave(
                        where,
                        f"branch {b.label} not merged: its average pool reads {ops}, which holds a "
                        "nonlinearity or an unsupported op",
                    )
        if chosen is None:
            return None
        try:
            return self._rewrite(gm, ctx, root, terms, adds, chosen, names)
        except NotRepresentable as exc:
            ctx.leave(where, f"branches {', '.join(b.label for b in chosen.members)} not merged: {exc}")
            return None

    def _rewrite(self, gm, ctx, root, terms, adds, plan: Plan, taken: ModuleNames):
        members = plan.members
        like = next(m.conv.weight for m in members if m.weighted)
        merged = _merged_by_rows(plan, like)
        if merged is None:
            kernel, bias = _merged_kernel_bias(plan)
            weight = ctx.parameter(kernel, like, "weight")
        else:
            cast, bias = merged
            weight = ctx.parameter(lambda: _merged_kernel_bias(plan)[0], like, "weight", cast)
        first = members[0]
        new = blank_conv(
            CONV_BY_DIM[first.ndim],
            first.in_ch,
            first.out_ch,
            plan.kernel,
            stride=first.stride,
            padding=plan.padding,
            dilation=plan.dilation,
            groups=plan.groups,
        )
        new.weight = weight
        new.bias = ctx.parameter(bias, like, "bias")
        # a term may appear several times (``y + y``): each merged member consumes one occurrence
        used = Counter(id(m.leaf) for m in members)
        rest = []
        for t in terms:
            if isinstance(t, fx.Node) and used[id(t)] > 0:
                used[id(t)] -= 1
                continue
            if isinstance(t, int | float) and not isinstance(t, bool) and t == 0:
                continue
            rest.append(t)
        leaving = set(adds)
        for m in members:
            leaving.update(m.nodes)
        names = [n for m in members for n in [m.module_name, *m.parts] if n]
        dominant = max((m for m in members if m.weighted), key=lambda m: math.prod(m.kernel))
        candidates = [ctx.parent_of_sources(names), dominant.module_name]
        if dominant.kind == "conv" and dominant.bn is not None:
            # the name fold_bn gives a conv and its BatchNorm (``rbr_dense`` for ``rbr_dense.0/.1``)
            candidates.insert(1, ctx.parent_of_sources([dominant.module_name, *dominant.parts]))
        name = choose_name(gm, candidates, leaving, taken)
        if not gm.add_submodule(name, new):
            raise RuntimeError(f"cannot add a module at {name!r}")
        with gm.graph.inserting_before(root):
            out = gm.graph.call_module(name, (first.input,))
            out.meta = dict(_sum_of_exactly(adds, {m.leaf for m in members}, root).meta)
            for t in rest:
                out = gm.graph.call_function(operator.add, (out, t))
                out.meta = dict(root.meta)
        erased = replace_with(gm, root, out, leaving)
        taken.add(name)
        for node in erased:
            if node.op in ("call_module", "get_attr"):
                taken.remove(str(node.target))
        kinds = ", ".join(
            f"{ctx.full(m.module_name) if m.module_name else m.label} [{m.describe()}]" for m in members
        )
        detail = (
            f"{len(members)} branches summed into one {'x'.join(map(str, plan.kernel))} conv "
            f"(padding {plan.padding}, dilation {plan.dilation}, groups {plan.groups}): {kinds}"
        )
        return ctx.record(name, new, names, detail), erased
