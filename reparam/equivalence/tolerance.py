"""Tolerance profiles: when does a candidate compute "the same" as the reference?

Defaults (see docs/verify.md for the measurements behind them):

- ``fp32``: scale-relative error ``max|ref - cand| / max|ref|`` <= max(1e-5, 10 x the reference's
  own fp32 noise). Exact fusion in fp32 only reorders sums and rounds the folded weights once. The
  noise floor is the scale-relative error of the fp32 reference against the same model run in
  float64: on the zoo a correct deploy model (PyTorch or ONNX Runtime) stays within 3.3x of it and
  the floor itself reaches 4e-5 (ResNet-50), so a fixed 1e-5 would fail correct deep models while
  the 10x multiple keeps headroom (``benchmarks/tolerance_noise.py`` measures both).
- ``fp16``: scale-relative <= 1e-2 and cosine >= 0.9999. fp16 has eps = 9.8e-4, so rounding of
  activations and weights at every layer accumulates to a few 1e-3 of the output scale; a structural
  error moves the direction of the output vector, which the cosine catches.
- ``int8``: top-1 agreement >= 0.99 (classifier outputs) and cosine >= 0.99. Quantized outputs are
  not elementwise close to float ones by design; what matters is that predictions survive.

Every profile fails a candidate that produces NaN/Inf where the reference is finite. Explicit
``atol``/``rtol`` (per output or for all) switch that output to a Polygraphy-style elementwise
check, in which an element fails only when it exceeds both; it replaces the profile's
scale-relative limit, while cosine / top-1 limits of the profile still apply.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from reparam.equivalence.metrics import OutputMetrics
from reparam.errors import ReparamError
from reparam.numerics import FP32_NOISE_MULTIPLE, FP32_SCALE_REL


@dataclass(frozen=True)
class ToleranceProfile:
    """Limits for one precision; ``None`` means the criterion is not checked."""

    name: str
    max_scale_rel: float | None = None
    min_cosine: float | None = None
    min_top1: float | None = None
    # When the reference's fp32 noise floor was measured, the scale-relative limit becomes
    # max(max_scale_rel, noise_multiple * noise floor): an ill-conditioned network is not failed
    # for rounding error the reference itself has.
    noise_multiple: float | None = None

    def scale_rel_limit(self, noise: float | None) -> float | None:
        """The scale-relative limit given the reference's measured noise floor (or None)."""
        if self.max_scale_rel is None:
            return None
        if noise is None or self.noise_multiple is None or noise != noise:
            return self.max_scale_rel
        return max(self.max_scale_rel, self.noise_multiple * noise)


PROFILES: dict[str, ToleranceProfile] = {
    "fp32": ToleranceProfile("fp32", max_scale_rel=FP32_SCALE_REL, noise_multiple=FP32_NOISE_MULTIPLE),
    "fp16": ToleranceProfile("fp16", max_scale_rel=1e-2, min_cosine=0.9999),
    "int8": ToleranceProfile("int8", min_cosine=0.99, min_top1=0.99),
}


# The limit for a model that computes in a dtype other than float32 (the built-in checks of
# convert/expand compare a model with its rewritten form in the model's own dtype).
DTYPE_PROFILES: dict[torch.dtype, ToleranceProfile] = {
    torch.float32: PROFILES["fp32"],
    torch.float64: ToleranceProfile("fp64", max_scale_rel=1e-10),
    torch.float16: ToleranceProfile("fp16", max_scale_rel=1e-2),
    torch.bfloat16: ToleranceProfile("bf16", max_scale_rel=5e-2),
}


def profile_for_dtype(dtype: torch.dtype) -> ToleranceProfile:
    """The scale-relative profile for comparing two forms of one model computing in ``dtype``."""
    return DTYPE_PROFILES.get(dtype, PROFILES["fp32"])


