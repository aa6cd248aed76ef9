"""One ONNX node as a linear step of a chain: a :class:`~reparam.onnx_reparam.terms.Term` or a reason.

``node_term`` returns None for nodes that are not linear in their data input (ReLU, Concat, ...),
a reason for linear nodes that cannot be folded exactly (a BatchNormalization in training mode,
weights that are not constants), and the node's term otherwise. Every value is read in float64.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from reparam import kernel_math as km
from reparam.onnx_reparam.graph import GraphView, attributes
from reparam.onnx_reparam.terms import Reason, Term, affine, identity

ANCHORS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "AveragePool"}
AFFINE_OPS = {"Mul", "Add", "Sub", "Div"}


def _f64(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a, dtype=np.float64).copy())


def _consts(view: GraphView, node: Any, names: list[str]) -> list[np.ndarray | None] | Reason:
    values = [view.constant(n) if n else None for n in names]
    missing = [n for n, v in zip(names, values) if n and v is None]
    overridable = [n for n in missing if n in view.graph_inputs]
    if overridable:
        return f"{node.op_type} weights {overridable} are graph inputs (a caller may feed other values)"
    if missing:
        return f"{node.op_type} weights {missing} are computed, not constants"
    return values


def node_term(view: GraphView, node: Any) -> Term | Reason | None:
    """The term of a single-data-input linear node (see the module docstring)."""
    if node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type in AFFINE_OPS:
        return _elementwise(view, node)
    if node.op_type == "Identity":
        return identity()
    reader = _READERS.get(node.op_type)
    return reader(view, node) if reader else None


def node_cost(view: GraphView, node: Any) -> int:
    """Multiply-adds per output pixel of a convolution-like node (0 for the per-channel ones)."""
    if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and len(node.input) > 1:
        dims = view.shapes.get(node.input[1])
        return int(np.prod(dims)) if dims and all(isinstance(d, int) for d in dims) else 0
    if node.op_type == "AveragePool":
        size = attributes(node).get("kernel_shape", [])
        return int(np.prod(size)) * (view.channels(node.input[0]) or 0)
    return 0


def _spatial_attrs(attrs: dict, spatial: int, node: Any) -> tuple | Reason:
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad not in ("NOTSET", "VALID"):
        return f"{node.op_type} with auto_pad={auto_pad} (padding depends on the input size)"
    pads = list(attrs.get("pads", [0] * (2 * spatial))) if auto_pad == "NOTSET" else [0] * (2 * spatial)
    strides = tuple(attrs.get("strides", [1] * spatial))
    dilations = tuple(attrs.get("dilations", [1] * spatial))
    return strides, dilations, tuple(pads[:spatial]), tuple(pads[spatial:])


def _conv(view: GraphView, node: Any) -> Term | Reason:
    values = _consts(view, node, list(node.input[1:3]))
    if isinstance(values, str):
        return values
    w, b = values[0], values[1] if len(values) > 1 else None
    attrs = attributes(node)
    geometry = _spatial_attrs(attrs, w.ndim - 2, node)
    if isinstance(geometry, str):
        return geometry
    kernel = _f64(w)
    bias = _f64(b) if b is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    strides, dilations, begins, ends = geometry
    return Term(kernel, bias, int(attrs.get("group", 1)), strides, dilations, begins, ends)


def _conv_transpose(view: GraphView, node: Any) -> Term | Reason:
    values = _consts(view, node, list(node.input[1:3]))
    if isinstance(values, str):
        return values
    w, b = values[0], values[1] if len(values) > 1 else None
    groups = int(attributes(node).get("group", 1))
    bias = _f64(b) if b is not None else torch.zeros(w.shape[1] * groups, dtype=torch.float64)
    return Term(_f64(w), bias, groups, kind="convT", node=node)


def _batch_norm(view: GraphView, node: Any) -> Term | Reason:
    attrs = attributes(node)
    if attrs.get("training_mode", 0) or any(o for o in node.output[1:]):
        return "BatchNormalization in training mode (it normalizes with the batch's statistics)"
    values = _consts(view, node, list(node.input[1:5]))
    if isinstance(values, str):
        return values
    gamma, beta, mean, var = (_f64(v) for v in values)
    scale, shift = km.bn_scale_shift(mean, var, gamma, beta, float(attrs.get("epsilon", 1e-5)))
    rank = view.rank(node.input[0])
    if rank is None:
        return "the BatchNormalization's input rank is unknown"
    return affine(scale, shift, rank - 2)


def _gemm(view: GraphView, node: Any) -> Term | Reason:
    attrs = attributes(node)
    if attrs.get("transA", 0):
        return "Gemm with transA=1"
    values = _consts(view, node, list(node.input[1:3]))
    if isinstance(values, str):
        return values
    w = _f64(values[0]) * float(attrs.get("alpha", 1.0))
    kernel = w if attrs.get("transB", 0) else w.T.contiguous()
    bias = torch.zeros(kernel.shape[0], dtype=torch.float64)
    c = values[1] if len(values) > 1 else None
    if c is not None:
        if c.size not in (1, kernel.shape[0]) or c.ndim > 2 or (c.ndim == 2 and c.shape[0] != 1):
            return f"Gemm's C of shape {list(c.shape)} is not one bias per output"
        bias = bias + _f64(c).reshape(-1) * float(attrs.get("beta", 1.0))
    return Term(kernel, bias, kind="gemm")


def _matmul(view: GraphView, node: Any) -> Term | Reason | None:
    w = view.constant(node.input[1])
    if w is None:
        return None if view.constant(node.input[0]) is None else "MatMul with a constant left operand"
    if w.ndim != 2 or view.rank(node.input[0]) != 2:
        return "MatMul of a non-2-D input (only [N, C] inputs act as a fully connected layer)"
    kernel = _f64(w).T.contiguous()
    return Term(kernel, torch.zeros(kernel.shape[0], dtype=torch.float64), kind="gemm")


def _average_pool(view: GraphView, node: Any) -> Term | Reason:
    attrs = attributes(node)
    size = list(attrs.get("kernel_shape", []))
    geometry = _spatial_attrs(attrs, len(size), node)
    if isinstance(geometry, str):
        return geometry
    strides, dilations, begins, ends = geometry
    if attrs.get("ceil_mode", 0):
        return "AveragePool with ceil_mode=1 (its last window may be partial)"
    if (any(begins) or any(ends)) and not attrs.get("count_include_pad", 0):
        return "a padded AveragePool with count_include_pad=0 averages fewer pixels at the border"
    channels = view.channels(node.input[0])
    if channels is None:
        return "the AveragePool's channel count is unknown"
    kernel = km.avgpool_kernel(channels, channels, size, dtype=torch.float64)
    return Term(
        kernel, torch.zeros(channels, dtype=torch.float64), channels, strides, dilations, begins, ends
    )


def channel_values(view: GraphView, c: np.ndarray, data: str, op: str) -> torch.Tensor | Reason:
    """A constant that broadcasts as one value per channel of ``data``, as a float64 vector."""
    rank, channels = view.rank(data), view.channels(data)
    if rank is None or rank < 2 or c.ndim > rank:
        return f"{op} by a constant on an input of unknown or too small rank"
    shape = (1,) * (rank - c.ndim) + tuple(c.shape)
    if any(s != 1 for i, s in enumerate(shape) if i != 1) or (shape[1] != 1 and shape[1] != channels):
        return f"{op} by a constant of shape {list(c.shape)}, not one value per channel"
    if channels is None:
        return f"the {op}'s channel count is unknown"
    return _f64(c).reshape(-1).expand(channels).clone()


def _elementwise(view: GraphView, node: Any) -> Term | Reason | None:
    """Mul/Add/Sub/Div of the data by one constant holding a value per channel (or one value)."""
    consts = [view.constant(n) for n in node.input]
    data = [i for i, c in enumerate(consts) if c is None]
    if len(data) != 1 or len(node.input) != 2:
        return None  # two data inputs: a branch sum (handled by the chain) or not linear at all
    d = data[0]
    value = channel_values(view, consts[1 - d], node.input[d], node.op_type)
    if isinstance(value, str):
        return value
    if node.op_type == "Div" and bool(torch.any(value == 0)):
        return "a division by a constant holding zeros"
    one, zero = torch.ones_like(value), torch.zeros_like(value)
    scale, shift = {
        ("Mul", 0): (value, zero),
        ("Mul", 1): (value, zero),
        ("Add", 0): (one, value),
        ("Add", 1): (one, value),
        ("Sub", 0): (one, -value),
        ("Sub", 1): (-one, value),
        ("Div", 0): (1.0 / value, zero),
    }.get((node.op_type, d), (None, None))
    if scale is None:
        return "a constant divided by the data is not linear"
    return affine(scale, shift, view.rank(node.input[d]) - 2)


def pad_step(view: GraphView, node: Any) -> tuple[tuple[int, ...], tuple[int, ...], float] | Reason:
    """``(begins, ends, value)`` over the spatial axes of a constant-mode Pad node, or a reason."""
    attrs = attributes(node)
    mode = attrs.get("mode", b"constant")
    if (mode.decode() if isinstance(mode, bytes) else mode) != "constant":
        return f"a Pad in {mode!r} mode"
    rank = view.rank(node.input[0])
    if rank is None:
        return "the Pad's input rank is unknown"
    if len(node.input) > 1:
        names = list(node.input[1:4])
        values = [view.computed_constant(n) if n else None for n in names]
        if values[0] is None or any(n and v is None for n, v in zip(names, values)):
            return "the Pad's pads or value are computed, not constants"
        pads, value = values[0], values[1] if len(values) > 1 else None
        axes = values[2] if len(values) > 2 else None
    else:
        pads, value, axes = np.asarray(attrs.get("pads", [])), attrs.get("value", 0.0), None
    pads = [int(p) for p in np.asarray(pads).reshape(-1)]
    axes = list(range(rank)) if axes is None else [int(a) % rank for a in np.asarray(axes).reshape(-1)]
    full = [0] * (2 * rank)
    for i, a in enumerate(axes):
        full[a], full[rank + a] = pads[i], pads[len(axes) + i]
    if any(full[a] or full[rank + a] for a in (0, 1)):
        return "a Pad of the batch or channel axis"
    if any(p < 0 for p in full):
        return "a Pad with negative pads (a crop)"
    fill = 0.0 if value is None else float(np.asarray(value).reshape(-1)[0]) if np.size(value) else 0.0
    return tuple(full[2:rank]), tuple(full[rank + 2 :]), fill


# Slice ends at or beyond this mean "to the end" (torch writes INT64_MAX, others INT32_MAX).
TO_THE_END = 2**31 - 1


def slice_step(view: GraphView, node: Any) -> tuple[tuple[int, ...], tuple[int, ...]] | Reason:
    """A Slice that crops spatial borders by a fixed amount, as negative ``(begins, ends)`` pads."""
    rank = view.rank(node.input[0])
    names = list(node.input[1:5])
    values = [view.computed_constant(n) if n else None for n in names]
    if rank is None or len(values) < 2 or any(n and v is None for n, v in zip(names, values)):
        return "a Slice with computed bounds or an unknown input rank"
    starts, ends = (np.asarray(v).reshape(-1).astype(np.int64) for v in values[:2])
    axes = values[2] if len(values) > 2 and values[2] is not None else np.arange(len(starts))
    steps_ = values[3] if len(values) > 3 and values[3] is not None else np.ones(len(starts))
    begins, stops = [0] * (rank - 2), [0] * (rank - 2)
    for start, end, axis, step in zip(
        starts, ends, np.asarray(axes).reshape(-1), np.asarray(steps_).reshape(-1)
    ):
        axis = int(axis) % rank
        if step != 1 or axis < 2 or start < 0 or (0 <= end < TO_THE_END):
            return "a Slice that is not a fixed crop of spatial borders"
        begins[axis - 2] = -int(start)
        stops[axis - 2] = int(end) if end < 0 else 0
    return tuple(begins), tuple(stops)


_READERS = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "BatchNormalization": _batch_norm,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "AveragePool": _average_pool,
}
