"""The reference's own fp32 rounding error: the same ONNX graph run in float64 (ONNX's reference evaluator).

The fp32 tolerance profile allows max(1e-5, 10 x this noise floor), as for PyTorch models. ONNX
Runtime has no float64 kernels for most CNN ops, so the float64 run uses ``onnx.reference``; it is
slow and therefore only called when an output exceeds the fixed limit. Anything the float64 copy
cannot express (a Cast to float32 it cannot widen, an op the evaluator lacks) gives None: the
fixed limit then applies.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from reparam.numerics import scale_relative_error
from reparam.onnx_reparam.graph import _onnx


def _widen_tensor(t: Any) -> None:
    onnx = _onnx()
    if t.data_type == onnx.TensorProto.FLOAT:
        value = onnx.numpy_helper.to_array(t).astype(np.float64)
        t.CopyFrom(onnx.numpy_helper.from_array(value, t.name))


# Beyond this the float64 run is not the same computation (an evaluator bug, not rounding): unused.
MAX_CREDIBLE_NOISE = 1e-3


def _batchnorm_as_arithmetic(model: Any) -> None:
    """Replace each inference BatchNormalization by Mul/Add with float64 constants.

    ``onnx.reference``'s BatchNormalization does not match ONNX Runtime's on the files torch
    writes; the arithmetic form is unambiguous.
    """
    onnx = _onnx()
    from reparam.onnx_reparam.graph import GraphView, attributes

    view = GraphView(model)
    nodes = []
    for node in model.graph.node:
        values = [view.constant(n) for n in node.input[1:5]] if node.op_type == "BatchNormalization" else []
        rank = view.rank(node.input[0]) if values else None
        if not values or any(v is None for v in values) or rank is None or len(node.output) > 1:
            nodes.append(node)
            continue
        gamma, beta, mean, var = (np.asarray(v, np.float64) for v in values)
        scale = gamma / np.sqrt(var + float(attributes(node).get("epsilon", 1e-5)))
        shape = (1, -1) + (1,) * (rank - 2)
        s_name, b_name, mid = (f"{node.output[0]}__f64_{k}" for k in ("scale", "shift", "mid"))
        model.graph.initializer.extend(
            [
                onnx.numpy_helper.from_array(scale.reshape(shape), s_name),
                onnx.numpy_helper.from_array((beta - mean * scale).reshape(shape), b_name),
            ]
        )
        nodes.append(onnx.helper.make_node("Mul", [node.input[0], s_name], [mid]))
        nodes.append(onnx.helper.make_node("Add", [mid, b_name], [node.output[0]]))
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def float64_copy(model: Any) -> Any:
    """A copy of ``model`` computing in float64 wherever it computed in float32."""
    onnx = _onnx()
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    _batchnorm_as_arithmetic(copy)
    g = copy.graph
    for init in g.initializer:
        _widen_tensor(init)
    for vi in [*g.input, *g.output, *g.value_info]:
        if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
            vi.type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
    for node in g.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                _widen_tensor(attr.t)
            if node.op_type == "Cast" and attr.name == "to" and attr.i == onnx.TensorProto.FLOAT:
                attr.i = onnx.TensorProto.DOUBLE
    return copy


def reference_noise(
    reference: str | os.PathLike, feeds: Sequence[dict[str, np.ndarray]], outputs: dict[str, list[np.ndarray]]
) -> dict[str, float] | None:
    """Per output: the worst scale-relative error of the fp32 ``outputs`` against the float64 run."""
    onnx = _onnx()
    from onnx.reference import ReferenceEvaluator

    try:
        wide = ReferenceEvaluator(float64_copy(onnx.load(os.fspath(reference))))
        names = list(outputs)
        noise = dict.fromkeys(names, 0.0)
        for i, feed in enumerate(feeds):
            cast = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in feed.items()}
            for name, value in zip(names, wide.run(names, cast)):
                err = scale_relative_error(np.asarray(value, np.float64), outputs[name][i].astype(np.float64))
                noise[name] = max(noise[name], float(err))
        return noise if max(noise.values(), default=0.0) <= MAX_CREDIBLE_NOISE else None
    except Exception:  # the float64 copy is a help for ill-conditioned models, never a requirement
        return None