@dataclass
class Tolerance:
    """A profile plus optional elementwise ``atol``/``rtol`` overrides (key ``"*"`` = every output)."""

    profile: ToleranceProfile = PROFILES["fp32"]
    atol: dict[str, float] = field(default_factory=dict)
    rtol: dict[str, float] = field(default_factory=dict)

    def elementwise(self, output: str) -> tuple[float | None, float | None]:
        """The (atol, rtol) pair for ``output``; both None when the profile's limits apply."""
        return self.atol.get(output, self.atol.get("*")), self.rtol.get(output, self.rtol.get("*"))

    def to_dict(self) -> dict:
        return {
            "profile": self.profile.name,
            "max_scale_rel": self.profile.max_scale_rel,
            "min_cosine": self.profile.min_cosine,
            "min_top1": self.profile.min_top1,
            "noise_multiple": self.profile.noise_multiple,
            "atol": dict(self.atol),
            "rtol": dict(self.rtol),
        }


def get_profile(name: str) -> ToleranceProfile:
    """Look up a profile by name, or raise a ReparamError listing the valid ones."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ReparamError(
            f"unknown tolerance profile {name!r}", hint=f"use one of: {', '.join(PROFILES)}"
        ) from None


def parse_tolerance_overrides(values: list[str] | None, option: str) -> dict[str, float]:
    """Parse repeated tolerance values into ``{output or '*': value}``.

    ``1e-3`` applies to every output, ``output1=1e-3`` to one; ``option`` names them in errors.
    """
    out: dict[str, float] = {}
    for raw in values or []:
        name, _, number = raw.rpartition("=")
        try:
            value = float(number)
        except ValueError:
            value = -1.0
        if not value >= 0.0:
            raise ReparamError(
                f"invalid {option} value {raw!r}",
                hint=f"write {option} 1e-3 for every output or {option} OUTPUT=1e-3 for one output",
            )
        out[name or "*"] = value
    return out


def make_tolerance(
    tolerance: str | ToleranceProfile | Tolerance = "fp32",
    atol: float | dict[str, float] | None = None,
    rtol: float | dict[str, float] | None = None,
) -> Tolerance:
    """Build a Tolerance from a profile name/object and optional scalar or per-output overrides."""
    if isinstance(tolerance, Tolerance):
        base = tolerance
    else:
        profile = tolerance if isinstance(tolerance, ToleranceProfile) else get_profile(tolerance)
        base = Tolerance(profile)

    def norm(v: float | dict[str, float] | None) -> dict[str, float]:
        if v is None:
            return {}
        return {"*": float(v)} if isinstance(v, int | float) else {str(k): float(x) for k, x in v.items()}

    return Tolerance(base.profile, {**base.atol, **norm(atol)}, {**base.rtol, **norm(rtol)})


def judge(metrics: OutputMetrics, tolerance: Tolerance, output: str, *, use_top1: bool = True) -> list[str]:
    """Reasons why ``metrics`` fail ``tolerance`` for ``output`` (empty list = pass)."""
    p = tolerance.profile
    reasons: list[str] = []
    if metrics.nonfinite:
        reasons.append(f"{metrics.nonfinite} NaN/Inf values where the reference is finite")
    if metrics.nonfinite_differs:
        reasons.append(f"{metrics.nonfinite_differs} values differ from the reference's NaN/Inf there")
    if metrics.ref_nonfinite == metrics.num_elements:
        return reasons
    atol, rtol = tolerance.elementwise(output)
    if metrics.elementwise_failures is not None and (atol is not None or rtol is not None):
        if metrics.elementwise_failures:
            reasons.append(
                f"{metrics.elementwise_failures} of {metrics.num_elements} elements exceed both "
                f"atol={atol if atol is not None else 1e-5:g} and rtol={rtol if rtol is not None else 1e-5:g}"
            )
    elif (limit := p.scale_rel_limit(metrics.ref_noise)) is not None and not metrics.scale_rel <= limit:
        why = "" if limit == p.max_scale_rel else f" ({p.noise_multiple:g} x the reference's fp32 noise)"
        reasons.append(f"scale-relative error {metrics.scale_rel:.3g} > {limit:.3g}{why}")
    if p.min_cosine is not None and not metrics.cosine >= p.min_cosine:
        reasons.append(f"cosine similarity {metrics.cosine:.6f} < {p.min_cosine:g}")
    if use_top1 and p.min_top1 is not None and metrics.top1 is not None and not metrics.top1 >= p.min_top1:
        reasons.append(f"top-1 agreement {metrics.top1:.4f} < {p.min_top1:g}")
    return reasons
