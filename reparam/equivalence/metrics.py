"""Error metrics between a reference output and a candidate output.

All metrics are computed in float64 over the finite elements both arrays share; non-finite values
in the candidate where the reference is finite are counted separately (they always fail), and so
are candidate values that differ from a non-finite reference (NaN must meet NaN, inf the same inf).

Batches are taken one at a time (:class:`MetricsAccumulator`), so a long verification keeps
memory flat in the number of inputs: every metric is exact except ``p99_abs``, read from a
histogram of 64 bins per octave: never below the 99th percentile, at most one bin (1.1 %) above the
nearest-rank value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from reparam.errors import ReparamError
from reparam.tensors import tensor_leaves, to_numpy

# An element takes part in the relative-error metric only when |ref| exceeds this fraction of
# max|ref|: relative error of near-zero elements measures nothing but the noise floor.
NEAR_ZERO_FRACTION = 1e-3
# Resolution of the |ref - cand| histogram behind p99_abs: bins per factor of two.
P99_BINS_PER_OCTAVE = 64


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
    # Candidate values that differ from a NaN/Inf of the reference (a finite value where it has NaN).
    nonfinite_differs: int = 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return {k: _json_float(v) for k, v in d.items()}

    def badness(self) -> float:
        """One number to rank comparisons: scale-relative error, infinite for NaN/Inf problems."""
        if self.nonfinite or self.nonfinite_differs or not math.isfinite(self.scale_rel):
            return math.inf
        return self.scale_rel


def _json_float(v):
    if isinstance(v, float) and not np.isfinite(v):
        return str(v)
    return v


def _as_float64(arrays: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    if isinstance(arrays, np.ndarray):
        arrays = [arrays]
    return [np.asarray(a, dtype=np.float64) for a in arrays]


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
    return _cosine(float(np.dot(a, a)), float(np.dot(b, b)), float(np.dot(a, b)))


def _cosine(aa: float, bb: float, ab: float) -> float:
    na, nb = math.sqrt(aa), math.sqrt(bb)
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.clip(ab / (na * nb), -1.0, 1.0))


class _Histogram:
    """Counts of positive values in log-spaced bins (``P99_BINS_PER_OCTAVE`` per octave) plus zeros."""

    def __init__(self) -> None:
        self.zeros = 0
        self.low = 0
        self.counts = np.zeros(0, dtype=np.int64)

    def add(self, values: np.ndarray) -> None:
        positive = values[values > 0]
        self.zeros += values.size - positive.size
        if not positive.size:
            return
        bins = np.floor(np.log2(positive) * P99_BINS_PER_OCTAVE).astype(np.int64)
        lo, hi = int(bins.min()), int(bins.max())
        if not self.counts.size:
            self.low = lo
        new_low, new_high = min(self.low, lo), max(self.low + self.counts.size - 1, hi)
        grown = np.zeros(new_high - new_low + 1, dtype=np.int64)
        grown[self.low - new_low : self.low - new_low + self.counts.size] = self.counts
        grown[lo - new_low : hi - new_low + 1] += np.bincount(bins - lo)
        self.low, self.counts = new_low, grown

    def quantile(self, q: float) -> float:
        """The upper edge of the bin holding the nearest-rank ``q`` quantile; 0.0 when it falls on zeros."""
        total = self.zeros + int(self.counts.sum())
        rank = math.ceil(q * total)
        if rank <= self.zeros or not self.counts.size:
            return 0.0
        k = int(np.searchsorted(np.cumsum(self.counts), rank - self.zeros))
        return float(2.0 ** ((self.low + k + 1) / P99_BINS_PER_OCTAVE))


class _RelativeFrontier:
    """Exact ``max |d|/|r|`` over the elements with ``|r| > T`` for a threshold T known only at the end.

    Keeps the points no other point beats on both ``|r|`` and ratio (few in practice), dropping
    those at or below a threshold that can only rise. The last batch's points are reduced only when
    another batch comes: a single batch (most judged arrays) is read with one pass, never sorted.
    """

    def __init__(self) -> None:
        self.scale = np.zeros(0)
        self.ratio = np.zeros(0)
        self._pending: tuple[np.ndarray, np.ndarray] | None = None

    def add(self, abs_ref: np.ndarray, diff: np.ndarray, floor: float) -> None:
        self._reduce(floor)
        new = abs_ref > floor
        scale = abs_ref[new]
        self._pending = (scale, diff[new] / scale)

    def _reduce(self, floor: float) -> None:
        """Merge the pending batch into the frontier (a sort of its points above ``floor``)."""
        if self._pending is None:
            return
        scale = np.concatenate([self.scale, self._pending[0]])
        ratio = np.concatenate([self.ratio, self._pending[1]])
        self._pending = None
        keep = scale > floor
        scale, ratio = scale[keep], ratio[keep]
        order = np.argsort(-scale, kind="stable")
        scale, ratio = scale[order], np.maximum.accumulate(ratio[order]) if ratio.size else ratio
        rising = np.ones(ratio.size, dtype=bool)
        rising[1:] = ratio[1:] > ratio[:-1]
        self.scale, self.ratio = scale[rising], ratio[rising]

    def max_above(self, threshold: float) -> float:
        above = np.nonzero(self.scale > threshold)[0]
        best = float(self.ratio[above[-1]]) if above.size else 0.0
        if self._pending is not None:
            scale, ratio = self._pending
            mask = scale > threshold
            if mask.any():
                best = max(best, float(ratio[mask].max()))
        return best


class MetricsAccumulator:
    """:class:`OutputMetrics` of one output over batches added one at a time, in constant memory.

    ``add`` returns the batch's own :meth:`OutputMetrics.badness` (to pick a batch to localize on).
    """

    def __init__(self, *, atol: float | None = None, rtol: float | None = None) -> None:
        self.atol, self.rtol = atol, rtol
        self.shape: tuple[int, ...] | None = None
        self.stacks, self.rows, self.batches = True, 0, 0
        self.top1_hits: float | None = 0.0
        self.num_elements = self.finite_elements = self.nonfinite = self.ref_nonfinite = 0
        self.nonfinite_differs, self.elementwise = 0, 0
        self.ref_max = self.max_abs = self.sum_abs = 0.0
        self.aa = self.bb = self.ab = 0.0
        self.histogram, self.frontier = _Histogram(), _RelativeFrontier()

    def add(self, reference: np.ndarray, candidate: np.ndarray) -> float:
        ref, cand = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
        if ref.shape != cand.shape:
            raise ValueError(f"shape mismatch: reference {ref.shape} vs candidate {cand.shape}")
        self._add_shape(ref, cand)
        ref, cand = ref.reshape(-1), cand.reshape(-1)
        self.num_elements += ref.size
        ref_finite, cand_finite = np.isfinite(ref), np.isfinite(cand)
        if ref_finite.all() and cand_finite.all():  # the common case: no masked copies
            return self._add_finite(ref, cand)
        nonfinite = int(np.count_nonzero(ref_finite & ~cand_finite))
        odd = ~ref_finite
        differs = int(np.count_nonzero(odd)) - int(np.count_nonzero(_same_nonfinite(ref[odd], cand[odd])))
        self.nonfinite += nonfinite
        self.nonfinite_differs += differs
        self.ref_nonfinite += int(np.count_nonzero(odd))
        both = ref_finite & cand_finite
        batch_rel = self._add_finite(ref[both], cand[both])
        return math.inf if nonfinite or differs else batch_rel

    def _add_shape(self, ref: np.ndarray, cand: np.ndarray) -> None:
        if self.shape is None:
            self.shape = ref.shape
        elif ref.ndim == 0 or len(self.shape) == 0 or ref.shape[1:] != self.shape[1:]:
            self.stacks = False
        self.batches += 1
        self.rows += ref.shape[0] if ref.ndim else 1
        top1 = top1_agreement(ref, cand)
        if top1 is None or self.top1_hits is None:
            self.top1_hits = None
        else:
            self.top1_hits += top1 * ref.shape[0]

    def _add_finite(self, r: np.ndarray, c: np.ndarray) -> float:
        if not r.size:
            return 0.0
        diff = np.abs(r - c)
        abs_r = np.abs(r)
        batch_max_abs, batch_ref_max = float(diff.max()), float(abs_r.max())
        self.finite_elements += r.size
        self.max_abs, self.ref_max = max(self.max_abs, batch_max_abs), max(self.ref_max, batch_ref_max)
        self.sum_abs += float(diff.sum())
        self.aa, self.bb, self.ab = self.aa + float(r @ r), self.bb + float(c @ c), self.ab + float(r @ c)
        self.histogram.add(diff)
        self.frontier.add(abs_r, diff, NEAR_ZERO_FRACTION * self.ref_max)
        if self.atol is not None or self.rtol is not None:
            self.elementwise += count_elementwise_failures(r, c, atol=self.atol, rtol=self.rtol)
        return batch_max_abs / max(batch_ref_max, np.finfo(np.float64).tiny)

    def result(self) -> OutputMetrics:
        """The metrics of every batch added so far, as if they were one concatenated array."""
        shape = self.shape or (0,)
        if self.stacks and self.batches > 1 and len(shape):
            shape = (self.rows, *shape[1:])
        top1 = None if self.top1_hits is None or not self.batches else self.top1_hits / max(self.rows, 1)
        counts = (self.nonfinite, self.ref_nonfinite)
        if not self.finite_elements:
            nan = float("nan")
            return OutputMetrics(shape, self.num_elements, nan, nan, nan, nan, nan, nan, nan, top1, *counts)
        elementwise = self.elementwise if self.atol is not None or self.rtol is not None else None
        return OutputMetrics(
            shape=tuple(int(s) for s in shape),
            num_elements=self.num_elements,
            ref_max_abs=self.ref_max,
            max_abs=self.max_abs,
            scale_rel=self.max_abs / max(self.ref_max, np.finfo(np.float64).tiny),
            mean_abs=self.sum_abs / self.finite_elements,
            p99_abs=self.histogram.quantile(0.99),
            max_rel=self.frontier.max_above(NEAR_ZERO_FRACTION * self.ref_max),
            cosine=_cosine(self.aa, self.bb, self.ab),
            top1=top1,
            nonfinite=self.nonfinite,
            ref_nonfinite=self.ref_nonfinite,
            elementwise_failures=elementwise,
            nonfinite_differs=self.nonfinite_differs,
        )


def _same_nonfinite(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Where a non-finite reference value is met by the same value (NaN by NaN, +inf by +inf)."""
    return (np.isnan(ref) & np.isnan(cand)) | (ref == cand)


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
    acc = MetricsAccumulator(atol=atol, rtol=rtol)
    for r, c in zip(refs, cands):
        acc.add(r, c)
    return acc.result()


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
        if not r.numel():
            continue
        m = compute_metrics(to_numpy(r.double()), to_numpy(c.double()))
        bad = m.badness() == math.inf
        summary.max_abs = max(summary.max_abs, math.inf if bad else _finite_or(m.max_abs, 0.0))
        summary.ref_max_abs = max(summary.ref_max_abs, finite_max_abs(r))
        summary.scale_rel = max(summary.scale_rel, math.inf if bad else _finite_or(m.scale_rel, 0.0))
    return summary


def finite_max_abs(values: Any) -> float:
    """Largest magnitude among the finite values of a tensor or array (0.0 when there is none)."""
    array = np.abs(to_numpy(values) if hasattr(values, "detach") else np.asarray(values, np.float64))
    finite = array[np.isfinite(array)]
    return float(finite.max()) if finite.size else 0.0


def _finite_or(value: float, default: float) -> float:
    return value if math.isfinite(value) else default
