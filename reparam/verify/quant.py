"""Quantization risk of fused layers: how uneven the per-output-channel weight ranges are.

Per-tensor int8 uses one scale for a whole kernel, ``max|w| / 127``. A channel whose range
``max|w_c|`` is r times smaller than the largest gets only ~127/r levels. Folding BatchNorm scales
each channel by ``gamma / sqrt(var + eps)`` and RepVGG adds the identity branch at the kernel's
centre; both can spread the channel ranges much wider than the trained 3x3 kernel had (the known
RepVGG int8 accuracy drop). The metric is ``max / median`` of the per-channel ranges:

- ``high``: ratio >= 10 after fusion -- the median channel keeps fewer than ~13 of 127 levels
  under per-tensor int8; expect an accuracy loss unless weights are quantized per channel.
- ``elevated``: ratio >= 4 (median channel < ~32 levels).
- ``low``: otherwise. ``growth`` (ratio after / ratio before) is reported to show what fusion did,
  but does not raise the level by itself: going from 1.1 to 2.5 still leaves ~50 levels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

HIGH_RATIO = 10.0
ELEVATED_RATIO = 4.0


@dataclass
class LayerRisk:
    """Per-channel weight-range statistics of one fused layer, before and after fusion."""

    fused: str
    source: str | None
    channels: int
    before_max: float | None
    before_ratio: float | None
    after_max: float
    after_ratio: float
    growth: float | None
    risk: str

    def to_dict(self) -> dict:
        return asdict(self)


def channel_ranges(weight: torch.Tensor | np.ndarray) -> np.ndarray:
    """``max|w|`` per output channel (axis 0)."""
    w = (
        weight.detach().cpu().double().numpy()
        if isinstance(weight, torch.Tensor)
        else np.asarray(weight, float)
    )
    return np.abs(w.reshape(w.shape[0], -1)).max(axis=1)


def range_ratio(ranges: np.ndarray) -> float:
    """``max / median`` of channel ranges (inf when the median channel is all zero)."""
    med = float(np.median(ranges))
    top = float(np.max(ranges))
    if med == 0.0:
        return float("inf") if top > 0.0 else 1.0
    return top / med


def classify(after_ratio: float) -> str:
    """Risk level from the documented thresholds."""
    if after_ratio >= HIGH_RATIO:
        return "high"
    if after_ratio >= ELEVATED_RATIO:
        return "elevated"
    return "low"


def _square_source_weight(original: nn.Module, sources: list[str]) -> tuple[str | None, torch.Tensor | None]:
    """The largest square conv kernel among the source modules (the d x d branch of ACB/RepVGG)."""
    modules = dict(original.named_modules())
    best: tuple[int, str, torch.Tensor] | None = None
    for src in sources:
        root = modules.get(src)
        if root is None:
            continue
        for sub_name, m in root.named_modules():
            if isinstance(m, nn.Conv2d) and m.kernel_size[0] == m.kernel_size[1]:
                area = m.kernel_size[0] * m.kernel_size[1]
                if best is None or area > best[0]:
                    best = (area, f"{src}.{sub_name}" if sub_name else src, m.weight)
    return (best[1], best[2]) if best else (None, None)


def _fused_weight(deploy: nn.Module, fused: str) -> torch.Tensor | None:
    for candidate in (fused, fused.replace(".", "_")):
        try:
            m = deploy.get_submodule(candidate)
        except AttributeError:
            continue
        w = getattr(m, "weight", None)
        if isinstance(w, torch.Tensor) and w.dim() >= 2:
            return w
    return None


def quantization_risk(original: nn.Module, deploy: nn.Module, record) -> list[LayerRisk]:
    """One LayerRisk per fused layer of ``record`` (a RewriteRecord) whose weights can be found."""
    risks: list[LayerRisk] = []
    seen: set[str] = set()
    for entry in getattr(record, "entries", []):
        if entry.fused in seen:
            continue
        after_w = _fused_weight(deploy, entry.fused)
        if after_w is None:
            continue
        seen.add(entry.fused)
        after = channel_ranges(after_w)
        src_name, before_w = _square_source_weight(original, list(entry.sources))
        before = (
            channel_ranges(before_w) if before_w is not None and before_w.shape[0] == after.shape[0] else None
        )
        before_ratio = range_ratio(before) if before is not None else None
        after_ratio = range_ratio(after)
        risks.append(
            LayerRisk(
                fused=entry.fused,
                source=src_name,
                channels=int(after.shape[0]),
                before_max=float(before.max()) if before is not None else None,
                before_ratio=before_ratio,
                after_max=float(after.max()),
                after_ratio=after_ratio,
                growth=after_ratio / before_ratio if before_ratio else None,
                risk=classify(after_ratio),
            )
        )
    return risks
