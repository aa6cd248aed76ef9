import math

import numpy as np
import pytest

from reparam.bench.harness import (
    Stats,
    calibrate_number,
    paired_ratios,
    run_interleaved,
    summarize,
)


class FakeClock:
    """A clock that only moves when a fake callable 'runs'."""

    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def fake(clock: FakeClock, log: list, name: str, durations):
    """A callable that logs its name and advances the clock by the next duration."""
    it = iter(durations)

    def fn():
        log.append(name)
        clock.t += next(it)

    return fn


def test_rounds_interleave_candidates_in_order_after_warmup():
    clock, log = FakeClock(), []
    cands = {n: fake(clock, log, n, [1.0] * 100) for n in ("a", "b", "c")}
    run = run_interleaved(cands, repeats=3, warmup=2, number=1, timer=clock)
    assert log == ["a", "b", "c"] * 5
    assert run.order == ["a", "b", "c"]
    assert all(len(s) == 3 for s in run.samples.values())


def test_number_calls_are_consecutive_and_averaged():
    clock, log = FakeClock(), []
    cands = {
        "a": fake(clock, log, "a", [1.0, 3.0, 2.0, 2.0]),
        "b": fake(clock, log, "b", [0.5, 0.5, 1.0, 1.0]),
    }
    run = run_interleaved(cands, repeats=2, warmup=0, number=2, timer=clock)
    assert log == ["a", "a", "b", "b", "a", "a", "b", "b"]
    assert run.samples == {"a": [2.0, 2.0], "b": [0.5, 1.0]}
    assert run.number == 2


def test_paired_ratio_cancels_drift_between_rounds():
    # The machine slows down 10x in every other round; a is always exactly 2x b within a round.
    a = [2.0, 20.0, 2.0, 20.0, 2.0, 20.0]
    b = [1.0, 10.0, 1.0, 10.0, 1.0, 10.0]
    assert paired_ratios(a, b) == [2.0] * 6
    clock, log = FakeClock(), []
    run = run_interleaved(
        {"a": fake(clock, log, "a", a), "b": fake(clock, log, "b", b)}, repeats=6, warmup=0, timer=clock
    )
    r = run.ratio("a", "b")
    assert r.median == pytest.approx(2.0) and r.p10 == pytest.approx(2.0) and r.p90 == pytest.approx(2.0)
    # Unpaired, the spread of a and b alone is an order of magnitude wide.
    assert run.stats("a").max / run.stats("a").min == pytest.approx(10.0)


def test_paired_ratio_is_median_of_per_round_ratios_not_ratio_of_medians():
    a = [3.0, 1.0, 4.0]
    b = [1.0, 1.0, 4.0]
    ratios = paired_ratios(a, b)
    assert ratios == [3.0, 1.0, 1.0]
    assert summarize(ratios).median == 1.0
    assert np.median(a) / np.median(b) == 3.0


def test_paired_ratios_reject_mismatched_or_non_positive_series():
    with pytest.raises(ValueError, match="same length"):
        paired_ratios([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="non-positive"):
        paired_ratios([1.0], [0.0])


def test_summarize_matches_numpy_percentiles():
    values = [5.0, 1.0, 4.0, 2.0, 3.0, 10.0, 7.0, 6.0, 9.0, 8.0]
    s = summarize(values)
    assert isinstance(s, Stats)
    assert s.median == 5.5 and s.min == 1.0 and s.max == 10.0 and s.n == 10
    assert s.q1 == pytest.approx(np.percentile(values, 25))
    assert s.q3 == pytest.approx(np.percentile(values, 75))
    assert s.p10 == pytest.approx(1.9) and s.p90 == pytest.approx(9.1)
    assert s.iqr == pytest.approx(s.q3 - s.q1)
    ms = s.scaled(1e3)
    assert ms.median == 5500.0 and ms.n == 10


def test_summarize_rejects_empty_and_nan():
    with pytest.raises(ValueError, match="empty"):
        summarize([])
    with pytest.raises(ValueError, match="NaN"):
        summarize([1.0, math.nan])


def test_invalid_run_settings_raise():
    with pytest.raises(ValueError, match="no candidates"):
        run_interleaved({}, repeats=1)
    with pytest.raises(ValueError, match="repeats"):
        run_interleaved({"a": lambda: None}, repeats=0)
    with pytest.raises(ValueError, match="number"):
        run_interleaved({"a": lambda: None}, repeats=1, number=0)


def test_calibrate_number_targets_the_fastest_candidate():
    clock, log = FakeClock(), []
    cands = {"slow": fake(clock, log, "slow", [0.010]), "fast": fake(clock, log, "fast", [0.001])}
    assert calibrate_number(cands, min_sample_s=0.005, timer=clock) == 5
    assert log == ["slow", "fast"]
    clock2, log2 = FakeClock(), []
    assert (
        calibrate_number(
            {"x": fake(clock2, log2, "x", [1e-9])}, min_sample_s=1.0, max_number=50, timer=clock2
        )
        == 50
    )
    assert calibrate_number({"x": lambda: None}, min_sample_s=0) == 1
