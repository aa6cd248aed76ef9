"""Work on an ONNX graph without its weights' bytes: large initializers become graph inputs meanwhile.

onnxsim and shape inference serialize the proto, parse it in C++ and hand the result back
serialized: several copies of every weight at once, for work that reads only their types and
shapes. Shape inference never reads a weight's values; onnxsim does only where a node computes
from constants alone with a weight among them, or folds a BatchNormalization into a conv — where
neither happens, it does the same work on the light graph. The results are put back into the
original proto, whose weights are never copied.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from reparam.errors import require

LARGE_ELEMENTS = 1 << 14  # a per-channel bias stays an initializer; conv and linear kernels do not


def _onnx() -> Any:
    return require("onnx", "onnx", "ONNX graph work")


def copy_fields(source: Any, into: Any, keep: Callable[[Any], bool]) -> None:
    """Every set field of ``source`` whose descriptor passes ``keep`` into ``into`` (messages copied,
    not shared)."""
    for fd, value in source.ListFields():
        if not keep(fd):
            continue
        if fd.is_repeated:
            getattr(into, fd.name).extend(value)
        elif fd.message_type is not None:
            getattr(into, fd.name).CopyFrom(value)
        else:
            setattr(into, fd.name, value)


def light_view(model: Any, min_elements: int = LARGE_ELEMENTS) -> tuple[Any, dict[str, Any]]:
    """``(light, weights)``: a copy of ``model`` whose initializers of at least ``min_elements`` are
    graph inputs of the same type and shape, and those initializers by name (``model``'s own)."""
    onnx = _onnx()
    graph = model.graph
    inputs = {i.name for i in graph.input}  # an initializer listed as an input is a default value: leave it
    weights = {
        t.name: t for t in graph.initializer if math.prod(t.dims) >= min_elements and t.name not in inputs
    }
    light = onnx.ModelProto()
    copy_fields(model, light, lambda fd: fd.name != "graph")
    copy_fields(graph, light.graph, lambda fd: fd.name != "initializer")
    light.graph.initializer.extend(t for t in graph.initializer if t.name not in weights)
    light.graph.input.extend(
        onnx.helper.make_tensor_value_info(name, t.data_type, list(t.dims)) for name, t in weights.items()
    )
    return light, weights


def _constant_names(graph: Any) -> set[str]:
    """Tensors onnxsim can compute before running the graph: initializers and, in graph order, the
    outputs of every node whose inputs all are (a Constant has none; random ops never are)."""
    constants = {t.name for t in graph.initializer}
    for node in graph.node:
        if node.op_type.startswith("Random"):
            continue
        if all(x in constants for x in node.input if x):
            constants.update(node.output)
    return constants


def weights_can_be_inputs(model: Any, large: set[str]) -> bool:
    """Whether onnxsim's rewrites read none of the ``large`` initializers' values in ``model``."""
    onnx = _onnx()
    graph = model.graph
    if any(n.op_type == "BatchNormalization" for n in graph.node):
        return False  # onnxsim folds it into the conv before it: that reads the kernel
    constants = _constant_names(graph)
    for node in graph.node:
        names = [x for x in node.input if x]
        if any(x in large for x in names) and all(x in constants for x in names):
            return False  # a node computed from constants only: onnxsim would fold it
    subgraph = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
    return not any(a.type in subgraph for n in graph.node for a in n.attribute)  # If/Loop read outer names


def split_weights(model: Any) -> tuple[Any, dict[str, Any]] | None:
    """:func:`light_view` of ``model`` for onnxsim; None when it has no large initializer or a rewrite
    of onnxsim could read one."""
    light, weights = light_view(model)
    if not weights or not weights_can_be_inputs(model, set(weights)):
        return None
    return light, weights


def graft(model: Any, light: Any, weights: dict[str, Any]) -> Any:
    """``model``, changed in place to compute as ``light`` (a rewrite of its light view): the
    light graph's nodes, inputs, outputs, shapes and small initializers, with the weights it still
    reads left where they are."""
    graph, new = model.graph, light.graph
    read = {x for n in new.node for x in n.input} | {o.name for o in new.output}
    for index in reversed(range(len(graph.initializer))):  # one by one: the kept weights are not copied
        name = graph.initializer[index].name
        if name not in weights or name not in read:
            del graph.initializer[index]
    graph.initializer.extend(new.initializer)
    for field in ("node", "input", "output", "value_info"):
        del getattr(graph, field)[:]
    graph.node.extend(new.node)
    graph.input.extend(i for i in new.input if i.name not in weights)
    graph.output.extend(new.output)
    graph.value_info.extend(new.value_info)
    for field in ("opset_import", "functions"):
        del getattr(model, field)[:]
        getattr(model, field).extend(getattr(light, field))
    return model


def infer_shapes(model: Any, check_type: bool = True) -> Any:
    """``model`` with the value_info of ONNX shape inference, inferred on its light view."""
    onnx = _onnx()
    light, weights = light_view(model)
    inferred = onnx.shape_inference.infer_shapes(light, check_type=check_type)
    del model.graph.value_info[:]
    model.graph.value_info.extend(v for v in inferred.graph.value_info if v.name not in weights)
    return model
