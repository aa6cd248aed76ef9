"""Explicitly quantized (Q/DQ) ONNX as TensorRT 10.1+ and 11 build it, made with ONNX Runtime's tools.

Layout: symmetric int8 everywhere (every zero point is 0), per-channel weight scales (axis 0 of
Conv weights), per-tensor activation scales. Only the inputs of weighted layers (Conv, Gemm,
MatMul) are quantized; biases, their outputs and everything between them stay float, so a Conv is
followed by its activation in float before the next QuantizeLinear: the DQ -> Conv -> ReLU -> Q
pattern TensorRT fuses into one int8 kernel. Keeping a layer float (an exclusion) therefore keeps
both its weights and its input activation float. ONNX Runtime runs the same file on the CPU, so the int8 numerics are checked here.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reparam.errors import InternalError, ReparamError, require
from reparam.quantize.calib import make_reader

METHODS = ("minmax", "entropy", "percentile")
DEFAULT_PERCENTILE = 99.999
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
META_KEY = "reparam.quantization"


def is_qdq(model: Any) -> bool:
    """True when the ONNX model holds QuantizeLinear/DequantizeLinear nodes."""
    return any(n.op_type in QDQ_OPS for n in model.graph.node)


def load_onnx(path: str | os.PathLike) -> Any:
    """Load an ONNX file, or raise a ReparamError when it is missing or not ONNX."""
    onnx = require("onnx", "onnx", "int8 quantization")
    p = Path(path)
    if not p.is_file():
        raise ReparamError(
            f"ONNX file {str(p)!r} does not exist", hint="export one with `reparam export onnx`"
        )
    try:
        model = onnx.load(str(p))
    except Exception as exc:
        raise ReparamError(
            f"{p.name} is not an ONNX model ({type(exc).__name__}: {str(exc).strip()[:200]})",
            hint="pass the .onnx file written by `reparam export onnx` or `reparam deploy`",
        ) from exc
    if not model.graph.node:
        raise ReparamError(f"{p.name} is not an ONNX model (its graph is empty)", hint="check the path")
    return model


def check_float_model(model: Any, label: str) -> None:
    """Refuse a model that is already quantized or holds float16 weights."""
    if is_qdq(model):
        raise ReparamError(
            f"{label} is already quantized (it has QuantizeLinear/DequantizeLinear nodes)",
            hint="quantize the float32 deploy ONNX instead",
        )
    if any(i.data_type == 10 for i in model.graph.initializer):  # TensorProto.FLOAT16
        raise ReparamError(
            f"{label} holds float16 weights", hint="quantize the float32 export, not the .fp16.onnx"
        )


def name_nodes(model: Any) -> None:
    """Give unnamed nodes a unique name (exclusion lists address nodes by name)."""
    taken = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def weighted_layers(model: Any) -> dict[str, str]:
    """``{node name: weight initializer name}`` of the Conv/Gemm/MatMul nodes with constant weights."""
    inits = {i.name for i in model.graph.initializer}
    return {
        n.name: n.input[1]
        for n in model.graph.node
        if n.op_type in WEIGHTED_OPS and len(n.input) > 1 and n.input[1] in inits
    }


def module_of(weight_name: str) -> str:
    """The module path a weight initializer came from (``stage1.0.rbr_dense.weight`` -> ``stage1.0.rbr_dense``)."""
    return weight_name[: -len(".weight")] if weight_name.endswith(".weight") else weight_name


@dataclass
class QdqSummary:
    """Counts and checked properties of a Q/DQ model."""

    quantize: int
    dequantize: int
    per_channel_weights: int
    per_tensor_activations: int


def _initializer(model: Any, name: str) -> np.ndarray | None:
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    return None


def check_qdq_layout(model: Any) -> QdqSummary:
    """Check the layout TensorRT expects: int8 and zero point 0 everywhere, per-channel scales on weights only.

    A violation is a bug in how reparam called the quantizer, hence an InternalError.
    """
    inits = {i.name for i in model.graph.initializer}
    counts = Counter(n.op_type for n in model.graph.node)
    per_channel = per_tensor = 0
    for node in model.graph.node:
        if node.op_type not in QDQ_OPS:
            continue
        if len(node.input) < 3 or node.input[2] not in inits:
            raise InternalError(f"{node.name} has no constant zero point")
        zero = _initializer(model, node.input[2])
        scale = _initializer(model, node.input[1])
        if zero is None or scale is None or zero.dtype != np.int8 or np.any(zero != 0):
            raise InternalError(f"{node.name}: zero point is not int8 zero ({zero!r})")
        if scale.size > 1:
            if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
                raise InternalError(f"{node.name}: a per-channel scale on an activation")
            per_channel += 1
        elif node.op_type == "QuantizeLinear":
            per_tensor += 1
    return QdqSummary(counts["QuantizeLinear"], counts["DequantizeLinear"], per_channel, per_tensor)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The quantizer prints histogram settings and logs a pre-processing advice on every call."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def _method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    if name not in METHODS:
        raise ReparamError(f"unknown calibration method {name!r}", hint=f"use one of {', '.join(METHODS)}")
    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy}.get(
        name, CalibrationMethod.Percentile
    )


@dataclass
class Calibrated:
    """A float model plus its calibration ranges (cached), ready to be quantized with any exclusion list."""

    model: Path  # the float model, written once (quantize_static alters a ModelProto it is given)
    method: str
    percentile: float
    cache: Path
    samples: int


def quantize_proto(
    calibrated: Calibrated, *, exclude: Sequence[str] = (), only: Sequence[str] | None = None
) -> Any:
    """Run onnxruntime's ``quantize_static`` (QDQ, symmetric int8) on the cached ranges; returns the ModelProto.

    ``exclude`` keeps those nodes float; ``only`` quantizes just those nodes.
    """
    onnx = require("onnx", "onnx", "int8 quantization")
    require("onnxruntime", "onnx", "int8 quantization")
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    extra = {
        "ActivationSymmetric": True,
        "WeightSymmetric": True,
        "QuantizeBias": False,
        "OpTypesToExcludeOutputQuantization": list(WEIGHTED_OPS),
    }
    with tempfile.TemporaryDirectory(prefix="reparam-int8-") as tmp:
        out = Path(tmp) / "model.int8.onnx"
        try:
            with _quiet():
                quantize_static(
                    str(calibrated.model),
                    str(out),
                    None,  # the ranges come from the cache written by calibrate()
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    op_types_to_quantize=list(WEIGHTED_OPS),
                    nodes_to_quantize=list(only) if only is not None else None,
                    nodes_to_exclude=list(exclude),
                    calibrate_method=_method(calibrated.method),
                    extra_options=extra,
                    calibration_cache_path=str(calibrated.cache),
                )
        except ReparamError:
            raise
        except Exception as exc:
            raise ReparamError(
                f"onnxruntime's quantizer failed: {type(exc).__name__}: {str(exc).strip()[:300]}",
                hint="check that the calibration inputs are what the model expects; "
                "`reparam inspect` shows the model's inputs",
            ) from exc
        return onnx.load(str(out))


@contextlib.contextmanager
def calibrate(
    model: Any,
    batches: Sequence[Mapping[str, np.ndarray]],
    method: str = "minmax",
    percentile: float = DEFAULT_PERCENTILE,
) -> Iterator[Calibrated]:
    """Collect the activation ranges of ``model`` over ``batches`` once; yields a Calibrated to quantize from."""

    _method(method)
    if not 50.0 < float(percentile) <= 100.0:
        raise ReparamError(
            f"percentile {percentile} is out of range", hint="use e.g. 99.99 (between 50 and 100)"
        )
    samples = sum(len(next(iter(b.values()))) for b in batches)
    onnx = require("onnx", "onnx", "int8 quantization")
    with tempfile.TemporaryDirectory(prefix="reparam-calib-") as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save_model(model, str(path))
        cal = Calibrated(path, method, float(percentile), Path(tmp) / "ranges.json", samples)
        _collect_ranges(cal, make_reader(batches), Path(tmp))
        yield cal


def _collect_ranges(cal: Calibrated, reader: Any, workdir: Path) -> None:
    """Run the calibrator and store its ranges where ``quantize_static`` reads its cache."""
    from onnxruntime.quantization import create_calibrator
    from onnxruntime.quantization.calibrate import save_tensors_data

    # onnxruntime's entropy default (128 bins for 128 quantized bins) leaves a single candidate
    # threshold, i.e. min-max; 2048 bins is the histogram TensorRT's entropy calibrator uses.
    options = {
        "minmax": {"symmetric": True},
        "entropy": {"symmetric": True, "num_bins": 2048, "num_quantized_bins": 128},
        "percentile": {"symmetric": True, "num_bins": 2048, "percentile": cal.percentile},
    }[cal.method]
    try:
        with _quiet():
            calibrator = create_calibrator(
                cal.model,
                list(WEIGHTED_OPS),
                augmented_model_path=str(workdir / "augmented.onnx"),
                calibrate_method=_method(cal.method),
                extra_options=options,
            )
            calibrator.collect_data(reader)
            ranges = calibrator.compute_data()
    except Exception as exc:
        raise ReparamError(
            f"calibration failed: {type(exc).__name__}: {str(exc).strip()[:300]}",
            hint="check that the calibration inputs are what the model expects",
        ) from exc
    save_tensors_data(ranges, cal.cache)
