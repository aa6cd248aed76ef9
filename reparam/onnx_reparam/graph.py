"""Read-only views of an ONNX graph: producers, consumers, constants, shapes and attributes."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from reparam.errors import require
from reparam.exporters.onnx.weightless import light_view


def _onnx():
    return require("onnx", "onnx", "Re-parameterizing an ONNX file")


def subgraph_names(graph: Any) -> set[str]:
    """Every tensor name read inside a subgraph (If/Loop/Scan bodies) of ``graph``'s nodes."""
    names: set[str] = set()
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                for inner in sub.node:
                    names.update(inner.input)
                names |= subgraph_names(sub)
    return names


class GraphView:
    """Indexes over one model's top-level graph; rebuild after every change (``refresh``)."""

    def __init__(self, model: Any):
        self.model = model
        self.graph = model.graph
        self.shapes = _inferred_shapes(model)
        self.hints: dict[str, tuple[int | None, int | None]] = {}
        self.refresh()

    def refresh(self) -> None:
        g = self.graph
        self.initializers = {i.name: i for i in g.initializer}
        self.graph_inputs = {i.name for i in g.input}
        self.graph_outputs = {o.name for o in g.output}
        self.producer = {out: n for n in g.node for out in n.output if out}
        uses = Counter(name for n in g.node for name in n.input if name)
        for name in subgraph_names(g) | self.graph_outputs:
            uses[name] += 1
        self.uses = uses
        self._values: dict[str, np.ndarray | None] = {}
        self.consumers: dict[str, list[Any]] = {}
        for n in g.node:
            for name in n.input:
                self.consumers.setdefault(name, []).append(n)

    def private(self, name: str) -> bool:
        """True when ``name`` is read once, by one node, and is no graph output."""
        return self.uses.get(name, 0) == 1

    def is_constant(self, name: str) -> bool:
        """Whether ``name`` is an initializer (not overridable as an input) or a Constant's output."""
        node = self.producer.get(name)
        if name in self.initializers:
            # below IR 4 every initializer is listed as an input; from IR 4 on, one listed there is
            # a default the caller may override, so it is no constant
            return name not in self.graph_inputs or self.model.ir_version < 4
        if node is None or node.domain:
            return False
        # torch.onnx writes a tied weight once and reads it again through an Identity node
        return node.op_type == "Constant" or (node.op_type == "Identity" and self.is_constant(node.input[0]))

    def constant(self, name: str) -> np.ndarray | None:
        """The value of an initializer or a Constant node's output (None for anything else)."""
        if not self.is_constant(name):
            return None
        if name not in self._values:
            self._values[name] = self._read_constant(name)
        return self._values[name]

    def _read_constant(self, name: str) -> np.ndarray | None:
        onnx = _onnx()
        node = self.producer.get(name)
        if name not in self.initializers and node is not None and node.op_type == "Identity":
            return self.constant(node.input[0])
        if name in self.initializers and name not in self.graph_inputs:
            return onnx.numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant" and not node.domain:
            for attr in node.attribute:
                if attr.name == "value":
                    return onnx.numpy_helper.to_array(attr.t)
                if attr.name in ("value_float", "value_int"):
                    return np.asarray(attr.f if attr.name == "value_float" else attr.i)
                if attr.name in ("value_floats", "value_ints"):
                    return np.asarray(list(attr.floats) if attr.name == "value_floats" else list(attr.ints))
        return None

    def computed_constant(self, name: str, limit: int = 64) -> np.ndarray | None:
        """A constant, or the value of a small subgraph that reads only constants (shape plumbing
        such as the pads of a Pad node); None when it depends on a graph input."""
        value = self.constant(name)
        if value is not None or name not in self.producer:
            return value
        nodes, stack, seen = [], [name], set()
        while stack:
            tensor = stack.pop()
            if tensor in seen or not tensor:
                continue
            seen.add(tensor)
            node = self.producer.get(tensor)
            if self.constant(tensor) is not None:
                if node is not None:  # a Constant node: the evaluated graph needs it too
                    nodes.append(node)
                continue
            if node is None or node.domain not in ("", "ai.onnx") or len(nodes) >= limit:
                return None
            if node not in nodes:
                nodes.append(node)
            stack.extend(node.input)
        return _evaluate(self.model, nodes, name)

    def rank(self, name: str) -> int | None:
        shape = self.shapes.get(name)
        return len(shape) if shape is not None else self.hints.get(name, (None, None))[0]

    def channels(self, name: str) -> int | None:
        shape = self.shapes.get(name)
        if shape and len(shape) > 1 and isinstance(shape[1], int):
            return shape[1]
        return self.hints.get(name, (None, None))[1]

    def hint(self, name: str, rank: int | None, channels: int | None) -> None:
        """Rank and channel count of ``name`` known from the chain computing it (shape inference
        may not know them, e.g. after a Pad whose pads it could not read)."""
        self.hints[name] = (rank, channels)

    def elem_type(self, name: str) -> int | None:
        return self.shapes.get(("type", name))


def _evaluate(model: Any, nodes: list[Any], name: str) -> np.ndarray | None:
    """Run ``nodes`` (which read only constants) with ONNX's reference evaluator; None on failure."""
    onnx = _onnx()
    from onnx.reference import ReferenceEvaluator

    order = [n for n in model.graph.node if n in nodes]
    needed = {i for n in order for i in n.input} - {o for n in order for o in n.output}
    inits = [i for i in model.graph.initializer if i.name in needed]
    out = onnx.helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None)
    graph = onnx.helper.make_graph(order, "constants", [], [out], inits)
    try:
        sub = onnx.helper.make_model(graph, opset_imports=list(model.opset_import))
        return np.asarray(ReferenceEvaluator(sub).run(None, {})[0])
    except Exception:  # anything the evaluator cannot run stays unknown, so nothing is folded
        return None


# Initializers with more elements than this are given to shape inference as typed inputs, without
# their data: it needs their shapes only, and a model over 2 GiB could not be serialized for it.
_SHAPE_ONLY_ELEMENTS = 4096


def _inferred_shapes(model: Any) -> dict:
    """``{tensor: [dim or None]}`` and ``{("type", tensor): elem_type}`` from ONNX shape inference."""
    onnx = _onnx()
    try:
        light, _ = light_view(model, _SHAPE_ONLY_ELEMENTS + 1)
        inferred = onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=True)
    except Exception:  # inference is a help, not a requirement: a tensor without a shape is not folded
        inferred = model
    out: dict = {}
    g = inferred.graph
    for vi in [*g.input, *g.value_info, *g.output]:
        t = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            continue
        out[("type", vi.name)] = t.elem_type
        if t.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    for init in model.graph.initializer:
        out[init.name] = list(init.dims)
        out[("type", init.name)] = init.data_type
    return out


def attributes(node: Any) -> dict[str, Any]:
    """The node's attributes as Python values."""
    onnx = _onnx()
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def describe_node(node: Any) -> str:
    """A name for messages: the node's name, or its op and first output when it has none."""
    return node.name or f"{node.op_type}->{node.output[0] if node.output else '?'}"
