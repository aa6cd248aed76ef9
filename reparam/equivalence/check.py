"""Judge a model's rewritten form against the model itself: the fp32 rule, in the model's dtype."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from reparam.equivalence.tolerance import profile_for_dtype


@dataclass
class ErrorVerdict:
    """Whether a scale-relative error passes, the limit it was held to, and the noise floor if measured."""

    passed: bool
    limit: float
    noise: float | None = None


def judge_error(
    scale_rel: float, dtype: torch.dtype, measure_noise: Callable[[], float | None] | None = None
) -> ErrorVerdict:
    """Judge ``scale_rel`` with the profile of ``dtype``.

    The reference's fp32 noise (``measure_noise()``, a float64 run) is measured only when the
    fixed limit is exceeded and the profile allows for noise: most checks never pay for it.
    """
    profile = profile_for_dtype(dtype)
    limit = profile.scale_rel_limit(None)
    if not math.isfinite(scale_rel):  # NaN/Inf never pass: no float64 run can change that
        return ErrorVerdict(False, limit)
    if scale_rel <= limit or profile.noise_multiple is None or measure_noise is None:
        return ErrorVerdict(scale_rel <= limit, limit)
    noise = measure_noise()
    limit = profile.scale_rel_limit(noise)
    return ErrorVerdict(scale_rel <= limit, limit, noise)
