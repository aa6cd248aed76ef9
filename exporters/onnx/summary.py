"""A readable summary of an ONNX file: I/O with shapes, op counts, opset, reparam metadata."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from reparam.errors import ReparamError, require
from reparam.exporters.onnx.export import op_counts
from reparam.exporters.onnx.save import sidecar_path


def _shape(vi: Any) -> list[int | str]:
    dims = []
    for d in vi.type.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?"))
    return dims


def _dtype(vi: Any) -> str:
    onnx = require("onnx", "onnx", "Reading an ONNX file")
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).name
    except (KeyError, ValueError, TypeError):
        return str(vi.type.tensor_type.elem_type)


def _meta_value(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def onnx_summary(path: str | os.PathLike) -> dict[str, Any]:
    """``{inputs, outputs, op_counts, opset, metadata, ...}`` of the ONNX file at ``path``."""
    onnx = require("onnx", "onnx", "Reading an ONNX file")

    p = Path(path)
    if not p.is_file():
        raise ReparamError(f"ONNX file {str(p)!r} does not exist", hint="check the path")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as exc:
        raise ReparamError(
            f"cannot read {p.name} as ONNX: {type(exc).__name__}: {str(exc)[:200]}",
            hint="the file may be truncated or not an ONNX model",
        ) from exc
    if model.ir_version == 0 or not model.graph.output:
        # protobuf parses an empty file (and some garbage) as an empty model
        raise ReparamError(
            f"{p.name} is not an ONNX model (no IR version or no graph outputs; {p.stat().st_size} bytes)",
            hint="the file may be empty, truncated or not an ONNX model",
        )
    initializer_names = {i.name for i in model.graph.initializer}
    params = 0
    for init in model.graph.initializer:
        n = 1
        for d in init.dims:
            n *= int(d)
        params += n
    external = any(i.data_location == onnx.TensorProto.EXTERNAL for i in model.graph.initializer)
    return {
        "path": str(p),
        "bytes": p.stat().st_size,
        "external_data": str(sidecar_path(p)) if external else None,
        "ir_version": int(model.ir_version),
        "opset": {(o.domain or "ai.onnx"): int(o.version) for o in model.opset_import},
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": [
            {"name": i.name, "shape": _shape(i), "dtype": _dtype(i)}
            for i in model.graph.input
            if i.name not in initializer_names
        ],
        "outputs": [{"name": o.name, "shape": _shape(o), "dtype": _dtype(o)} for o in model.graph.output],
        "nodes": len(model.graph.node),
        "op_counts": op_counts(model),
        "parameters": params,
        "metadata": {prop.key: _meta_value(prop.value) for prop in model.metadata_props},
    }
