"""Per-layer int8 sensitivity and repair: keep the layers int8 hurts most in float until a target is met.

Sensitivity of a layer: quantize only that layer (its weights and input activations), run the model
on ONNX Runtime and compare the output with the float model's using the verifier's metrics; the
damage is ``1 - cosine``. Repair: quantize everything; while the ``int8`` profile (with the user's
top-1 agreement target) fails, keep the next most sensitive layer float and quantize again. The
calibration ranges are collected once and reused for every variant.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from reparam.equivalence.metrics import OutputMetrics, compute_metrics
from reparam.equivalence.tolerance import judge
from reparam.quantize.evaluate import int8_tolerance
from reparam.quantize.qdq import Calibrated, module_of, quantize_proto

Batch = Mapping[str, np.ndarray]
Outputs = dict[str, list[np.ndarray]]


@dataclass
class LayerSensitivity:
    """Output error when only this layer is int8."""

    node: str
    module: str
    cosine: float
    top1: float | None
    scale_rel: float

    @property
    def damage(self) -> float:
        return 1.0 - self.cosine

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "damage": self.damage}


@dataclass
class RepairStep:
    """The model quantized with ``float_layers`` kept float, and how it compares with the float model."""

    float_layers: list[str]
    cosine: float
    top1: float | None
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RepairResult:
    """Sensitivity ranking, the steps taken, and the exclusion list that met (or failed) the target."""

    target: float
    layers: int
    sensitivity: list[LayerSensitivity] = field(default_factory=list)
    steps: list[RepairStep] = field(default_factory=list)

    @property
    def excluded(self) -> list[str]:
        return list(self.steps[-1].float_layers) if self.steps else []

    @property
    def met(self) -> bool:
        return bool(self.steps) and self.steps[-1].passed

    def cost(self) -> str:
        n = len(self.excluded)
        return f"{n} of {self.layers} quantizable layers kept float ({100.0 * n / max(self.layers, 1):.0f}%)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "target_top1": self.target,
            "met": self.met,
            "float_layers": self.excluded,
            "cost": self.cost(),
            "sensitivity": [s.to_dict() for s in self.sensitivity],
            "steps": [s.to_dict() for s in self.steps],
        }


def run_onnx(model: Any, batches: Sequence[Batch]) -> Outputs:
    """Run a ModelProto on ONNX Runtime's CPU provider; ``{output name: [array per batch]}``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    wanted = [i.name for i in sess.get_inputs()]
    out: Outputs = {n: [] for n in names}
    for batch in batches:
        for n, v in zip(names, sess.run(names, {k: batch[k] for k in wanted})):
            out[n].append(np.asarray(v))
    return out


def first_metrics(reference: Outputs, candidate: Outputs) -> OutputMetrics:
    """Verifier metrics of the first output (the logits of a classifier)."""
    name = next(iter(reference))
    return compute_metrics(reference[name], candidate[name])


def layer_sensitivity(
    cal: Calibrated, layers: Mapping[str, str], batches: Sequence[Batch], reference: Outputs
) -> list[LayerSensitivity]:
    """One entry per layer of ``layers`` (``{node: weight}``), most damaging first."""
    result = []
    for node, weight in layers.items():
        m = first_metrics(reference, run_onnx(quantize_proto(cal, only=[node]), batches))
        result.append(LayerSensitivity(node, module_of(weight), m.cosine, m.top1, m.scale_rel))
    return sorted(result, key=lambda s: (-s.damage, s.top1 if s.top1 is not None else 1.0))


def _step(
    cal: Calibrated, excluded: list[str], batches, reference: Outputs, tolerance, keep: Sequence[str]
) -> RepairStep:
    m = first_metrics(reference, run_onnx(quantize_proto(cal, exclude=[*keep, *excluded]), batches))
    ok = not judge(m, tolerance, next(iter(reference)))
    return RepairStep(list(excluded), m.cosine, m.top1, ok)


def repair(
    cal: Calibrated,
    model: Any,
    layers: Mapping[str, str],
    batches: Sequence[Batch],
    *,
    target: float = 0.99,
    max_float: int | None = None,
    keep: Sequence[str] = (),
) -> RepairResult:
    """Keep the most sensitive layers float until the int8 profile with top-1 ``target`` passes on ``batches``.

    ``model`` is the float ModelProto (its outputs are the reference); ``max_float`` caps how many
    layers may stay float (None: all of them if needed); ``keep`` are nodes the caller keeps float
    anyway (not counted, not in the result's list).
    """

    tolerance = int8_tolerance(target)
    reference = run_onnx(model, batches)
    result = RepairResult(target, len(layers))
    result.steps.append(_step(cal, [], batches, reference, tolerance, keep))
    if result.met:
        return result
    result.sensitivity = layer_sensitivity(cal, layers, batches, reference)
    limit = len(layers) if max_float is None else min(max_float, len(layers))
    excluded: list[str] = []
    for s in result.sensitivity[:limit]:
        excluded.append(s.node)
        result.steps.append(_step(cal, excluded, batches, reference, tolerance, keep))
        if result.met:
            break
    return result
