"""fp16 ONNX preparation (float16 weights and compute, float32 I/O) for strongly typed TensorRT builds."""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

from reparam.errors import ReparamError, require
from reparam.exporters.onnx.save import save_onnx


def to_fp16_model(model: Any, *, keep_io_types: bool = True) -> Any:
    """Convert a float32 ModelProto to float16 compute with onnxconverter-common (I/O stay float32)."""
    require("onnxconverter_common", "onnx", "fp16 ONNX conversion")
    from onnxconverter_common import float16

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # it warns about every weight clamped into the fp16 range
        return float16.convert_float_to_float16(model, keep_io_types=keep_io_types)


def convert_onnx_to_fp16(
    path_in: str | os.PathLike, path_out: str | os.PathLike, *, keep_io_types: bool = True
) -> Path:
    """Write an fp16 copy of the ONNX file at ``path_in`` to ``path_out`` (atomically); returns ``path_out``.

    Inputs and outputs stay float32 (Cast nodes at the edges), so the same feeds work for both files
    and the file runs on ONNX Runtime's CPU provider. ``reparam.precision`` becomes "fp16"; the other
    metadata (provenance, block boundaries) is kept.
    """
    onnx = require("onnx", "onnx", "fp16 ONNX conversion")
    src = Path(path_in)
    if not src.is_file():
        raise ReparamError(f"ONNX file {str(src)!r} does not exist", hint="check the path")
    if Path(path_out).resolve() == src.resolve():
        raise ReparamError(
            "the fp16 output would overwrite its input", hint="write the fp16 model to another path"
        )
    model = onnx.load(str(src))
    elem = onnx.TensorProto.FLOAT16
    if any(vi.type.tensor_type.elem_type == elem for vi in model.graph.input) or any(
        i.data_type == elem for i in model.graph.initializer
    ):
        raise ReparamError(
            f"{src.name} already holds float16 tensors", hint="convert the float32 export instead"
        )
    converted = to_fp16_model(model, keep_io_types=keep_io_types)
    props = {p.key: p.value for p in converted.metadata_props}
    props["reparam.precision"] = "fp16"
    props["reparam.fp16_source"] = json.dumps(src.name)
    del converted.metadata_props[:]
    for k, v in props.items():
        e = converted.metadata_props.add()
        e.key, e.value = k, v
    save_onnx(converted, path_out)
    return Path(path_out)


# Name used by `reparam deploy`.
convert_fp16 = convert_onnx_to_fp16
