"""Verify a Q/DQ model against the unfused training model with the verifier's ``int8`` profile.

The verifier does the comparison (top-1 agreement, cosine, per-block errors through the
``reparam.boundaries`` metadata the Q/DQ file keeps); this module only adds the accuracy of each
model when labels are given, read from the outputs the verifier's runs produced.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from reparam.equivalence.tolerance import PROFILES, Tolerance
from reparam.errors import ReparamError
from reparam.runners import OnnxRuntimeRunner, TorchRunner
from reparam.runners.base import Runner
from reparam.verify.core import Candidate, verify
from reparam.verify.report import VerifyReport

Batch = Mapping[str, np.ndarray]


class RecordingRunner(Runner):
    """Wraps a runner and keeps every output it returns (in call order)."""

    def __init__(self, inner: Runner):
        self.inner = inner
        self.input_names = list(inner.input_names)
        self.output_names = list(inner.output_names)
        self.input_specs = list(getattr(inner, "input_specs", []))
        self.outputs: list[dict[str, np.ndarray]] = []

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.inner.run(inputs)
        self.outputs.append(out)
        return out

    def label(self) -> str:
        return self.inner.label()

    def first_output(self) -> np.ndarray:
        """The first output of every run, concatenated along axis 0."""
        name = next(iter(self.outputs[0]))
        return np.concatenate([o[name] for o in self.outputs])


def int8_tolerance(target: float | None = None) -> Tolerance:
    """The ``int8`` profile, with its top-1 agreement limit replaced by ``target`` when given."""
    profile = PROFILES["int8"]
    if target is not None:
        if not 0.0 < target <= 1.0:
            raise ReparamError(f"agreement target {target} is not in (0, 1]", hint="e.g. `target` 0.99")
        profile = dataclasses.replace(profile, min_top1=float(target))
    return Tolerance(profile)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of ``logits`` (N, C) against integer ``labels`` (N,)."""
    return float(np.mean(np.argmax(logits, axis=1) == labels))


@dataclass
class Int8Verification:
    """The verifier's report for the Q/DQ model (and the float ONNX, if given) plus accuracies."""

    report: VerifyReport
    samples: int
    # top-1 accuracy per model: "training model", "float32 ONNX", "int8 Q/DQ ONNX"
    accuracy: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.report.passed

    def metric(self, candidate: str, name: str) -> float | None:
        """``top1`` / ``cosine`` of the first output of ``candidate`` (None when not measured)."""
        for c in self.report.candidates:
            if c.name == candidate and c.outputs:
                return getattr(next(iter(c.outputs.values())).metrics, name)
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"samples": self.samples, "accuracy": dict(self.accuracy), "report": self.report.to_dict()}


def _onnx_candidate(path: str | os.PathLike, name: str, record: Any, tolerance: Tolerance | None):
    runner = RecordingRunner(OnnxRuntimeRunner(str(path)))
    return Candidate(name, "onnx", runner, record=record, path=str(path), tolerance=tolerance)


def verify_int8(
    reference: nn.Module,
    qdq_path: str | os.PathLike,
    batches: Sequence[Batch],
    *,
    labels: np.ndarray | None = None,
    float_onnx: str | os.PathLike | None = None,
    record: Any = None,
    target: float | None = None,
    reference_name: str = "training model",
    inputs_info: Mapping[str, Any] | None = None,
) -> Int8Verification:
    """Compare the Q/DQ model (and ``float_onnx`` with the fp32 profile) with ``reference`` on ``batches``.

    ``batches`` should be held out from the calibration data. ``labels`` (one per sample, in batch
    order) add each model's accuracy; ``target`` replaces the int8 profile's top-1 agreement limit.
    """

    samples = sum(len(next(iter(b.values()))) for b in batches)
    if labels is not None and len(labels) != samples:
        raise ReparamError(
            f"{len(labels)} labels for {samples} held-out samples", hint="give one label per sample"
        )
    reference.eval()
    ref = Candidate(reference_name, "torch", RecordingRunner(TorchRunner(reference)), reference)
    cands = []
    if float_onnx is not None:
        cands.append(_onnx_candidate(float_onnx, "float32 ONNX", record, Tolerance(PROFILES["fp32"])))
    cands.append(_onnx_candidate(qdq_path, "int8 Q/DQ ONNX", record, None))
    report = verify(
        ref,
        cands,
        batches,
        tolerance=int8_tolerance(target),
        reference_name=reference_name,
        inputs_info=inputs_info,
        quant=False,
    )
    result = Int8Verification(report, samples)
    if labels is not None:
        for label, c in [("training model", ref), *((c.name, c) for c in cands)]:
            if c.runner.outputs:
                result.accuracy[label] = accuracy(c.runner.first_output(), np.asarray(labels))
    return result
