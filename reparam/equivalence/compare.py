"""Compare dicts of named outputs (reference vs one candidate) and judge them against a tolerance."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from reparam.equivalence.metrics import OutputMetrics, compute_metrics
from reparam.equivalence.tolerance import Tolerance, judge, make_tolerance

Outputs = Mapping[str, np.ndarray | Sequence[np.ndarray]]


@dataclass
class OutputResult:
    """Metrics and verdict for one named output."""

    name: str
    metrics: OutputMetrics
    reasons: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.reasons

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "passed": self.passed,
            "reasons": list(self.reasons),
            **self.metrics.to_dict(),
        }


@dataclass
class BlockError:
    """Error of one block's output (training-form block vs its fused counterpart)."""

    name: str
    scale_rel: float
    cosine: float
    max_abs: float
    passed: bool
    ref_noise: float | None = None

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "scale_rel": self.scale_rel,
            "cosine": self.cosine,
            "max_abs": self.max_abs,
            "ref_noise": self.ref_noise,
            "passed": self.passed,
        }


@dataclass
class Divergence:
    """Per-block errors in execution order and the first block that exceeds the tolerance."""

    blocks: list[BlockError] = field(default_factory=list)
    first_diverging: str | None = None
    note: str = ""

    def innermost_failing(self) -> list[str]:
        """Failing blocks in execution order, each only if none of its children fails (they explain it)."""
        bad = [b.name for b in self.blocks if not b.passed]
        return [p for p in bad if not any(q != p and q.startswith(p + ".") for q in bad)]

    def to_dict(self) -> dict:
        return {
            "first_diverging_block": self.first_diverging,
            "note": self.note,
            "blocks": [b.to_dict() for b in self.blocks],
        }


@dataclass
class CandidateResult:
    """Verdict for one candidate (deploy model, .pt2, ONNX file or TensorRT engine)."""

    name: str
    kind: str
    outputs: dict[str, OutputResult] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    divergence: Divergence | None = None
    tolerance: str | None = None

    @property
    def passed(self) -> bool:
        return not self.problems and all(o.passed for o in self.outputs.values())

    def failure_summary(self) -> list[str]:
        """One line per problem or failing output."""
        lines = list(self.problems)
        for o in self.outputs.values():
            lines.extend(f"{o.name}: {r}" for r in o.reasons)
        if lines and self.divergence and self.divergence.first_diverging:
            lines.append(f"first diverging block: {self.divergence.first_diverging}")
        return lines

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "tolerance": self.tolerance,
            "passed": self.passed,
            "problems": list(self.problems),
            "outputs": [o.to_dict() for o in self.outputs.values()],
            "divergence": self.divergence.to_dict() if self.divergence else None,
        }


def _batches(value: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    return [value] if isinstance(value, np.ndarray) else list(value)


def compare_outputs(
    reference: Outputs,
    candidate: Outputs,
    tolerance: str | Tolerance = "fp32",
    *,
    name: str = "candidate",
    kind: str = "unknown",
    noise: Mapping[str, float] | None = None,
) -> CandidateResult:
    """Compare every reference output with the candidate's output of the same name.

    Values are arrays or lists of per-batch arrays. Missing outputs and shape mismatches are
    problems (the candidate fails); extra candidate outputs are ignored. ``noise`` holds the
    reference's fp32 noise floor per output (see ``ToleranceProfile.noise_multiple``).
    """
    tol = make_tolerance(tolerance)
    result = CandidateResult(name=name, kind=kind, tolerance=tol.profile.name)
    for out_name, ref_value in reference.items():
        if out_name not in candidate:
            result.problems.append(
                f"output {out_name!r} missing from the candidate (it has: {', '.join(sorted(candidate)) or 'none'})"
            )
            continue
        atol, rtol = tol.elementwise(out_name)
        try:
            metrics = compute_metrics(
                _batches(ref_value), _batches(candidate[out_name]), atol=atol, rtol=rtol
            )
        except ValueError as exc:
            result.problems.append(f"output {out_name!r}: {exc}")
            continue
        if noise and out_name in noise:
            metrics.ref_noise = noise[out_name]
        result.outputs[out_name] = OutputResult(out_name, metrics, judge(metrics, tol, out_name))
    return result
