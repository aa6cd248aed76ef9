"""A zero pad whose border is then overwritten with a per-pixel map's value at zero → pad the input.

Diverse-Branch-Block style code keeps its 1×1 → BN → k×k branch exact at the borders by padding
the BN's output and writing, into the padded rows and columns, the value the BN takes on a zero
input. That is the same as padding the branch *input* with zeros before the per-pixel map: after
the rewrite the 1×1 conv reads a zero-padded input and merges with the k×k conv like any other
sequential pair. The rewrite is proven on the spot: the fill region is evaluated on a random input
and must equal ``pad(y - v) + v`` bit for bit.
"""

from __future__ import annotations

import operator

import torch
from torch import fx

from reparam.engine.base import PassContext, PassResult, register_pass
from reparam.engine.graph import BN, CONV, block_path, fetch, module_of, shape_of
from reparam.engine.graphmodule import cleanup
from reparam.engine.passes.branches import _PAD_FUNCTIONS, _zero_pad
from reparam.engine.shapes import propagate_shapes
from reparam.kernel_math import bn_scale_shift

_aten = torch.ops.aten
_FILL_OPS = {_aten.slice.Tensor, _aten.copy.default, _aten.slice_scatter.default, _aten.expand.default,
             _aten.view.default, _aten.select.int, _aten.select_scatter.default}  # fmt: skip


def _value_at_zero(gm: fx.GraphModule, node: fx.Node) -> torch.Tensor | None:
    """Per-channel output of a per-pixel affine layer on a zero input (1×1 conv or BatchNorm)."""
    mod = module_of(gm, node)
    if isinstance(mod, CONV):
        per_pixel = all(k == 1 for k in mod.kernel_size) and all(s == 1 for s in mod.stride)
        if not per_pixel or (not isinstance(mod.padding, str) and any(mod.padding)):
            return None
        return mod.bias.detach() if mod.bias is not None else mod.weight.new_zeros(mod.out_channels)
    if isinstance(mod, BN) and mod.running_mean is not None and mod.track_running_stats:
        _, shift = bn_scale_shift(mod.running_mean, mod.running_var, mod.weight, mod.bias, mod.eps)
        return shift.detach()
    return None


def _fill_region(pad: fx.Node) -> tuple[list[fx.Node], fx.Node] | None:
    """Nodes that overwrite the padded tensor's border, and the last of them; None if not that shape."""
    region, last = [pad], pad
    while True:
        writers = [u for u in last.users if u.target is _aten.slice_scatter.default and u.args[0] is last]
        if len(writers) != 1:
            break
        between = _feeding_only(last, writers[0])
        if between is None:
            return None
        region += [*between, writers[0]]
        last = writers[0]
    return (region, last) if last is not pad else None


def _feeding_only(last: fx.Node, writer: fx.Node) -> list[fx.Node] | None:
    """Slices and copies of ``last`` whose values end in ``writer`` alone (None if any leaks out).

    A capture with symbolic sizes writes ``out[:, :, 0:p, :] = v`` as nested slices of every axis,
    the full ones included, and nested scatters back: all of them stay inside one write.
    """
    found: dict[fx.Node, None] = {}  # ordered: the region is sorted by graph order later anyway
    queue = [u for u in last.users if u is not writer]
    while queue:
        node = queue.pop()
        if node in found:
            continue
        if node.target not in _FILL_OPS:
            return None
        found[node] = None
        queue += [u for u in node.users if u is not writer]
    return list(found)


_SIZE_OPS = {_aten.sym_size.int, operator.add, operator.sub, operator.mul, operator.floordiv}


