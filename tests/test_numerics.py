"""The scale-relative error every comparison uses: scale from the reference, non-finite never passes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reparam.equivalence import output_error
from reparam.numerics import FP32_SCALE_REL, fp32_limit, scale_relative_error


def test_scale_is_the_references_not_the_candidates():
    # max|ref| = 1 and max|cand| = 0.5: the error is 0.5 / 1, not 0.5 / 0.5
    assert scale_relative_error([1.0, 0.0], [0.5, 0.0]) == 0.5
    # and the other way round: max|cand| = 4 does not shrink the error
    assert scale_relative_error([1.0, 0.0], [4.0, 0.0]) == 3.0


@pytest.mark.parametrize(("delta", "passes"), [(2.0**-17, True), (2.0**-16, False)])
def test_fp32_base_limit_at_its_boundary(delta, passes):
    # 2^-17 = 7.6e-6 is inside the 1e-5 limit, 2^-16 = 1.5e-5 outside; the candidate is the larger
    err = scale_relative_error(np.array([1.0, -0.25]), np.array([1.0 + delta, -0.25]))
    assert err == delta
    assert (err <= fp32_limit(None)) is passes
    assert fp32_limit(None) == FP32_SCALE_REL


@pytest.mark.parametrize(
    ("ref", "cand"),
    [
        ([1.0, 2.0], [1.0, math.nan]),
        ([1.0, 2.0], [math.nan, math.nan]),
        ([1.0, 2.0], [1.0, math.inf]),
        ([1.0, math.inf], [1.0, -math.inf]),
        ([1.0, math.nan], [1.0, 2.0]),
        ([1.0, math.inf], [1.0, math.nan]),
    ],
)
def test_non_finite_where_it_should_not_be_never_passes(ref, cand):
    assert scale_relative_error(ref, cand) == math.inf


def test_matching_non_finite_values_compare_on_the_rest():
    assert scale_relative_error([2.0, math.nan, math.inf], [2.0, math.nan, math.inf]) == 0.0
    assert scale_relative_error([2.0, math.nan], [1.0, math.nan]) == 0.5


def test_engine_check_fails_an_all_nan_deploy_output():
    ref = torch.randn(2, 10)
    error = output_error(ref, torch.full_like(ref, math.nan))
    assert error.scale_rel == math.inf and error.max_abs == math.inf
    assert error.ref_max_abs == float(ref.abs().max())
