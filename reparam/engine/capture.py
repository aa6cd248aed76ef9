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
from torch.fx.immutable_collections import immutable_dict
from torch.fx.proxy import TracerBase

from reparam.engine.graph import alias_unsafe_names, eliminate_dead_code, graph_module
from reparam.engine.inplace import UnsafeMutation, functionalize_inplace

# how many times tracing called each module (by path): what hooks on a real run would count
MODULE_CALLS = "reparam_module_calls"
_PLAIN_ARGS = frozenset({fx.Proxy, tuple, list, dict, int, float, bool, str, type(None)})


_GRAPH_INTERNALS = ("_graph_namespace", "_target_to_str", "_insert", "_find_nodes_lookup_table", "_len")


def _append_node(
    graph: fx.Graph, op: str, target: Any, args: tuple, kwargs: dict, name: str | None, type_expr: Any
) -> fx.Node:
    """``graph.create_node`` without its scan of every argument for raw symbolic sizes.

    That scan only warns, and symbolic tracing passes no symbolic sizes; it is a sixth of the
    tracing time of a large model. On a torch whose graph lacks the internals used here, the
    graph's own method runs instead.
    """
    if not all(hasattr(graph, a) for a in _GRAPH_INTERNALS):
        return graph.create_node(op, target, args, kwargs, name, type_expr)
    name = graph._graph_namespace.create_name(
        name if name is not None else graph._target_to_str(target), None
    )
    node = fx.Node(graph, name, op, target, args or (), kwargs or immutable_dict(), type_expr)
    graph._graph_namespace.associate_name_with_obj(name, node)
    graph._insert(node)
    graph._find_nodes_lookup_table.insert(node)
    graph._len += 1
    return node


class _Tracer(fx.Tracer):
    """fx's tracer with a constant-time lookup of the parameter or buffer behind an attribute.

    The stock tracer scans ``named_parameters()`` on every parameter access, which is quadratic in
    the model size for code that reads parameters in ``forward`` (``F.batch_norm(x, self.weight...)``).
    """

    def _name_of(self, t: torch.Tensor) -> str | None:
        if not hasattr(self, "_tensor_names"):
            parameters: dict[int, str] = {}
            buffers: dict[int, str] = {}
            for path, m in self.root.named_modules():  # one walk; a parameter's name wins, as in fx
                prefix = f"{path}." if path else ""
                for table, names in ((m._parameters, parameters), (m._buffers, buffers)):
                    for n, v in table.items():
                        if v is not None:
                            names.setdefault(id(v), prefix + n)
            self._tensor_names = {**buffers, **parameters}
        return self._tensor_names.get(id(t))

    def create_arg(self, a: Any) -> Any:
        if type(a) in _PLAIN_ARGS:
            # what fx's Tracer.create_arg hands on to TracerBase anyway, after a registry lookup
            # (opaque types, proxyable classes) that no value of these exact types is in
            return TracerBase.create_arg(self, a)
        if isinstance(a, torch.Tensor):
            name = self._name_of(a) or self.tensor_attrs.get(a) or self._constant_name(a)
            return self.create_node("get_attr", name, (), {})
        return super().create_arg(a)

    def _constant_name(self, t: torch.Tensor) -> str:
        """A fresh attribute name for a tensor made in ``forward``, kept aside instead of set on the model.

        fx's tracer stores such constants on the traced module itself, which would change the
        caller's model.
        """
        if not hasattr(self, "constants"):
            self.constants: dict[str, torch.Tensor] = {}
        i = len(self.constants)
        while hasattr(self.root, f"_tensor_constant{i}") or f"_tensor_constant{i}" in self.constants:
            i += 1
        name = f"_tensor_constant{i}"
        self.constants[name] = t
        self.tensor_attrs[t] = name
        return name

    def create_node(
        self,
        kind: str,
        target: Any,
        args: tuple,
        kwargs: dict,
        name: str | None = None,
        type_expr: Any | None = None,
    ) -> fx.Node:
        """The node with its module stack; what else the stock tracer records is for other tools.

        It also fills a per-node scope table (read by quantization tooling), copies metadata of
        an enclosing export trace and stack traces when asked: none of it applies here, and the
        bookkeeping is a fifth of the tracing time on large models.
        """
        node = _append_node(self.graph, kind, target, args, kwargs, name, type_expr)
        if self.module_stack:
            node.meta["nn_module_stack"] = self.module_stack.copy()
        return node

    def call_module(self, m: nn.Module, forward: Any, args: tuple, kwargs: dict) -> Any:
        """An ``nn.Identity`` call without hooks is its input: it gets no node (it computes nothing,
        and the passes would only have to route around it)."""
        hooked = m._forward_hooks or m._forward_pre_hooks
        if type(m) is nn.Identity and len(args) == 1 and not kwargs and not hooked:
            return args[0]
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict) -> Any:
        if not isinstance(attr_val, torch.Tensor):
            return attr_val
        name = self._name_of(attr_val)
        if name is None or not (isinstance(attr_val, nn.Parameter) or self.proxy_buffer_attributes):
            return attr_val
        if name not in parameter_proxy_cache:
            parameter_proxy_cache[name] = self.create_proxy("get_attr", name, (), {})
        return parameter_proxy_cache[name]


def symbolic_trace(module: nn.Module) -> fx.GraphModule:
    """``torch.fx.symbolic_trace`` with the faster parameter lookup."""
    tracer = _Tracer()
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
