"""Make in-place operations of a traced graph explicit dataflow, or refuse the graph.

``torch.fx`` records ``h.mul_(2)`` or ``F.relu(h, inplace=True)`` as a node whose result may be
unused while later nodes read ``h`` itself: the mutation is invisible to dataflow, so dead-code
elimination drops it and a pass may move a reader of ``h`` across it. Each in-place node is
rewritten to its out-of-place form and every later reader of the mutated value reads the new node
instead. Where that is not exact (the mutated value is a view of another tensor, or has views that
would see the write) the graph is refused and the caller converts smaller parts.
"""

from __future__ import annotations

import operator

import torch
from torch import fx, nn

from reparam.engine.graph import fetch, shallow_copy
from reparam.engine.graphmodule import defer_recompile

_INPLACE_OPERATORS = {
    operator.iadd: operator.add,
    operator.isub: operator.sub,
    operator.imul: operator.mul,
    operator.itruediv: operator.truediv,
    operator.ifloordiv: operator.floordiv,
    operator.ipow: operator.pow,
    operator.iand: operator.and_,
    operator.ior: operator.or_,
    operator.ixor: operator.xor,
}
# Methods whose name minus the trailing underscore is not the same computation out of place.
_NO_COUNTERPART = {"copy", "set", "resize", "resize_as", "zero", "fill", "uniform", "normal", "random",
                   "exponential", "geometric", "cauchy", "log_normal", "bernoulli", "requires_grad",
                   "share_memory", "index_put", "masked_scatter", "put"}  # fmt: skip
_VIEW_METHODS = {"view", "view_as", "reshape", "reshape_as", "narrow", "select", "transpose", "permute",
                 "flatten", "unflatten", "squeeze", "unsqueeze", "expand", "expand_as", "split", "chunk",
                 "unbind", "as_strided", "t", "T", "mT", "diagonal", "movedim", "swapaxes", "unfold",
                 "detach", "contiguous", "__getitem__"}  # fmt: skip
_VIEW_FUNCTIONS = {operator.getitem, torch.flatten, torch.reshape, torch.narrow, torch.select,
                   torch.transpose, torch.permute, torch.squeeze, torch.unsqueeze, torch.split,
                   torch.chunk, torch.unbind, torch.movedim, torch.swapaxes, torch.diagonal,
                   torch.t, torch.detach}  # fmt: skip


class UnsafeMutation(Exception):
    """The graph mutates a value in a way that dataflow cannot express exactly."""


def _functional_target(node: fx.Node, gm: fx.GraphModule) -> tuple[str, object] | None:
    """``(kind, out-of-place target)`` for an in-place node; None when the node is not in-place."""
    if node.op == "call_method" and isinstance(node.target, str):
        name = node.target
        if name.endswith("_") and not name.endswith("__"):
            base = name[:-1]
            if base in _NO_COUNTERPART or not hasattr(torch.Tensor, base):
                raise UnsafeMutation(f"in-place {name}() has no out-of-place equivalent")
            return "method", base
        return None
    if node.op == "call_function":
        if node.target in _INPLACE_OPERATORS:
            return "function", _INPLACE_OPERATORS[node.target]
        if node.target is operator.setitem:
            raise UnsafeMutation("an in-place write into a slice (x[...] = v)")
        name = getattr(node.target, "__name__", "")
        if node.kwargs.get("inplace") is True:
            return "kwarg", node.target
        if name.endswith("_") and not name.endswith("__"):
            base = getattr(torch, name[:-1], None) or getattr(torch.nn.functional, name[:-1], None)
            if base is None or name[:-1] in _NO_COUNTERPART:
                raise UnsafeMutation(f"in-place {name}() has no out-of-place equivalent")
            return "function", base
        return None
    if node.op == "call_module":
        mod = fetch(gm, str(node.target))
        if getattr(mod, "inplace", False) is True:
            return "module", mod
    return None


def _is_view(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target in _VIEW_METHODS
    return node.op == "call_function" and node.target in _VIEW_FUNCTIONS


def functionalize_inplace(gm: fx.GraphModule) -> int:
    """Rewrite in-place nodes out of place and rewire later readers; returns how many were rewritten.

    Raises UnsafeMutation when a rewrite would not be exact.
    """
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    count = 0
    for node in list(gm.graph.nodes):
        found = _functional_target(node, gm)
        if found is None:
            continue
        target = node.args[0] if node.args else None
        if not isinstance(target, fx.Node):
            raise UnsafeMutation(f"{node.name} mutates something that is not a traced tensor")
        if _is_view(target) or any(_is_view(u) for u in target.users if u is not node):
            raise UnsafeMutation(f"{node.name} writes into a value that shares memory with another")
        kind, replacement = found
        if kind == "method" or kind == "function":
            node.target = replacement
        elif kind == "kwarg":
            node.kwargs = {**node.kwargs, "inplace": False}
        else:
            # The module object may be shared with other call sites: give this graph its own copy.
            name = f"{node.target}_out_of_place"
            if not isinstance(getattr(gm, name, None), type(replacement)):
                gm.add_submodule(name, _out_of_place_copy(replacement))
            node.target = name
        later = [u for u in target.users if u is not node and order[u] > order[node]]
        for user in later:
            user.replace_input_with(target, node)
        count += 1
    if count:
        defer_recompile(gm)
    return count


def _out_of_place_copy(module: nn.Module) -> nn.Module:
    new = shallow_copy(module)
    new.inplace = False
    return new
