"""Small numeric helpers shared by the engine's built-in check and the verifier."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

# fp32 equivalence rule shared by the engine's built-in check and the verifier's fp32 profile: the
# scale-relative error may be max(FP32_SCALE_REL, FP32_NOISE_MULTIPLE x the reference's own fp32
# noise), the noise being the fp32 reference's scale-relative error against the same model in
# float64. Deep networks carry more rounding noise than 1e-5 on their own (see docs/verify.md).
FP32_SCALE_REL = 1e-5
FP32_NOISE_MULTIPLE = 10.0


def fp32_limit(noise: float | None) -> float:
    """Scale-relative limit for an fp32 comparison given the reference's fp32 noise (or None)."""
    if noise is None or noise != noise:
        return FP32_SCALE_REL
    return max(FP32_SCALE_REL, FP32_NOISE_MULTIPLE * noise)


def scale_relative_error(reference, candidate) -> float:
    """``max|ref - cand| / max(max|ref|, tiny)``: an error measure that does not depend on output scale.

    Non-finite values never pass: ``inf`` when the candidate is non-finite where the reference is
    finite, or differs from a non-finite reference (NaN must meet NaN, ±inf the same inf). The
    scale is the reference's largest finite magnitude, never the candidate's.
    """
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape:
        raise ValueError(f"shape mismatch: reference {ref.shape} vs candidate {cand.shape}")
    if ref.size == 0:
        return 0.0
    ref_finite, cand_finite = np.isfinite(ref), np.isfinite(cand)
    if np.any(ref_finite != cand_finite):
        return float("inf")
    odd = ~ref_finite
    if np.any(odd) and not np.array_equal(ref[odd], cand[odd], equal_nan=True):
        return float("inf")
    if not np.any(ref_finite):
        return 0.0
    r, c = ref[ref_finite], cand[ref_finite]
    denom = max(float(np.max(np.abs(r))), np.finfo(np.float64).tiny)
    return float(np.max(np.abs(r - c)) / denom)


@torch.no_grad()
def randomize_batchnorm(model: nn.Module, seed: int = 0, spread: float = 0.5) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters, in place.

    A freshly built BatchNorm is nearly the identity, so an equivalence check against it proves
    little. Values stay in a range that keeps activations sane through deep networks:
    mean ~ N(0, spread^2), var ~ U(0.5, 2), gamma ~ U(0.5, 1.5) with random sign flips on some
    channels, beta ~ N(0, spread^2).
    """
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            if m.running_mean is not None:
                m.running_mean.copy_(torch.randn(n, generator=gen) * spread)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
            if m.affine:
                gamma = torch.rand(n, generator=gen) + 0.5
                sign = torch.where(torch.rand(n, generator=gen) < 0.1, -1.0, 1.0)
                m.weight.copy_(gamma * sign)
                m.bias.copy_(torch.randn(n, generator=gen) * spread)
    return model


@torch.no_grad()
def calibrate_batchnorm(
    model: nn.Module, seed: int = 0, shape: tuple[int, ...] = (8, 3, 32, 32), batches: int = 2
) -> nn.Module:
    """Random BN affine parameters, running statistics measured on random data; returns the model in eval mode.

    Deep networks with purely random BN statistics (:func:`randomize_batchnorm`) blow activations up
    by orders of magnitude, which makes relative comparisons meaningless; statistics measured on data
    keep them in a sane range, as a trained network's are.
    """
    randomize_batchnorm(model, seed)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    model.train()
    gen = torch.Generator().manual_seed(seed + 1)
    for _ in range(batches):
        model(torch.randn(shape, generator=gen))
    for m, momentum in zip(bns, saved):
        m.momentum = momentum
        m.running_var.clamp_(min=1e-2)  # a channel dead on the few samples would divide by sqrt(eps)
    return model.eval()
