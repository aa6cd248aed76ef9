"""Capture a model as an operator graph: torch.fx symbolic tracing, else torch.export.

Symbolic tracing is cheap and keeps module calls as nodes; it fails on data-dependent control
flow, in-place slice writes and ``int()`` of traced sizes. ``torch.export`` (non-strict, static
example shapes, functionalized) captures those too, as ATen operators that the ``canonicalize``
pass turns back into modules. Both graphs carry each node's module path in
``meta["nn_module_stack"]`` as ``{path: (path, type)}``.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import fx, nn

from reparam.engine.graph import alias_unsafe_names
from reparam.engine.graphmodule import eliminate_dead_code, graph_module
from reparam.engine.inplace import UnsafeMutation, functionalize_inplace
from reparam.engine.tracer import Tracer

# how many times tracing called each module (by path): what hooks on a real run would count
MODULE_CALLS = "reparam_module_calls"


def symbolic_trace(module: nn.Module) -> fx.GraphModule:
    """``torch.fx.symbolic_trace`` with the engine's :class:`Tracer`; the module calls it counted are in ``gm.meta``."""
    tracer = Tracer()
    graph = tracer.trace(module)
    root = tracer.root
    constants = getattr(tracer, "constants", {})
    if constants:
        # the graph module copies every attribute a node reads from its root: a root that holds
        # the constants too, without writing them into the traced module
        root = copy.copy(root)
        root._buffers = {**root._buffers, **constants}
    # the code is generated once the passes are done with the graph (run_passes)
    gm = graph_module(root, graph, type(module).__name__)
    gm.meta[MODULE_CALLS] = dict(tracer.num_calls)
    return gm


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def trace(module: nn.Module) -> tuple[fx.GraphModule | None, str]:
    """Symbolic trace with in-place ops made explicit; ``(None, why)`` when that is not possible."""
    try:
        gm = symbolic_trace(module)
        alias_unsafe_names(gm)
        functionalize_inplace(gm)
        return gm, ""
    except UnsafeMutation as exc:
        return None, f"in-place operation: {exc}"
    except Exception as exc:  # any failure to trace means "capture another way"
        return None, _first_line(exc)


def _plain_calling_convention(gm: fx.GraphModule, out_spec: Any) -> None:
    """Drop export's pytree wrapping: placeholders are the flat inputs, the output keeps its structure."""
    output = next(n for n in gm.graph.nodes if n.op == "output")
    leaves = output.args[0]
    gm.graph._codegen = fx.graph.CodeGen()
    output.args = (pytree.tree_unflatten(list(leaves), out_spec),)
    gm.recompile()


def export_capture(module: nn.Module, inputs: tuple) -> tuple[fx.GraphModule | None, str]:
    """``torch.export`` (non-strict, functionalized) as a GraphModule; ``(None, why)`` on failure."""
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch-internal pytree deprecations
            program = torch.export.export(module, tuple(inputs), strict=False)
            program = program.run_decompositions({})
            unlifted = program.module()
            # a plain GraphModule (the unlifted export module refuses eval()/train()) called like the
            # original: flat tensor arguments in, the original output structure out
            gm = fx.GraphModule(unlifted, unlifted.graph, type(module).__name__)
            _plain_calling_convention(gm, unlifted._out_spec)
    except Exception as exc:  # export cannot capture this model: the caller converts parts instead
        return None, _first_line(exc)
    for node in list(gm.graph.nodes):
        stack = node.meta.get("nn_module_stack")
        if stack:
            node.meta["nn_module_stack"] = {v[0]: v for v in stack.values() if v[0]}  # as fx writes it
        if node.op == "call_module" and str(node.target) == "_guards_fn":
            gm.graph.erase_node(node)  # shape guards of the example; the deploy model keeps none
    eliminate_dead_code(gm.graph)
    alias_unsafe_names(gm)
    gm.recompile()
    return gm, ""
