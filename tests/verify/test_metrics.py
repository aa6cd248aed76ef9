import numpy as np
import pytest

from reparam.equivalence.metrics import count_elementwise_failures
from reparam.verify import compare_outputs, compute_metrics, judge, make_tolerance


def test_identical_outputs_have_zero_error():
    x = np.random.default_rng(0).standard_normal((4, 10)).astype(np.float32)
    m = compute_metrics(x, x.copy())
    assert m.max_abs == 0.0 and m.scale_rel == 0.0 and m.mean_abs == 0.0 and m.p99_abs == 0.0
    assert m.cosine == pytest.approx(1.0)
    assert m.top1 == 1.0
    assert m.nonfinite == 0


def test_metric_values_on_a_known_example():
    ref = np.array([[1.0, 2.0, -4.0, 1e-6]])
    cand = np.array([[1.0, 2.5, -4.0, 1e-3]])
    m = compute_metrics(ref, cand)
    assert m.max_abs == pytest.approx(0.5)
    assert m.scale_rel == pytest.approx(0.5 / 4.0)
    assert m.mean_abs == pytest.approx((0.5 + 1e-3 - 1e-6) / 4)
    # 1e-6 is below 1e-3 * max|ref| and so excluded from the relative error (else it would be ~1000).
    assert m.max_rel == pytest.approx(0.25)
    assert m.top1 == 1.0
    assert m.shape == (1, 4)


def test_top1_only_for_classifier_outputs_and_counts_disagreement():
    ref = np.array([[0.0, 1.0], [1.0, 0.0], [0.2, 0.1], [0.0, 3.0]])
    cand = ref.copy()
    cand[2] = [0.1, 0.2]
    assert compute_metrics(ref, cand).top1 == pytest.approx(0.75)
    assert compute_metrics(np.ones((1, 3, 4, 4)), np.ones((1, 3, 4, 4))).top1 is None


def test_batches_are_concatenated():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, 5)), rng.standard_normal((3, 5))
    b2 = b.copy()
    b2[0, 0] += 1.0
    m = compute_metrics([a, b], [a, b2])
    assert m.shape == (5, 5)
    assert m.max_abs == pytest.approx(1.0)
    assert m.num_elements == 25


def test_nan_in_candidate_fails_every_profile():
    ref = np.ones((2, 3), np.float32)
    cand = ref.copy()
    cand[1, 2] = np.nan
    m = compute_metrics(ref, cand)
    assert m.nonfinite == 1
    for profile in ("fp32", "fp16", "int8"):
        reasons = judge(m, make_tolerance(profile), "output")
        assert any("NaN/Inf" in r for r in reasons)
    inf = ref.copy()
    inf[0, 0] = np.inf
    assert compute_metrics(ref, inf).nonfinite == 1


def test_polygraphy_semantics_element_fails_only_when_both_exceeded():
    ref = np.array([100.0, 0.0, 1.0])
    cand = np.array([100.05, 0.05, 1.0])
    # 100.05: abs 0.05 > atol 0.01 but rel 5e-4 <= 1e-3 -> passes; 0.05 vs 0: both exceeded -> fails
    assert count_elementwise_failures(ref, cand, atol=0.01, rtol=1e-3) == 1
    assert count_elementwise_failures(ref, cand, atol=0.1, rtol=1e-3) == 0


def test_shape_mismatch_and_missing_output_are_problems():
    ref = {"output": np.zeros((1, 10)), "output1": np.zeros((1, 2))}
    res = compare_outputs(ref, {"output": np.zeros((1, 11))})
    assert not res.passed
    assert any("shape mismatch" in p for p in res.problems)
    assert any("'output1' missing" in p for p in res.problems)
    with pytest.raises(ValueError):
        compute_metrics(np.zeros(3), np.zeros(4))
