"""Error metrics between a reference output and a candidate output.

All metrics are computed in float64 over the finite elements both arrays share; non-finite values
in the candidate where the reference is finite are counted separately (they always fail).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from reparam.errors import ReparamError
from reparam.numerics import scale_relative_error
from reparam.tensors import tensor_leaves

# An element takes part in the relative-error metric only when |ref| exceeds this fraction of
# max|ref|: relative error of near-zero elements measures nothing but the noise floor.
NEAR_ZERO_FRACTION = 1e-3


@dataclass
class OutputMetrics:
    """Comparison of one named output (all batches together)."""

    shape: tuple[int, ...]
    num_elements: int
    ref_max_abs: float
    max_abs: float
    scale_rel: float
    mean_abs: float
    p99_abs: float
    max_rel: float
    cosine: float
    top1: float | None
    nonfinite: int
    ref_nonfinite: int
    # Elements failing a Polygraphy-style check (|d| > atol AND |d| > rtol*|ref|); None when unused.
    elementwise_failures: int | None = None
    # The reference's own fp32 rounding error: scale-relative error of the fp32 reference against
    # the same reference run in float64 (None when not measured).
    ref_noise: float | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return {k: _json_float(v) for k, v in d.items()}


def _json_float(v):
    if isinstance(v, float) and not np.isfinite(v):
        return str(v)
    return v


def _as_float64(arrays: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    if isinstance(arrays, np.ndarray):
        arrays = [arrays]
    return [np.asarray(a, dtype=np.float64) for a in arrays]


def _stacked_shape(arrays: list[np.ndarray]) -> tuple[int, ...]:
    """Shape of the batches concatenated along axis 0 (the first batch's shape if they do not stack)."""
    first = arrays[0]
    if len(arrays) > 1 and first.ndim >= 1 and all(a.shape[1:] == first.shape[1:] for a in arrays):
        return (sum(a.shape[0] for a in arrays), *first.shape[1:])
    return first.shape


def top1_agreement(reference: np.ndarray, candidate: np.ndarray) -> float | None:
    """Fraction of rows whose argmax agrees, for classifier outputs of shape (N, C) with C > 1."""
    if reference.ndim != 2 or reference.shape[1] < 2 or reference.shape[0] == 0:
        return None
    ref_idx = np.argmax(reference, axis=1)
    cand = np.where(np.isfinite(candidate), candidate, -np.inf)
    return float(np.mean(ref_idx == np.argmax(cand, axis=1)))


def cosine_similarity(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Cosine of the angle between the flattened arrays (1.0 when both are all zero)."""
    a = reference.reshape(-1)
    b = candidate.reshape(-1)
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.clip(np.dot(a, b) / (na * nb), -1.0, 1.0))


def compute_metrics(
    reference: np.ndarray | Sequence[np.ndarray],
    candidate: np.ndarray | Sequence[np.ndarray],
    *,
    atol: float | None = None,
    rtol: float | None = None,
) -> OutputMetrics:
    """Compare one output; ``reference``/``candidate`` may be one array or a list of per-batch arrays.

    Raises ValueError when the shapes differ.
    """
    refs, cands = _as_float64(reference), _as_float64(candidate)
    if len(refs) != len(cands):
        raise ValueError(f"{len(refs)} reference batches vs {len(cands)} candidate batches")
    for r, c in zip(refs, cands):
        if r.shape != c.shape:
            raise ValueError(f"shape mismatch: reference {r.shape} vs candidate {c.shape}")
    shape = _stacked_shape(refs)
    top1_parts = [top1_agreement(r, c) for r, c in zip(refs, cands)]
    rows = [r.shape[0] for r in refs]
    if all(t is not None for t in top1_parts):
        top1 = float(sum(t * n for t, n in zip(top1_parts, rows)) / max(sum(rows), 1))
    else:
        top1 = None

    ref = np.concatenate([r.reshape(-1) for r in refs])
    cand = np.concatenate([c.reshape(-1) for c in cands])
    ref_finite = np.isfinite(ref)
    cand_finite = np.isfinite(cand)
    nonfinite = int(np.count_nonzero(ref_finite & ~cand_finite))
    both = ref_finite & cand_finite
    r, c = ref[both], cand[both]
    if r.size == 0:
        nan = float("nan")
        return OutputMetrics(
            shape,
            int(ref.size),
            nan,
            nan,
            nan,
            nan,
            nan,
            nan,
            nan,
            top1,
            nonfinite,
            int(np.count_nonzero(~ref_finite)),
        )
    diff = np.abs(r - c)
    ref_max = float(np.max(np.abs(r)))
    significant = np.abs(r) > NEAR_ZERO_FRACTION * ref_max
    max_rel = float(np.max(diff[significant] / np.abs(r[significant]))) if np.any(significant) else 0.0
    elementwise = None
    if atol is not None or rtol is not None:
        elementwise = count_elementwise_failures(r, c, atol=atol, rtol=rtol)
    return OutputMetrics(
        shape=tuple(int(s) for s in shape),
        num_elements=int(ref.size),
        ref_max_abs=ref_max,
        max_abs=float(np.max(diff)),
        scale_rel=scale_relative_error(r, c),
        mean_abs=float(np.mean(diff)),
        p99_abs=float(np.percentile(diff, 99)),
        max_rel=max_rel,
        cosine=cosine_similarity(r, c),
        top1=top1,
        nonfinite=nonfinite,
        ref_nonfinite=int(np.count_nonzero(~ref_finite)),
        elementwise_failures=elementwise,
    )


# Polygraphy's default when only one of atol / rtol is given.
DEFAULT_ELEMENTWISE_TOL = 1e-5


def count_elementwise_failures(
    reference: np.ndarray, candidate: np.ndarray, *, atol: float | None, rtol: float | None
) -> int:
    """Elements where ``|d| > atol`` AND ``|d| > rtol * |ref|`` (Polygraphy semantics)."""
    atol = DEFAULT_ELEMENTWISE_TOL if atol is None else atol
    rtol = DEFAULT_ELEMENTWISE_TOL if rtol is None else rtol
    diff = np.abs(np.asarray(reference, np.float64) - np.asarray(candidate, np.float64))
    bad = (diff > atol) & (diff > rtol * np.abs(reference))
    return int(np.count_nonzero(bad))


@dataclass
class ErrorSummary:
    """Largest errors over every output tensor of a model: absolute, scale-relative, and max|ref|."""

    max_abs: float
    scale_rel: float
    ref_max_abs: float


def output_error(reference: Any, candidate: Any) -> ErrorSummary:
    """Errors of a model output (tensor, tuple, dict) against the reference output of the same structure.

    A shape mismatch is an infinite error; a different number of output tensors is a ReparamError.
    """
    refs, cands = tensor_leaves(reference), tensor_leaves(candidate)
    if len(refs) != len(cands):
        raise ReparamError(
            f"the candidate returns {len(cands)} tensors, the reference {len(refs)}",
            hint="report this model: the conversion changed its outputs",
        )
    summary = ErrorSummary(0.0, 0.0, 0.0)
    for r, c in zip(refs, cands):
        if r.shape != c.shape:
            return ErrorSummary(float("inf"), float("inf"), float("nan"))
        r64, c64 = r.detach().double().cpu(), c.detach().double().cpu()
        if not r64.numel():
            continue
        rel = scale_relative_error(r64.numpy(), c64.numpy())
        diff = float((r64 - c64).abs().nan_to_num(nan=float("inf")).max())
        finite = r64[torch.isfinite(r64)]
        summary.max_abs = max(summary.max_abs, float("inf") if rel == float("inf") else diff)
        summary.ref_max_abs = max(summary.ref_max_abs, float(finite.abs().max()) if finite.numel() else 0.0)
        summary.scale_rel = max(summary.scale_rel, rel)
    return summary
