"""A GraphModule's life in the engine: built from a traced graph, code generated once, cleaned up.

Generating and compiling a large graph's Python code, and torch's whole-graph checks, cost more
than the rewrites themselves: the engine builds graph modules with deferred code, cleans them up
after each pass without linting, and generates the code once at the end.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import fx, nn

from reparam.torch_compat import copy_tracer_info


def referring_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    """The nodes that name a module path: ``call_module`` and ``get_attr`` (fx indexes nodes by op)."""
    find = gm.graph.find_nodes
    return [*find(op="call_module", sort=False), *find(op="get_attr", sort=False)]


def _referring_nodes_in(graph: fx.Graph) -> list[fx.Node]:
    """``call_module`` and ``get_attr`` nodes in graph order (the order the graph module copies them)."""
    return [n for n in graph.nodes if n.op in ("call_module", "get_attr")]


FOLDED_PREFIX = "folded_"


def _stale_forward(self: fx.GraphModule, *args: Any, **kwargs: Any) -> Any:
    self.recompile()  # installs the generated forward on the instance's own class
    return self.forward(*args, **kwargs)


def _compiled_first(name: str) -> Any:
    """``GraphModule.<name>`` run after regenerating the code, if it is out of date."""
    original = getattr(fx.GraphModule, name)

    def method(self: fx.GraphModule, *args: Any, **kwargs: Any) -> Any:
        compile_if_stale(self)
        return original(self, *args, **kwargs)

    return method


def _code_of(self: fx.GraphModule) -> str:
    compile_if_stale(self)
    return fx.GraphModule.code.fget(self)


# what reads the generated code rather than the graph: the code itself, printing it, and pickling
# or packaging the module (both save the code, not the graph)
_READS_CODE: dict[str, Any] = {
    "code": property(_code_of),
    **{name: _compiled_first(name) for name in ("__str__", "__reduce__", "__reduce_package__")},
}


def defer_recompile(gm: fx.GraphModule) -> None:
    """Mark ``gm``'s generated Python code out of date; it is regenerated when next needed.

    Generating and compiling the code of a large graph costs tens of milliseconds, and the passes
    never call the graph's code (shape propagation interprets the graph): a conversion regenerates
    it once at the end (:func:`compile_if_stale`) instead of after every rewrite. A call of the
    module, a read of ``gm.code``, printing or pickling it regenerates it first, so a stale module
    still computes (and saves) what its graph says. Every GraphModule has a class of its own,
    which is where the marker lives.
    """
    cls = type(gm)
    cls.forward = _stale_forward
    for name, attr in _READS_CODE.items():
        if name not in vars(cls):
            setattr(cls, name, attr)


def is_stale(gm: fx.GraphModule) -> bool:
    return vars(type(gm)).get("forward") is _stale_forward


def compile_if_stale(gm: fx.GraphModule) -> None:
    """Regenerate ``gm``'s code if :func:`defer_recompile` marked it out of date."""
    if is_stale(gm):
        gm.recompile()


def _copy_attributes(root: nn.Module, gm: fx.GraphModule, targets: Iterable[str]) -> None:
    """Give ``gm`` each attribute of ``root`` at ``targets``, as ``fx.GraphModule(root, ...)`` does.

    Modules on the way are new, empty ``nn.Module``s; what a target names is the root's own object;
    a target inside a module already given whole is skipped. torch's version looks each level of
    each path up again on both sides through ``Module.__getattr__``; both sides are remembered here.
    """
    made: dict[str, nn.Module] = {}
    found: dict[str, Any] = {}
    for target in targets:
        *prefix, field = target.split(".")
        path, source, owner = "", root, gm
        for item in prefix:
            path = f"{path}.{item}" if path else item
            if path not in found:
                found[path] = getattr(source, item)
            if path not in made:
                made[path] = owner._modules[item] = nn.Module()
            if found[path] is made[path]:
                break  # a module given whole already holds this attribute
            source, owner = found[path], made[path]
        else:
            value = getattr(source, field)
            if isinstance(value, nn.Parameter):
                owner._parameters[field] = value
            elif isinstance(value, torch.Tensor):
                owner._buffers[field] = value
            elif isinstance(value, nn.Module):
                owner._modules[field] = made[target] = value
            else:
                setattr(owner, field, value)


def graph_module(root: nn.Module, graph: fx.Graph, class_name: str) -> fx.GraphModule:
    """``fx.GraphModule(root, graph, class_name)`` with its code generated only when first needed."""
    gm = fx.GraphModule.__new__(fx.GraphModule)
    cls = type(gm)  # the instance's own class (GraphModuleImpl)
    cls.recompile = lambda self: None  # the constructor's recompile: deferred below
    try:
        fx.GraphModule.__init__(gm, {}, fx.Graph(), class_name)
        gm.training = root.training
        _copy_attributes(root, gm, (str(n.target) for n in _referring_nodes_in(graph)))
        gm.graph = graph
        # what the constructor keeps of the graph's tracer (for pickling), as it would from ``graph``
        copy_tracer_info(graph, gm)
    finally:
        del cls.recompile
    defer_recompile(gm)
    return gm


def delete_unused_submodules(gm: fx.GraphModule) -> None:
    """``GraphModule.delete_all_unused_submodules``, walking only the used part of the module tree.

    Used: every module a node names and the modules on its path, and everything inside a module a
    node calls. A module that is neither goes with everything inside it. torch's version tests
    membership in a list and walks every module, used or not.
    """
    used: set[str] = set()
    called: set[str] = set()
    for node in referring_nodes(gm):
        if not isinstance(node.target, str):
            continue
        parts = node.target.split(".")
        used.update(".".join(parts[: i + 1]) for i in range(len(parts)))
        if node.op == "call_module":
            called.add(node.target)

    def prune(module: nn.Module, prefix: str) -> None:
        for name, child in list(module._modules.items()):
            path = prefix + name
            if path in called or child is None:
                continue
            if path not in used:
                delattr(module, name)
            else:
                prune(child, path + ".")

    prune(gm, "")


def eliminate_dead_code(graph: fx.Graph) -> bool:
    """``Graph.eliminate_dead_code`` without its lint, asking a node's purity only when nothing uses it.

    The same rule as torch's (a node without users that ``Node.is_impure`` calls pure goes, in
    reverse order so that its inputs may go too); torch's version lints the whole graph and asks
    every node's purity first, which costs more than the elimination itself on large graphs.
    """
    changed = False
    for node in reversed(graph.nodes):
        if not node.users and not node.is_impure():
            graph.erase_node(node)
            changed = True
    return changed


def cleanup(gm: fx.GraphModule) -> None:
    """Dead-code eliminate, drop unused submodules and folded constants; the code is regenerated lazily."""
    eliminate_dead_code(gm.graph)
    delete_unused_submodules(gm)
    read = {str(n.target) for n in gm.graph.find_nodes(op="get_attr", sort=False)}
    for name in [b for b in gm._buffers if b.startswith(FOLDED_PREFIX) and b not in read]:
        del gm._buffers[name]
    defer_recompile(gm)
