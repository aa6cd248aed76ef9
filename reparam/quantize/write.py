"""``quantize``: a float ONNX file in, its Q/DQ int8 copy out, optionally repaired to a target."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reparam.errors import ReparamError
from reparam.exporters.onnx.save import save_onnx
from reparam.quantize.calib import load_calibration, onnx_input_specs
from reparam.quantize.qdq import (
    DEFAULT_PERCENTILE,
    META_KEY,
    calibrate,
    check_float_model,
    check_qdq_layout,
    load_onnx,
    module_of,
    name_nodes,
    quantize_proto,
    weighted_layers,
)
from reparam.quantize.sensitivity import repair


@dataclass
class QuantizeResult:
    """What ``quantize`` wrote."""

    path: Path | None
    method: str
    calibration_samples: int
    layers: list[str]  # weighted nodes with int8 weights
    excluded: list[str]  # weighted nodes kept float
    qdq_nodes: int
    metadata: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    repair: Any = None  # a sensitivity.RepairResult when a repair target was given

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path) if self.path else None,
            "method": self.method,
            "calibration_samples": self.calibration_samples,
            "int8_layers": list(self.layers),
            "float_layers": list(self.excluded),
            "qdq_nodes": self.qdq_nodes,
            "seconds": round(self.seconds, 3),
            "repair": self.repair.to_dict() if self.repair is not None else None,
        }


def _finish(qmodel: Any, source: Any, info: Mapping[str, Any]) -> dict[str, str]:
    """Copy the source's provenance onto the quantized model and add the quantization record."""
    props = {p.key: p.value for p in source.metadata_props}
    props.update({p.key: p.value for p in qmodel.metadata_props if p.key not in props})
    props["reparam.precision"] = "int8"
    props[META_KEY] = json.dumps(dict(info), sort_keys=True)
    del qmodel.metadata_props[:]
    for k, v in props.items():
        e = qmodel.metadata_props.add()
        e.key, e.value = k, v
    return props


def quantize(
    model_path: str | os.PathLike,
    output: str | os.PathLike,
    calib: str | os.PathLike | Sequence[Mapping[str, np.ndarray]],
    *,
    method: str = "minmax",
    percentile: float = DEFAULT_PERCENTILE,
    exclude: Sequence[str] = (),
    batch_size: int = 8,
    max_samples: int | None = None,
    repair_target: float | None = None,
    repair_data: Sequence[Mapping[str, np.ndarray]] | None = None,
    max_float: int | None = None,
) -> QuantizeResult:
    """Write a Q/DQ int8 copy of the float ONNX at ``model_path`` to ``output`` (atomically).

    ``calib``: an ``.npz`` or in-memory batches (see ``reparam.quantize.calib``); ``method``: minmax,
    entropy or percentile; ``exclude``: node names (or module paths, see ``resolve_layers``) kept
    float. The result passes ``onnx.checker``, keeps the source's ``reparam.*`` metadata and
    records the settings under ``reparam.quantization``. Nothing is written on any error.

    ``repair_target``: top-1 agreement with the float model to reach on ``repair_data`` (default:
    the calibration batches); the most int8-sensitive layers are then kept float as well, at most
    ``max_float`` of them (see ``reparam.quantize.sensitivity.repair``).
    """
    start = time.perf_counter()
    src = Path(model_path)
    if Path(output).resolve() == src.resolve():
        raise ReparamError(
            "the int8 output would overwrite its input", hint="write it to another path, e.g. model.int8.onnx"
        )
    model = load_onnx(src)
    check_float_model(model, src.name)
    name_nodes(model)
    layers = weighted_layers(model)
    excluded = resolve_layers(layers, exclude)
    batches = load_calibration(calib, onnx_input_specs(model), batch_size=batch_size, max_samples=max_samples)
    repaired = None
    with calibrate(model, batches, method, percentile) as cal:
        if repair_target is not None:
            rest = {n: w for n, w in layers.items() if n not in excluded}
            search = batches if repair_data is None else repair_data
            repaired = repair(
                cal, model, rest, search, target=repair_target, max_float=max_float, keep=excluded
            )
            excluded = [*excluded, *repaired.excluded]
        qmodel = quantize_proto(cal, exclude=excluded)
    summary = check_qdq_layout(qmodel)
    info = {
        "method": method,
        "percentile": percentile if method == "percentile" else None,
        "calibration_samples": cal.samples,
        "weights": "int8 symmetric per-channel (axis 0)",
        "activations": "int8 symmetric per-tensor",
        "float_layers": list(excluded),
        "source": src.name,
    }
    meta = _finish(qmodel, model, info)
    save_onnx(qmodel, output)
    return QuantizeResult(
        path=Path(output),
        method=method,
        calibration_samples=cal.samples,
        layers=[n for n in layers if n not in excluded],
        excluded=list(excluded),
        qdq_nodes=summary.quantize + summary.dequantize,
        metadata=meta,
        seconds=time.perf_counter() - start,
        repair=repaired,
    )


def resolve_layers(layers: Mapping[str, str], names: Sequence[str]) -> list[str]:
    """Map node names or module paths (``stage2.1.rbr_dense``) to node names; unknown ones are an error."""
    by_module = {module_of(w): n for n, w in layers.items()}
    out: list[str] = []
    for name in names:
        node = name if name in layers else by_module.get(name)
        if node is None:
            shown = ", ".join(list(by_module)[:8])
            raise ReparamError(
                f"no quantizable layer named {name!r}",
                hint=f"name a Conv/Gemm node or its module, e.g. {shown}",
            )
        if node not in out:
            out.append(node)
    return out
