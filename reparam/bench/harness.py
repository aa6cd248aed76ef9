"""Measurement harness: interleaved timing of several callables, robust summaries, paired ratios.

Pure Python (plus numpy for percentiles), independent of models and backends, so it can be tested
with fake callables and a fake clock.

Candidates are timed *interleaved*: one round calls each candidate once in a fixed order
(a, b, c, a, b, c, ...), so slow drifts of the machine (other processes, frequency scaling, thermal
state) hit every candidate alike. Ratios between two candidates are taken *per round* (paired) and
then summarized, which cancels most of that drift instead of mixing it into two independent medians.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

Timer = Callable[[], float]


@dataclass(frozen=True)
class Stats:
    """Summary of a sample: median, quartiles, 10th/90th percentiles, extremes and size."""

    median: float
    q1: float
    q3: float
    p10: float
    p90: float
    min: float
    max: float
    n: int

    @property
    def iqr(self) -> float:
        """Interquartile range ``q3 - q1``."""
        return self.q3 - self.q1

    def scaled(self, factor: float) -> Stats:
        """The same summary with every value multiplied by ``factor`` (e.g. seconds -> ms)."""
        return Stats(
            *(getattr(self, f) * factor for f in ("median", "q1", "q3", "p10", "p90", "min", "max")),
            n=self.n,
        )

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def summarize(samples: Sequence[float]) -> Stats:
    """Median, quartiles and 10th/90th percentiles (linear interpolation) of a non-empty sample."""
    values = np.asarray(list(samples), dtype=np.float64)
    if values.size == 0:
        raise ValueError("cannot summarize an empty sample")
    if not np.all(np.isfinite(values)):
        raise ValueError("sample contains NaN or infinite values")
    p10, q1, med, q3, p90 = np.percentile(values, [10, 25, 50, 75, 90])
    return Stats(
        median=float(med),
        q1=float(q1),
        q3=float(q3),
        p10=float(p10),
        p90=float(p90),
        min=float(values.min()),
        max=float(values.max()),
        n=int(values.size),
    )


def paired_ratios(numerator: Sequence[float], denominator: Sequence[float]) -> list[float]:
    """Per-round ratios ``numerator[i] / denominator[i]`` of two interleaved series."""
    if len(numerator) != len(denominator):
        raise ValueError(
            f"paired series must have the same length, got {len(numerator)} and {len(denominator)}"
        )
    if any(d <= 0 for d in denominator):
        raise ValueError("denominator series contains a non-positive time")
    return [n / d for n, d in zip(numerator, denominator)]


@dataclass
class Interleaved:
    """Per-call times (seconds) of each candidate, one entry per round, in candidate order."""

    order: list[str]
    samples: dict[str, list[float]]
    number: int
    warmup: int

    def stats(self, name: str) -> Stats:
        """Summary of one candidate's per-call times."""
        return summarize(self.samples[name])

    def ratio(self, numerator: str, denominator: str) -> Stats:
        """Summary of the per-round ratios ``numerator / denominator`` (paired, same rounds)."""
        return summarize(paired_ratios(self.samples[numerator], self.samples[denominator]))

    def to_dict(self) -> dict[str, Any]:
        return {"order": self.order, "samples": self.samples, "number": self.number, "warmup": self.warmup}


def _validate(candidates: Mapping[str, Callable[[], Any]], repeats: int, warmup: int, number: int) -> None:
    if not candidates:
        raise ValueError("no candidates to time")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup must be non-negative, got {warmup}")
    if number < 1:
        raise ValueError(f"number must be at least 1, got {number}")


def run_interleaved(
    candidates: Mapping[str, Callable[[], Any]],
    *,
    repeats: int,
    warmup: int = 1,
    number: int = 1,
    timer: Timer = time.perf_counter,
) -> Interleaved:
    """Time ``candidates`` interleaved: ``warmup`` untimed rounds, then ``repeats`` timed rounds.

    Each round calls every candidate in mapping order; a candidate's sample in a round is the time of
    ``number`` consecutive calls divided by ``number``.
    """
    _validate(candidates, repeats, warmup, number)
    order = list(candidates)
    for _ in range(warmup):
        for name in order:
            for _ in range(number):
                candidates[name]()
    samples: dict[str, list[float]] = {name: [] for name in order}
    for _ in range(repeats):
        for name in order:
            fn = candidates[name]
            start = timer()
            for _ in range(number):
                fn()
            samples[name].append((timer() - start) / number)
    return Interleaved(order=order, samples=samples, number=number, warmup=warmup)


def calibrate_number(
    candidates: Mapping[str, Callable[[], Any]],
    *,
    min_sample_s: float,
    max_number: int = 1000,
    timer: Timer = time.perf_counter,
) -> int:
    """Calls per sample so that the fastest candidate's sample lasts at least ``min_sample_s``.

    Times one call of each candidate (after the caller's warm-up) and rounds up; very fast callables
    are otherwise dominated by timer resolution and loop overhead.
    """
    if min_sample_s <= 0:
        return 1
    fastest = math.inf
    for fn in candidates.values():
        start = timer()
        fn()
        fastest = min(fastest, timer() - start)
    if fastest <= 0:
        return max_number
    # The small slack keeps float noise (0.005 / 0.000999...) from adding a whole extra call.
    return max(1, min(max_number, math.ceil(min_sample_s / fastest - 1e-9)))
