"""Locate the first block whose output diverges between the training model and a candidate.

Block values come from :mod:`reparam.equivalence.capture` (paired through
:class:`~reparam.equivalence.boundaries.Boundaries`); the reference's hook order is the execution
order of the report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from reparam.equivalence.capture import BlockValue
from reparam.equivalence.compare import BlockError, Divergence
from reparam.equivalence.metrics import OutputMetrics, compute_metrics
from reparam.equivalence.tolerance import Tolerance, ToleranceProfile, judge, make_tolerance


def block_metrics(reference: BlockValue, candidate: BlockValue) -> OutputMetrics:
    """Metrics of a block's worst output (largest scale-relative error); ValueError when they do not pair."""
    if len(reference) != len(candidate) or not reference:
        raise ValueError(f"{len(reference)} reference outputs vs {len(candidate)} candidate outputs")
    worst = None
    for r, c in zip(reference, candidate):
        m = compute_metrics(r, c)
        if worst is None or _badness(m) > _badness(worst):
            worst = m
    return worst


def _badness(m: OutputMetrics) -> float:
    return np.inf if m.nonfinite or not np.isfinite(m.scale_rel) else m.scale_rel


def locate_divergence(
    reference: Mapping[str, BlockValue],
    candidate: Mapping[str, BlockValue],
    order: Sequence[str],
    tolerance: str | ToleranceProfile | Tolerance = "fp32",
    *,
    output_failed: bool = True,
    noise: Mapping[str, float] | None = None,
) -> Divergence:
    """Compare block outputs in execution order; the first one failing the profile is the culprit.

    Only the profile's scale-relative and cosine limits apply to blocks (top-1 and per-output
    elementwise overrides are about final outputs). ``noise``: the reference's fp32 noise floor
    per block, which raises the scale-relative limit like it does for outputs.
    """
    tol = make_tolerance(make_tolerance(tolerance).profile)
    div = Divergence()
    first_reasons: list[str] = []
    for path in order:
        if path not in reference or path not in candidate:
            continue
        try:
            m = block_metrics(reference[path], candidate[path])
        except ValueError:
            div.blocks.append(BlockError(path, float("nan"), float("nan"), float("nan"), False))
        else:
            m.ref_noise = (noise or {}).get(path)
            reasons = judge(m, tol, path, use_top1=False)
            div.blocks.append(BlockError(path, m.scale_rel, m.cosine, m.max_abs, not reasons, m.ref_noise))
            if reasons and div.first_diverging is None:
                first_reasons = reasons
        if not div.blocks[-1].passed and div.first_diverging is None:
            div.first_diverging = path
    if not div.blocks:
        div.note = "no block boundary could be matched between the reference and this candidate"
    elif div.first_diverging is not None and not output_failed:
        block = next(b for b in div.blocks if b.name == div.first_diverging)
        why = "; ".join(first_reasons) or f"scale-relative {block.scale_rel:.3g}"
        div.note = (
            f"warning: the outputs are within the {tol.profile.name} tolerance, but block {block.name} "
            f"exceeds the {tol.profile.name} limit for its own output ({why}): a difference there is "
            "damped before the output"
        )
    elif div.first_diverging is None and output_failed:
        worst = max(div.blocks, key=lambda b: b.scale_rel if np.isfinite(b.scale_rel) else np.inf)
        div.note = (
            f"no single block output exceeds the tolerance; the error grows gradually "
            f"(largest at {worst.name}: scale-relative {worst.scale_rel:.3g})"
        )
    return div
