import numpy as np
import pytest

from reparam.equivalence.tolerance import parse_tolerance_overrides
from reparam.errors import ReparamError
from reparam.verify import PROFILES, compare_outputs, get_profile, make_tolerance


def _pair(rel_error: float, shape=(8, 10), seed=0):
    rng = np.random.default_rng(seed)
    ref = rng.standard_normal(shape)
    noise = rng.standard_normal(shape)
    cand = ref + noise / np.abs(noise).max() * rel_error * np.abs(ref).max()
    return {"output": ref}, {"output": cand}


def test_fp32_is_tight_and_fp16_looser():
    ref, cand = _pair(1e-6)
    assert compare_outputs(ref, cand, "fp32").passed
    ref, cand = _pair(1e-4)
    res = compare_outputs(ref, cand, "fp32")
    assert not res.passed and "scale-relative" in res.outputs["output"].reasons[0]
    assert compare_outputs(ref, cand, "fp16").passed
    ref, cand = _pair(5e-2)
    assert not compare_outputs(ref, cand, "fp16").passed


def test_int8_is_judged_by_top1_and_cosine():
    ref, cand = _pair(1e-3, shape=(200, 10))
    assert compare_outputs(ref, cand, "int8").passed
    flipped = cand["output"].copy()
    rows = np.arange(10)
    flipped[rows, np.argmax(flipped[:10], axis=1)] = (
        flipped[:10].min(axis=1) - 1.0
    )  # 5 % of rows change class
    res = compare_outputs(ref, {"output": flipped}, "int8")
    assert not res.passed
    assert any("top-1" in r for r in res.outputs["output"].reasons)


def test_elementwise_override_replaces_scale_relative_limit_per_output():
    ref, cand = _pair(1e-4)
    ref["output1"], cand["output1"] = ref["output"], cand["output"]
    tol = make_tolerance("fp32", atol={"output": 1e-3}, rtol={"output": 1e-3})
    res = compare_outputs(ref, cand, tol)
    assert res.outputs["output"].passed
    assert not res.outputs["output1"].passed  # still under the fp32 profile
    tight = compare_outputs(ref, cand, make_tolerance("fp32", atol=1e-7, rtol=1e-7))
    assert any("exceed both" in r for r in tight.outputs["output"].reasons)


def test_profiles_and_override_parsing():
    assert set(PROFILES) == {"fp32", "fp16", "int8"}
    assert get_profile("fp16").min_cosine == 0.9999
    with pytest.raises(ReparamError, match="unknown tolerance profile"):
        get_profile("bf16")
    assert parse_tolerance_overrides(["1e-3", "output1=2e-2"], "--atol") == {"*": 1e-3, "output1": 2e-2}
    for bad in (["x"], ["output=-1"], ["output=nan"]):
        with pytest.raises(ReparamError, match="invalid --atol"):
            parse_tolerance_overrides(bad, "--atol")
