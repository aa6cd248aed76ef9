"""Verdicts: one output, one block, one candidate (see :mod:`reparam.equivalence.judge` for the judge)."""

from __future__ import annotations

from dataclasses import dataclass, field

from reparam.equivalence.metrics import OutputMetrics


@dataclass
class OutputResult:
    """Metrics and verdict for one named output."""

    name: str
    metrics: OutputMetrics
    reasons: list[str] = field(default_factory=list)
    limit: float | None = None  # the scale-relative limit applied (None: the profile has none)

    @property
    def passed(self) -> bool:
        return not self.reasons

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "passed": self.passed,
            "reasons": list(self.reasons),
            "limit": self.limit,
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

    def worst(self) -> OutputResult | None:
        """The output with the largest error (NaN/Inf problems first); None without outputs."""
        return max(self.outputs.values(), key=lambda o: o.metrics.badness(), default=None)

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
