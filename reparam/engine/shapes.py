"""Static shapes of a traced graph's values (``node.meta["tensor_meta"]``), for the passes.

The shapes come from one run of the graph at the example inputs' shapes. When every operation in
the graph is one whose output shape depends only on its inputs' shapes (a fixed list: arithmetic,
activations, normalisations, pooling, concatenation, reshaping), the run skips the arithmetic that
costs: a convolution or linear layer hands on an uninitialised tensor of the shape its formula
gives, and an activation or normalisation hands on its input; the cheap operations run for real on
those values, which are meaningless but correctly shaped. Any other operation (one whose shape may
depend on values, like boolean indexing or ``nonzero``), or any error, means the graph is run for
real on copies of the inputs. Fake or meta tensors would cost more than either on CPU: most of
their kernels are Python.
"""

from __future__ import annotations

import operator
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import fx, nn

from reparam.engine.graph import attribute_lookup
from reparam.tensors import fresh

_SHAPED_FOR = "reparam_shaped_for"
_MISSING = object()


class TensorShape(NamedTuple):
    """What the passes need to know of a node's value."""

    shape: torch.Size
    dtype: torch.dtype


class NeedsRealRun(Exception):
    """The cheap run cannot give the graph's shapes; the graph is run for real instead."""


_CONV_DIMS = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}
# eval-mode layers whose output has their input's shape and dtype
_SAME_SHAPE_MODULES = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.PReLU,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Tanh,
)
_SAME_SHAPE_FUNCTIONS = {
    F.batch_norm, F.layer_norm, F.group_norm, F.instance_norm, F.dropout, F.dropout2d, F.relu, F.relu6,
    F.leaky_relu, F.elu, F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid, F.sigmoid, F.tanh, torch.relu,
    torch.sigmoid, torch.tanh,
}  # fmt: skip
_SAME_SHAPE_METHODS = {"relu", "sigmoid", "tanh", "clone", "contiguous"}
# operations whose output shape follows from their inputs' shapes and their other arguments
_SHAPE_ONLY_FUNCTIONS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.neg,
    operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge, getattr,
    torch.add, torch.sub, torch.mul, torch.div, torch.cat, torch.stack, torch.flatten, torch.mean, torch.sum,
    torch.softmax, torch.chunk, torch.split, torch.squeeze, torch.unsqueeze, torch.permute, torch.transpose,
    torch.reshape, torch._assert, F.softmax, F.interpolate, F.pad, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d, F.adaptive_max_pool2d,
}  # fmt: skip
_SHAPE_ONLY_METHODS = {
    "size", "dim", "view", "reshape", "flatten", "permute", "transpose", "mean", "sum", "mul", "add", "sub",
    "div", "expand", "expand_as", "view_as", "reshape_as", "chunk", "split", "squeeze", "unsqueeze",
    "softmax", "float", "half", "type_as",
}  # fmt: skip


_KNOWN_METHODS = _SAME_SHAPE_METHODS | _SHAPE_ONLY_METHODS


def _conv_shape(conv: nn.Module, shape: torch.Size, dims: int) -> tuple[int, ...]:
    """Output shape of ``conv`` on an input of ``shape`` (batched or not), by torch's formula."""
    if len(shape) not in (dims + 1, dims + 2) or shape[-dims - 1] != conv.in_channels:
        raise NeedsRealRun("input shape does not fit the convolution")
    spatial = shape[-dims:]
    if conv.padding == "same":
        out = tuple(spatial)
    else:
        padding = (0,) * dims if conv.padding == "valid" else conv.padding
        # a padding mode other than zeros pads by the same amount before an unpadded convolution
        out = tuple(
            (size + 2 * p - d * (k - 1) - 1) // s + 1
            for size, p, d, k, s in zip(spatial, padding, conv.dilation, conv.kernel_size, conv.stride)
        )
    if min(out) < 1:
        raise NeedsRealRun("the convolution's output would be empty")
    return (*shape[: -dims - 1], conv.out_channels, *out)


def _tensor_index(node: fx.Node) -> bool:
    """A subscript by a traced value (a boolean mask's result has a value-dependent length)."""
    return node.target is operator.getitem and any(isinstance(a, fx.Node) for a in _flat(node.args[1:]))


def _flat(args: Any) -> list:
    out: list = []
    fx.node.map_aggregate(args, out.append)
    return out


def _shape_only(gm: fx.GraphModule) -> bool:
    """Whether every operation of the graph has an output shape that its inputs' shapes decide."""
    for node in gm.graph.nodes:
        if node.op == "call_function":
            known = node.target in _SAME_SHAPE_FUNCTIONS or node.target in _SHAPE_ONLY_FUNCTIONS
            if not known and (node.target is not operator.getitem or _tensor_index(node)):
                return False
        elif node.op == "call_method" and node.target not in _KNOWN_METHODS:
            return False
    return True


def _cheap_call_module(module: nn.Module, args: tuple, kwargs: dict) -> Any:
    """A leaf module's output, shaped right, without the arithmetic of weighted or elementwise layers."""
    kind = type(module)
    x = args[0] if len(args) == 1 and not kwargs else None
    if isinstance(x, torch.Tensor):
        if kind in _CONV_DIMS:
            return x.new_empty(_conv_shape(module, x.shape, _CONV_DIMS[kind]))
        if kind is nn.Linear and x.dim() >= 1 and x.shape[-1] == module.in_features:
            return x.new_empty((*x.shape[:-1], module.out_features))
        if isinstance(module, _SAME_SHAPE_MODULES):
            return x
    return module(*args, **kwargs)


