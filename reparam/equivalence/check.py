"""Judge a model's rewritten form against the model itself, by the rule of the model's dtype.

The conversion's built-in check and ``expand`` call :func:`judge_model_outputs`, which is
:func:`~reparam.equivalence.judge.judge_outputs` with the profile of the model's dtype;
:func:`judge_error` states the same rule for one scale-relative error.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from reparam.equivalence.judge import judge_outputs
from reparam.equivalence.metrics import finite_max_abs
from reparam.equivalence.tolerance import profile_for_dtype
from reparam.errors import ReparamError
from reparam.tensors import tensor_leaves


@dataclass
class ErrorVerdict:
    """Whether the error passes, the limit it was held to, the noise floor if measured, and the errors.

    ``max_abs``, ``scale_rel`` and ``ref_max_abs`` are the largest over the outputs (inf when an
    output is NaN/Inf where the reference is not, or has another shape).
    """

    passed: bool
    limit: float
    noise: float | None = None
    max_abs: float = 0.0
    scale_rel: float = 0.0
    ref_max_abs: float = 0.0


def judge_model_outputs(
    reference: Any,
    candidate: Any,
    dtype: torch.dtype,
    measure_noise: Callable[[], float | None] | None = None,
) -> ErrorVerdict:
    """Judge a model output (tensor, tuple, dict) against the reference output of the same structure.

    The reference's fp32 noise (``measure_noise()``, a float64 run) is measured only when the fixed
    limit is exceeded and the profile allows for noise: most checks never pay for it. A different
    number of output tensors is a ReparamError.
    """
    refs, cands = tensor_leaves(reference), tensor_leaves(candidate)
    if len(refs) != len(cands):
        raise ReparamError(
            f"the candidate returns {len(cands)} tensors, the reference {len(refs)}",
            hint="report this model: the conversion changed its outputs",
        )
    profile = profile_for_dtype(dtype)
    result = judge_outputs(reference, candidate, profile, noise=measure_noise)
    outputs = list(result.outputs.values())
    broken = bool(result.problems) or any(math.isinf(o.metrics.badness()) for o in outputs)

    def largest(values: list[float]) -> float:
        return max((v for v in values if math.isfinite(v)), default=0.0)

    noise = next((o.metrics.ref_noise for o in outputs if o.metrics.ref_noise is not None), None)
    return ErrorVerdict(
        passed=result.passed,
        limit=profile.scale_rel_limit(noise),
        noise=noise,
        max_abs=math.inf if broken else largest([o.metrics.max_abs for o in outputs]),
        scale_rel=math.inf if broken else largest([o.metrics.scale_rel for o in outputs]),
        ref_max_abs=max((finite_max_abs(t) for t in refs), default=0.0),
    )


def judge_error(
    scale_rel: float, dtype: torch.dtype, measure_noise: Callable[[], float | None] | None = None
) -> ErrorVerdict:
    """The same rule for one scale-relative error ``scale_rel`` (NaN/Inf never pass)."""
    profile = profile_for_dtype(dtype)
    limit = profile.scale_rel_limit(None)
    if not math.isfinite(scale_rel):  # NaN/Inf never pass: no float64 run can change that
        return ErrorVerdict(False, limit, scale_rel=scale_rel)
    if scale_rel <= limit or profile.noise_multiple is None or measure_noise is None:
        return ErrorVerdict(scale_rel <= limit, limit, scale_rel=scale_rel)
    noise = measure_noise()
    limit = profile.scale_rel_limit(noise)
    return ErrorVerdict(scale_rel <= limit, limit, noise, scale_rel=scale_rel)
