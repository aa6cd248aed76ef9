"""One judge for torch and numpy outputs, batch by batch: the streamed metrics equal the concatenated ones."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reparam.equivalence import MetricsAccumulator, OutputJudge, compute_metrics, judge_outputs, named_outputs
from reparam.equivalence.metrics import (
    NEAR_ZERO_FRACTION,
    P99_BINS_PER_OCTAVE,
    cosine_similarity,
    top1_agreement,
)

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


def _direct(refs: list[np.ndarray], cands: list[np.ndarray]) -> dict:
    """The metrics computed on the concatenated arrays, the way one array is measured."""
    ref = np.concatenate([r.reshape(-1) for r in refs]).astype(np.float64)
    cand = np.concatenate([c.reshape(-1) for c in cands]).astype(np.float64)
    both = np.isfinite(ref) & np.isfinite(cand)
    r, c = ref[both], cand[both]
    diff = np.abs(r - c)
    ref_max = float(np.abs(r).max())
    significant = np.abs(r) > NEAR_ZERO_FRACTION * ref_max
    rows = [x.shape[0] for x in refs]
    top1 = [top1_agreement(x.astype(np.float64), y.astype(np.float64)) for x, y in zip(refs, cands)]
    return {
        "max_abs": float(diff.max()),
        "scale_rel": float(diff.max()) / ref_max,
        "mean_abs": float(diff.mean()),
        "p99_abs": float(np.percentile(diff, 99)),
        "p99_high": float(np.percentile(diff, 99, method="higher")),
        "max_rel": float((diff[significant] / np.abs(r[significant])).max()) if significant.any() else 0.0,
        "cosine": cosine_similarity(r, c),
        "top1": None if None in top1 else sum(t * n for t, n in zip(top1, rows)) / sum(rows),
        "nonfinite": int(np.count_nonzero(np.isfinite(ref) & ~np.isfinite(cand))),
    }


@st.composite
def batch_pairs(draw):
    classes = draw(st.integers(2, 6))
    seed = draw(st.integers(0, 10_000))
    rng = np.random.default_rng(seed)
    refs, cands = [], []
    for _ in range(draw(st.integers(1, 5))):
        rows = draw(st.integers(1, 4))
        scale = 10.0 ** draw(st.integers(-3, 3))
        ref = rng.standard_normal((rows, classes)) * scale
        noise = 10.0 ** draw(st.integers(-8, -1))
        cand = ref + rng.standard_normal(ref.shape) * noise * scale
        if draw(st.booleans()):
            cand.flat[draw(st.integers(0, cand.size - 1))] = np.nan
        refs.append(ref.astype(np.float32))
        cands.append(cand.astype(np.float32))
    return refs, cands


@SETTINGS
@given(batch_pairs())
def test_streamed_metrics_equal_the_metrics_of_the_concatenated_arrays(pair):
    refs, cands = pair
    acc = MetricsAccumulator()
    for r, c in zip(refs, cands):
        acc.add(r, c)
    got, want = acc.result(), _direct(refs, cands)
    for key in ("max_abs", "scale_rel", "mean_abs", "max_rel", "cosine"):
        assert getattr(got, key) == pytest.approx(want[key], rel=1e-9, abs=1e-300), key
    assert got.top1 == (pytest.approx(want["top1"]) if want["top1"] is not None else None)
    assert got.nonfinite == want["nonfinite"]
    # p99 from the histogram: never below numpy's percentile, at most one bin above the nearest-rank value
    assert want["p99_abs"] <= got.p99_abs * (1 + 1e-12)
    assert got.p99_abs <= max(want["p99_high"], 1e-300) * 2 ** (1 / P99_BINS_PER_OCTAVE) * (1 + 1e-12)


def test_torch_and_numpy_outputs_get_the_same_verdict():
    torch.manual_seed(0)
    ref = (torch.randn(4, 10), {"aux": torch.randn(4, 3)})
    cand = (ref[0] + 1e-3, {"aux": ref[1]["aux"].clone()})
    from_torch = judge_outputs(ref, cand, "fp32")
    named = {"output0": ref[0].numpy(), "output1": ref[1]["aux"].numpy()}
    from_numpy = judge_outputs(named, {"output0": cand[0].numpy(), "output1": cand[1]["aux"].numpy()}, "fp32")
    assert list(named_outputs(ref)) == ["output0", "output1"]
    assert not from_torch.passed and not from_numpy.passed
    for name in ("output0", "output1"):
        assert from_torch.outputs[name].metrics == from_numpy.outputs[name].metrics
        assert from_torch.outputs[name].reasons == from_numpy.outputs[name].reasons
    assert from_torch.worst().name == "output0"


def test_a_value_where_the_reference_has_nan_fails():
    ref = np.array([[1.0, np.nan, 2.0]])
    assert judge_outputs({"y": ref}, {"y": ref.copy()}).passed  # NaN meets NaN
    result = judge_outputs({"y": ref}, {"y": np.array([[1.0, 0.5, 2.0]])})
    assert not result.passed and "differ from the reference's NaN/Inf" in result.outputs["y"].reasons[0]
    inf = np.array([[np.inf, 1.0]])
    assert not judge_outputs({"y": inf}, {"y": np.array([[-np.inf, 1.0]])}).passed


def test_the_noise_floor_is_measured_only_when_it_can_change_the_verdict():
    ref = np.linspace(-1, 1, 50).reshape(5, 10)
    calls = []

    def noise():
        calls.append(1)
        return 1e-5  # the reference's own fp32 error: the limit becomes 1e-4

    assert judge_outputs({"y": ref}, {"y": ref + 1e-7}, noise=noise).passed and not calls
    result = judge_outputs({"y": ref}, {"y": ref + 5e-5}, noise=noise)
    assert result.passed and calls == [1]
    assert result.outputs["y"].limit == pytest.approx(1e-4) and result.outputs["y"].metrics.ref_noise == 1e-5
    assert not judge_outputs({"y": ref}, {"y": ref + 5e-4}, noise=noise).passed


def test_the_judge_takes_batches_one_at_a_time_and_names_problems():
    judge = OutputJudge("fp32", name="c", kind="onnx")
    rng = np.random.default_rng(0)
    worst = []
    for k in range(4):
        ref = rng.standard_normal((2, 5))
        worst.append(judge.add({"y": ref, "z": ref}, {"y": ref + (1e-3 if k == 2 else 0.0)}))
    assert int(np.argmax(worst)) == 2
    result = judge.result()
    assert not result.passed and any("'z' missing" in p for p in result.problems)
    assert result.outputs["y"].metrics.shape == (8, 5)
    assert not math.isfinite(judge.add_output("y", np.zeros((1, 5)), np.zeros((1, 6))))
    assert any("shape mismatch" in p for p in judge.result().problems)


def test_compute_metrics_is_the_accumulator_over_a_list():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((2, 4))
    acc = MetricsAccumulator()
    acc.add(a, a * 1.01)
    acc.add(b, b)
    assert compute_metrics([a, b], [a * 1.01, b]) == acc.result()