def _cheap_call_function(target: Any, args: tuple, kwargs: dict) -> Any:
    if target in _SAME_SHAPE_FUNCTIONS and args and isinstance(args[0], torch.Tensor):
        return args[0]
    return target(*args, **kwargs)


def _cheap_call_method(name: str, args: tuple, kwargs: dict) -> Any:
    if name in _SAME_SHAPE_METHODS:
        return args[0]
    return getattr(args[0], name)(*args[1:], **kwargs)


def _run_graph(gm: fx.GraphModule, inputs: tuple, *, cheap: bool) -> dict[fx.Node, TensorShape]:
    """Run the graph on ``inputs``: the shape of every tensor it computes.

    What ``fx.Interpreter`` does (placeholders, attributes, calls; each value dropped after its
    last use) without its per-node bookkeeping, which costs more than the arithmetic of small
    layers. torch.fx's ShapeProp would also import sympy on first use (half a second).
    """
    graph = gm.graph
    given = iter(graph.process_inputs(*inputs))
    nodes = list(graph.nodes)
    dies_after: dict[fx.Node, list[fx.Node]] = {}
    seen: set[fx.Node] = set()
    for node in reversed(nodes):
        for value in node.all_input_nodes:
            if value not in seen:
                seen.add(value)
                dies_after.setdefault(node, []).append(value)
    env: dict[fx.Node, Any] = {}
    shapes: dict[fx.Node, TensorShape] = {}
    attribute = attribute_lookup(gm)  # the graph does not change during the run
    load = env.__getitem__
    with torch.no_grad():
        for node in nodes:
            op, target = node.op, node.target
            if op == "placeholder":
                if str(target).startswith("*"):
                    out: Any = list(given)
                else:
                    out = next(given, _MISSING)
                    if out is _MISSING:
                        if not node.args:
                            raise RuntimeError(f"no value for the graph input {target}")
                        out = node.args[0]
            elif op == "output":
                out = fx.node.map_arg(node.args, load)[0]
                if isinstance(out, torch.Tensor):
                    shapes[node] = TensorShape(out.shape, out.dtype)
                return shapes
            elif op == "get_attr":
                out = attribute(str(target))
            else:
                args = fx.node.map_arg(node.args, load)
                kwargs = fx.node.map_arg(node.kwargs, load)
                if op == "call_function":
                    out = _cheap_call_function(target, args, kwargs) if cheap else target(*args, **kwargs)
                elif op == "call_method":
                    out = (
                        _cheap_call_method(target, args, kwargs)
                        if cheap
                        else getattr(args[0], target)(*args[1:], **kwargs)
                    )
                elif op == "call_module":
                    module = attribute(str(target))
                    out = _cheap_call_module(module, args, kwargs) if cheap else module(*args, **kwargs)
                else:
                    raise RuntimeError(f"unknown node op {op!r}")
            if isinstance(out, torch.Tensor):
                shapes[node] = TensorShape(out.shape, out.dtype)
            env[node] = out
            for value in dies_after.get(node, ()):
                env.pop(value, None)
    return shapes


def cheap_shapes(gm: fx.GraphModule, example_inputs: tuple) -> dict[fx.Node, TensorShape]:
    """Shapes from a run without the costly arithmetic; raises unless every operation is shape-only."""
    if not _shape_only(gm):
        raise NeedsRealRun("an operation whose output shape may depend on values")
    return _run_graph(gm, fresh(example_inputs), cheap=True)


def real_shapes(gm: fx.GraphModule, example_inputs: tuple) -> dict[fx.Node, TensorShape]:
    """Shapes from a real run on copies of the inputs."""
    return _run_graph(gm, fresh(example_inputs), cheap=False)


def record_shapes(gm: fx.GraphModule, example_inputs: tuple) -> None:
    """Annotate every node with ``tensor_meta``: from the cheap run, else from a real run."""
    try:
        shapes = cheap_shapes(gm, example_inputs)
    except Exception:  # whatever the cheap run cannot do, the real run can
        shapes = real_shapes(gm, example_inputs)
    for node in gm.graph.nodes:
        node.meta.pop("tensor_meta", None)
    for node, shape in shapes.items():
        node.meta["tensor_meta"] = shape


def propagate_shapes(gm: fx.GraphModule, example_inputs: tuple | None) -> bool:
    """Annotate nodes with ``tensor_meta`` by running the graph once; False when not possible."""
    if example_inputs is None:
        return False
    # Exact rewrites keep every value's shape, and a new node inherits the meta of the node it
    # replaces (replace_with): when every node was shaped for these inputs, a rerun is skipped.
    key = id(example_inputs)
    if all(n.meta.get(_SHAPED_FOR) == key for n in gm.graph.nodes):
        return True
    try:
        record_shapes(gm, example_inputs)
    except Exception:  # shapes are an optional aid; passes stay conservative without them
        for node in gm.graph.nodes:
            node.meta.pop("tensor_meta", None)
            node.meta.pop(_SHAPED_FOR, None)
        return False
    for node in gm.graph.nodes:
        node.meta[_SHAPED_FOR] = key
    return True
