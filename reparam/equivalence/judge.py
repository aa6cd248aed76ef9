"""The one judge of outputs: torch output structures and named numpy arrays alike, batch by batch.

A candidate's outputs are accumulated output by output (:class:`OutputJudge`, constant memory in
the number of batches) and judged with a :class:`~reparam.equivalence.tolerance.Tolerance`. The
reference's fp32 noise floor may be given per output, or as a function called only when an output
exceeds the profile's fixed scale-relative limit (a float64 run costs as much as the model).
The conversion's built-in check, ``expand``, the verifier, golden results and quantization all
judge through here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from reparam.equivalence.compare import CandidateResult, OutputResult
from reparam.equivalence.metrics import MetricsAccumulator, OutputMetrics
from reparam.equivalence.tolerance import Tolerance, ToleranceProfile, judge, make_tolerance
from reparam.tensors import output_names, tensor_leaves, to_numpy

Outputs = Mapping[str, np.ndarray | Sequence[np.ndarray]]
Noise = Mapping[str, float] | float | None
NoiseSource = Noise | Callable[[], Noise]


def _is_array_list(value: Any) -> bool:
    return isinstance(value, list | tuple) and all(isinstance(v, np.ndarray) for v in value)


def named_outputs(value: Any) -> dict[str, list[np.ndarray]]:
    """``{output name: per-batch arrays}`` of named numpy outputs or of a torch output structure.

    Torch outputs (a tensor, tuple, dict) are named by position, "output" / "output0", "output1", ...
    (the runners' convention).
    """
    if isinstance(value, np.ndarray):
        return {"output": [value]}
    if isinstance(value, Mapping) and all(
        isinstance(v, np.ndarray) or _is_array_list(v) for v in value.values()
    ):
        return {str(k): [v] if isinstance(v, np.ndarray) else list(v) for k, v in value.items()}
    leaves = tensor_leaves(value)
    return {n: [to_numpy(t)] for n, t in zip(output_names(len(leaves)), leaves)}


class OutputJudge:
    """Judges one candidate against the reference, one batch of named outputs at a time."""

    def __init__(
        self,
        tolerance: str | ToleranceProfile | Tolerance = "fp32",
        *,
        name: str = "candidate",
        kind: str = "unknown",
    ) -> None:
        self.tolerance = make_tolerance(tolerance)
        self.name, self.kind = name, kind
        self.accumulators: dict[str, MetricsAccumulator] = {}
        self.problems: dict[str, str] = {}

    def add(self, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]) -> float:
        """Add one batch; returns its badness (largest scale-relative error, inf for NaN/Inf)."""
        worst = 0.0
        for out_name, ref in reference.items():
            if out_name not in candidate:
                have = ", ".join(sorted(candidate)) or "none"
                self.problem(out_name, f"output {out_name!r} missing from the candidate (it has: {have})")
                continue
            worst = max(worst, self.add_output(out_name, ref, candidate[out_name]))
        return worst

    def add_output(self, out_name: str, reference: np.ndarray, candidate: np.ndarray) -> float:
        """Add one batch of one output; a shape mismatch becomes a problem of the candidate."""
        if out_name in self.problems:
            return math.inf
        if out_name not in self.accumulators:
            atol, rtol = self.tolerance.elementwise(out_name)
            self.accumulators[out_name] = MetricsAccumulator(atol=atol, rtol=rtol)
        try:
            return self.accumulators[out_name].add(reference, candidate)
        except ValueError as exc:
            self.problem(out_name, f"output {out_name!r}: {exc}")
            return math.inf

    def problem(self, out_name: str, text: str) -> None:
        self.problems.setdefault(out_name, text)

    def result(self, noise: NoiseSource = None) -> CandidateResult:
        """The verdict over every batch added; ``noise`` as in :func:`judge_outputs`."""
        tol = self.tolerance
        metrics = {n: a.result() for n, a in self.accumulators.items() if n not in self.problems}
        apply_noise(metrics, noise, tol.profile)
        result = CandidateResult(self.name, self.kind, tolerance=tol.profile.name)
        result.problems = list(self.problems.values())
        for n, m in metrics.items():
            result.outputs[n] = OutputResult(n, m, judge(m, tol, n), tol.profile.scale_rel_limit(m.ref_noise))
        return result


def _needs_noise(metrics: Mapping[str, OutputMetrics], profile: ToleranceProfile) -> bool:
    limit = profile.max_scale_rel
    if profile.noise_multiple is None or limit is None:
        return False
    return any(
        math.isfinite(m.scale_rel) and m.scale_rel > limit and not m.nonfinite for m in metrics.values()
    )


def apply_noise(metrics: Mapping[str, OutputMetrics], noise: NoiseSource, profile: ToleranceProfile) -> None:
    """Set each output's ``ref_noise``; a callable ``noise`` is called only when it can change a verdict."""
    if callable(noise):
        noise = noise() if _needs_noise(metrics, profile) else None
    for n, m in metrics.items():
        value = noise.get(n) if isinstance(noise, Mapping) else noise
        if value is not None:
            m.ref_noise = float(value)


def judge_outputs(
    reference: Any,
    candidate: Any,
    tolerance: str | ToleranceProfile | Tolerance = "fp32",
    *,
    name: str = "candidate",
    kind: str = "unknown",
    noise: NoiseSource = None,
) -> CandidateResult:
    """Judge a candidate's outputs against the reference's.

    Both are torch output structures (tensor, tuple, dict) or ``{name: array or per-batch arrays}``.
    Missing outputs and shape mismatches are problems (the candidate fails); extra candidate outputs
    are ignored. ``noise``: the reference's fp32 noise floor per output, one value for all, or a
    function returning either, called only when an output exceeds the fixed scale-relative limit.
    """
    ref, cand = named_outputs(reference), named_outputs(candidate)
    verdict = OutputJudge(tolerance, name=name, kind=kind)
    for out_name, ref_batches in ref.items():
        if out_name not in cand:
            verdict.add({out_name: ref_batches[0]}, {})
        elif len(cand[out_name]) != len(ref_batches):
            got = len(cand[out_name])
            verdict.problem(
                out_name,
                f"output {out_name!r}: {len(ref_batches)} reference batches vs {got} candidate batches",
            )
        else:
            for r, c in zip(ref_batches, cand[out_name]):
                verdict.add_output(out_name, r, c)
    return verdict.result(noise)


compare_outputs = judge_outputs  # the name the verifier's callers know
