"""The reference's own fp32 rounding noise: its fp32 outputs against the same model run in float64.

Deep fp32 networks round more than a fixed 1e-5 on their own; the fp32 rule allows a multiple of
this floor (see :mod:`reparam.equivalence.tolerance`). Used for model outputs and block outputs.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from reparam.equivalence.capture import BlockValue, run_with_block_hooks
from reparam.equivalence.metrics import compute_metrics, output_error
from reparam.tensors import tensor_leaves, to_numpy


def float64_copy(model: nn.Module) -> nn.Module | None:
    """An eval-mode float64 copy of ``model`` (None when it cannot be copied or converted)."""
    try:
        return copy.deepcopy(model).double().eval()
    except Exception:
        return None


def as_float64(args: Sequence[Any]) -> tuple:
    """Floating-point tensors of ``args`` in float64, everything else as it is."""
    return tuple(t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in args)


@torch.no_grad()
def fp32_noise(model: nn.Module, args: Sequence[Any], reference_output: Any) -> float | None:
    """Largest scale-relative error of ``reference_output`` (the model's fp32 output) against float64.

    None when the model cannot run in float64 (the fixed limit applies then).
    """
    model64 = float64_copy(model)
    if model64 is None:
        return None
    try:
        out64 = model64(*as_float64(args))
    except Exception:  # some ops have no float64 kernel
        return None
    return output_error(out64, reference_output).scale_rel


@torch.no_grad()
def output_noise(
    model64: nn.Module, runs: Sequence[Sequence[Any]], reference: Mapping[str, Sequence[np.ndarray]]
) -> dict[str, float]:
    """Noise per named output over several runs; ``reference`` holds each output's fp32 arrays per run."""
    names = list(reference)
    outs: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for args in runs:
        leaves = tensor_leaves(model64(*as_float64(args)))
        if len(leaves) != len(names):
            return {}
        for n, t in zip(names, leaves):
            outs[n].append(to_numpy(t))
    noise = {}
    for n in names:
        try:
            noise[n] = compute_metrics(outs[n], list(reference[n])).scale_rel
        except ValueError:
            continue
    return noise


def block_noise(
    model64: nn.Module, args: Sequence[Any], reference: Mapping[str, BlockValue]
) -> dict[str, float]:
    """Noise of each block value in ``reference`` (fp32 values of the same blocks); {} on failure."""
    try:
        run = run_with_block_hooks(model64, list(reference), lambda: model64(*as_float64(args)))
    except Exception:
        return {}
    noise = {}
    for path, value in reference.items():
        value64 = run.values.get(path)
        if value64 is None or len(value64) != len(value):
            continue
        try:
            noise[path] = max(compute_metrics(r64, r).scale_rel for r64, r in zip(value64, value))
        except ValueError:
            continue
    return noise
