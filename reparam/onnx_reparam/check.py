"""Check a rewritten ONNX file against the file it came from, in ONNX Runtime.

Inputs are random (seeded) over every free axis: one run at the base sizes and one per free axis
with that axis changed, so a fused node that is right at one size only is caught. On a failure the
first tensor of the input graph whose value differs is named.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reparam.equivalence import CandidateResult, judge_outputs
from reparam.errors import ReparamError
from reparam.runners.base import TensorSpec
from reparam.runners.onnxruntime_runner import OnnxRuntimeRunner

Feeds = dict[str, np.ndarray]
# sizes for a free axis: (base, other); the batch axis is small, other axes odd to test rounding
BATCH_SIZES = (2, 3)
SPATIAL_SIZES = (64, 57)


@dataclass
class OnnxCheck:
    """The verdict of one candidate over every input set, and where it first diverged."""

    result: CandidateResult
    input_shapes: list[dict[str, list[int]]] = field(default_factory=list)
    first_diverging: str | None = None
    skipped: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.result.passed

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.result.to_dict(),
            "input_shapes": self.input_shapes,
            "first_diverging_tensor": self.first_diverging,
            "skipped": list(self.skipped),
        }


def _random(spec: TensorSpec, shape: list[int], rng: np.random.Generator) -> np.ndarray:
    dtype = spec.dtype if spec.dtype is not None else np.dtype(np.float32)
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, shape).astype(bool)
    return rng.integers(0, 10, shape).astype(dtype)


def _axis_key(spec: TensorSpec, axis: int) -> str | tuple[str, int]:
    """Axes named alike (the same dim_param) are one free size; unnamed ones are their own."""
    dim = spec.shape[axis]
    return dim if isinstance(dim, str) and dim else (spec.name, axis)


def random_feeds(specs: Sequence[TensorSpec], seed: int = 0) -> list[Feeds]:
    """Input sets covering every free axis: the base sizes, then each free size changed alone."""
    if any(s.shape is None for s in specs):
        raise ReparamError(
            "an input of the ONNX file has no known rank", hint="pass the inputs explicitly (inputs=...)"
        )
    free = {}
    for s in specs:
        for i, d in enumerate(s.shape):
            if not isinstance(d, int):
                free.setdefault(_axis_key(s, i), i == 0)
    rng = np.random.default_rng(seed)
    feeds = []
    for changed in [None, *free]:
        feed = {}
        for spec in specs:
            shape = []
            for i, d in enumerate(spec.shape):
                key = _axis_key(spec, i)
                sizes = BATCH_SIZES if free.get(key) else SPATIAL_SIZES
                shape.append(d if isinstance(d, int) else sizes[1 if key == changed else 0])
            feed[spec.name] = _random(spec, shape, rng)
        feeds.append(feed)
    return feeds


def _run(runner: OnnxRuntimeRunner, feed: Feeds) -> dict[str, np.ndarray] | str:
    try:
        return runner.run(feed)
    except ReparamError:
        raise
    except Exception as exc:  # ONNX Runtime rejects a size the model cannot take
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"


def check_onnx(
    reference: str | os.PathLike,
    candidate: str | os.PathLike,
    *,
    tolerance: Any = "fp32",
    inputs: Sequence[Mapping[str, np.ndarray]] | None = None,
    seed: int = 0,
) -> OnnxCheck:
    """Run both files on the same inputs and judge the candidate's outputs against the reference's."""
    ref_runner, cand_runner = OnnxRuntimeRunner(reference), OnnxRuntimeRunner(candidate)
    feeds = [dict(f) for f in inputs] if inputs else random_feeds(ref_runner.input_specs, seed)
    ref_out: dict[str, list[np.ndarray]] = {}
    cand_out: dict[str, list[np.ndarray]] = {}
    check = OnnxCheck(CandidateResult(os.fspath(candidate), "onnx"))
    used = []
    for feed in feeds:
        shapes = {k: list(v.shape) for k, v in feed.items()}
        ref = _run(ref_runner, feed)
        if isinstance(ref, str):
            check.skipped.append(f"the reference does not run on {shapes}: {ref}")
            continue
        cand = _run(cand_runner, feed)
        if isinstance(cand, str):
            check.result.problems.append(f"the candidate fails on {shapes}: {cand}")
            continue
        used.append(feed)
        check.input_shapes.append(shapes)
        for name, value in ref.items():
            ref_out.setdefault(name, []).append(value)
            cand_out.setdefault(name, []).append(cand.get(name, np.zeros(0)))
    if len(check.skipped) == len(feeds):
        raise ReparamError(
            "the reference ONNX file runs on none of the generated inputs: " + "; ".join(check.skipped),
            hint="give inputs that fit the model (inputs=...)",
        )
    from reparam.onnx_reparam.noise import reference_noise

    def noise():  # called only when an output exceeds the profile's fixed limit
        return reference_noise(reference, used, ref_out)

    verdict = judge_outputs(ref_out, cand_out, tolerance, name=os.fspath(candidate), kind="onnx", noise=noise)
    verdict.problems[:0] = check.result.problems
    check.result = verdict
    if not verdict.passed and used:
        from reparam.onnx_reparam.localize import first_diverging_tensor

        check.first_diverging = first_diverging_tensor(reference, candidate, used, tolerance)
    return check
