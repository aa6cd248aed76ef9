"""Capture a model as an operator graph: torch.fx symbolic tracing, else torch.export.

Symbolic tracing is cheap and keeps module calls as nodes; it fails on data-dependent control
flow, in-place slice writes and ``int()`` of traced sizes. ``torch.export`` (non-strict, static
example shapes, functionalized) captures those too, as ATen operators that the ``canonicalize``
pass turns back into modules. Both graphs carry each node's module path in
``meta["nn_module_stack"]`` as ``{path: (path, type)}``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from reparam.dynamic_shapes import FixedAxis, bounded_axes, export_with_free_axes
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
    # fx's trace leaves a closure that refers to itself and to the tracer: emptied, the tracer keeps
    # nothing of the model alive, so the caller's model is freed when let go, without a collection
    vars(tracer).clear()
    return gm


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


@contextlib.contextmanager
def _caches_kept(module: nn.Module) -> Iterator[None]:
    """Put back the dicts and lists a forward writes into (timm's LeViT caches its attention biases
    per device in eval mode): a capture would leave graph values in the caller's model."""
    saved: list[tuple[Any, Any]] = []
    for m in module.modules():
        for key, value in vars(m).items():
            if not key.startswith("_") and type(value) in (dict, list):
                saved.append((value, value.copy()))
    try:
        yield
    finally:
        for container, before in saved:
            if _changed(container, before):
                container.clear()
                if isinstance(container, dict):
                    container.update(before)
                else:
                    container.extend(before)


def _changed(container: dict | list, before: dict | list) -> bool:
    """Whether a container holds other objects than its copy ``before`` (compared by identity)."""
    if isinstance(container, dict):
        return container.keys() != before.keys() or any(container[k] is not before[k] for k in before)
    return len(container) != len(before) or any(a is not b for a, b in zip(container, before))


def trace(module: nn.Module) -> tuple[fx.GraphModule | None, str]:
    """Symbolic trace with in-place ops made explicit; ``(None, why)`` when that is not possible."""
    try:
        with _caches_kept(module):
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
    gm.graph.set_codegen(fx.graph.CodeGen())
    output.args = (out_spec.unflatten(list(leaves)),)
    gm.recompile()


@dataclass
class ExportCapture:
    """A model captured by torch.export: the graph, the input axes it fixes, and why (when static)."""

    gm: fx.GraphModule
    fixed: list[FixedAxis]  # held at the example's size
    bounded: list[FixedAxis]  # free, but the size guards refuse some sizes (a parity, a range)
    static_reason: str = ""


def _export(module: nn.Module, example: tuple, dynamic_shapes: Any) -> Any:
    program = torch.export.export(module, example, dynamic_shapes=dynamic_shapes, strict=False)
    return program.run_decompositions({})


def export_capture(module: nn.Module, inputs: tuple) -> tuple[ExportCapture | None, str]:
    """``torch.export`` (non-strict, functionalized) as a GraphModule; ``(None, why)`` on failure.

    Batch and spatial sizes stay symbolic wherever the model allows (sizes read in ``forward``
    become graph values); the program's guards stay in the graph, so the deploy model refuses a
    size the capture does not hold for (the branch of a shape ``if`` taken, a size fixed by the model).
    """
    try:
        with torch.no_grad(), _quiet_export_logs(), _caches_kept(module):
            program, unlifted, fixed, static_reason = export_with_free_axes(
                lambda example, shapes: _export(module, example, shapes),
                tuple(inputs),
                reference=module,
                free_only=True,
            )
            # a plain GraphModule (the unlifted export module refuses eval()/train()) called like the
            # original: flat tensor arguments in, the original output structure out
            gm = fx.GraphModule(unlifted, unlifted.graph, type(module).__name__)
            _plain_calling_convention(gm, program.call_spec.out_spec)
            bounded = bounded_axes(unlifted, tuple(inputs))
    except Exception as exc:  # export cannot capture this model: the caller converts parts instead
        return None, _first_line(exc)
    for node in gm.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if stack:
            node.meta["nn_module_stack"] = {v[0]: v for v in stack.values() if v[0]}  # as fx writes it
    eliminate_dead_code(gm.graph)
    alias_unsafe_names(gm)
    gm.recompile()
    return ExportCapture(gm, fixed, bounded, static_reason), ""


@contextlib.contextmanager
def _quiet_export_logs() -> Iterator[None]:
    """torch.export logs every failed capture at length, and prints its partial graph to stderr;
    the caller reports one line instead."""
    loggers = [
        logging.getLogger(n)
        for n in ("torch.export", "torch._export", "torch.fx.experimental.symbolic_shapes", "torch._dynamo")
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