def _evaluate(gm: fx.GraphModule, region: list[fx.Node], start: fx.Node, value: torch.Tensor) -> torch.Tensor:
    """Run the region with ``start``'s input replaced by ``value``.

    What the region reads from outside is computed on the spot: constants from ``gm``, sizes
    (a capture with symbolic sizes reads them from the graph's inputs) from the recorded shapes, and
    the fill ops on those; anything else (a tensor computed elsewhere) is not evaluated: KeyError.
    """
    env: dict[fx.Node, object] = {start.args[0]: value}
    inside = set(region)

    def load(n: fx.Node) -> object:
        if n not in env:
            env[n] = _outside(n)
        return env[n]

    def run(n: fx.Node) -> object:
        args = fx.node.map_arg(n.args, load)
        kwargs = fx.node.map_arg(n.kwargs, load)
        return n.target(*args, **kwargs)

    def _outside(n: fx.Node) -> object:
        if n in inside:
            raise KeyError(n.name)  # read before it is computed: not a plain chain of writes
        if n.op == "get_attr":
            return fetch(gm, str(n.target))
        if n.op == "call_function" and n.target is _aten.sym_size.int:
            shape = shape_of(n.args[0])
            if shape is None:
                raise KeyError(n.name)
            return shape[n.args[1]]
        if n.op == "call_function" and n.target in _SIZE_OPS | _FILL_OPS:
            return run(n)
        raise KeyError(n.name)

    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    for node in sorted(inside, key=order.get):
        env[node] = run(node)
    return env[region[-1]]


@register_pass
class BorderFill:
    """``fill_border(pad(f(x)), f(0))`` → ``f(pad(x))`` for a per-pixel affine ``f``."""

    name = "border_fill"
    description = (
        "a zero pad whose border is filled with a 1x1 conv's / BN's value at zero becomes a pad of its input"
    )

    @torch.no_grad()
    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        propagate_shapes(gm, ctx.example_inputs)
        changed = False
        for pad in [n for n in gm.graph.nodes if n.op == "call_function" and n.target in _PAD_FUNCTIONS]:
            src = pad.args[0] if pad.args else None
            shape = shape_of(src)
            if not isinstance(src, fx.Node) or shape is None or len(src.users) != 1:
                continue
            sides = _zero_pad(pad, len(shape) - 2)
            found = _fill_region(pad)
            value = _value_at_zero(gm, src)
            if sides is None or found is None or value is None or not isinstance(src.args[0], fx.Node):
                continue
            region, last = found
            ctx.current_block = ctx.full(block_path(last))
            if not self._proven(gm, region, pad, shape, value):
                ctx.leave(
                    block_path(last) or str(src.target),
                    "a padded border is filled, but not with the value the layer before takes at zero",
                )
                continue
            with gm.graph.inserting_before(src):
                padded_input = gm.graph.call_function(
                    pad.target, (src.args[0], *pad.args[1:]), dict(pad.kwargs)
                )
                new = gm.graph.call_module(str(src.target), (padded_input,))
            new.meta = dict(last.meta)
            padded_input.meta = {k: v for k, v in src.args[0].meta.items() if k == "nn_module_stack"}
            last.replace_all_uses_with(new)
            ctx.notes.append(
                f"the border of {ctx.full(block_path(last)) or 'the model'} filled with {src.target}'s value at "
                "zero is computed as a zero pad of its input"
            )
            changed = True
        if changed:
            cleanup(gm)  # the new nodes need shapes before the next pass reads them
            propagate_shapes(gm, ctx.example_inputs)
        return PassResult(gm, changed, [])

    @staticmethod
    def _proven(gm: fx.GraphModule, region: list[fx.Node], pad: fx.Node, shape, value: torch.Tensor) -> bool:
        probe = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(value.dtype)
        view = (1, -1) + (1,) * (len(shape) - 2)
        padded = pad.target(probe, *pad.args[1:], **pad.kwargs)
        inside = pad.target(torch.ones_like(probe), *pad.args[1:], **pad.kwargs).bool()
        expected = torch.where(inside, padded, value.reshape(view).expand_as(padded))
        try:
            got = _evaluate(gm, region, pad, probe)
        except Exception:  # an op the region holds that cannot run on its own: not proven
            return False
        return isinstance(got, torch.Tensor) and got.shape == expected.shape and torch.equal(got, expected)
