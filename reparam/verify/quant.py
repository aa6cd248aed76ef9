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

With per-channel weight scales (what ``reparam quantize`` writes) the weights survive such a
spread, but the fused layer's output channels then differ in scale by the same ratio and share one
per-tensor activation scale at the next layer's input: the spread moves to the activations.

For each fused layer the range is traced back to the original branches (rewrite record ``sources``):
each branch's folded kernel (conv x BN gain ``gamma / sqrt(var + eps)``; a lone BN is the identity
branch) is rebuilt, and when the branches sum to the fused kernel the ratio without each branch
says which one widened it. The culprit and its factor (BN gain or conv weights) are named in
``LayerRisk.culprit`` / ``explain()``, with the known remedies.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from reparam.equivalence import judge_outputs, profile_for_dtype
from reparam.kernel_math import identity_kernel, pad_kernel

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
    branches: list[BranchRange] = field(default_factory=list)
    culprit: str | None = None
    reason: str = ""
    remedies: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def explain(self, remedies: bool = True) -> str:
        """One line: the layer, its spread, the branch behind it and (optionally) the remedies."""
        text = f"{self.fused}: per-channel range max/median {self.after_ratio:.3g}"
        if self.before_ratio is not None:
            text += f" (the trained {self.source} had {self.before_ratio:.3g})"
        if self.culprit:
            text += f"; widened by {self.culprit}: {self.reason}"
        if remedies and self.remedies:
            text += ". Remedies: " + "; ".join(self.remedies)
        return text


@dataclass
class BranchRange:
    """One original branch of a fused layer: its folded per-channel range and what drives it."""

    branch: str
    kind: str  # "conv+bn", "conv" or "identity bn"
    ratio: float  # max / median of the branch's own per-channel range
    top_channels: list[int]
    gain_max: float | None = None  # |gamma / sqrt(var + eps)| of its BN
    gain_median: float | None = None
    weight_ratio: float | None = None  # max / median of the conv's own per-channel range
    ratio_without: float | None = None  # fused ratio with this branch removed (exact decomposition only)


def channel_ranges(weight: torch.Tensor | np.ndarray) -> np.ndarray:
    """``max|w|`` per output channel (axis 0)."""
    if isinstance(weight, torch.Tensor):
        # max and min are exact in the weight's own dtype: cast the C ranges, not the whole kernel
        w = weight.detach().cpu()
        low, high = torch.aminmax(w.reshape(w.shape[0], -1), dim=1)
        return torch.maximum(high, -low).double().numpy()
    w = np.asarray(weight, float)
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


Named = list[tuple[str, nn.Module]]  # a model's named_modules(), walked once per table


def _square_source_weight(named: Named, sources: list[str]) -> tuple[str | None, torch.Tensor | None]:
    """The largest square conv kernel among the source modules (the d x d branch of ACB/RepVGG)."""
    modules = dict(named)
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


def _fused_module(deploy: nn.Module, fused: str) -> nn.Module | None:
    for candidate in (fused, fused.replace(".", "_")):
        try:
            m = deploy.get_submodule(candidate)
        except AttributeError:
            continue
        w = getattr(m, "weight", None)
        if isinstance(w, torch.Tensor) and w.dim() >= 2:
            return m
    return None


def _fused_weight(deploy: nn.Module, fused: str) -> torch.Tensor | None:
    m = _fused_module(deploy, fused)
    return m.weight if m is not None else None


def _leaf_sources(named: Named, sources: list[str]) -> list[tuple[str, nn.Module]]:
    """Conv2d / BatchNorm2d modules at or under the source paths, in the model's definition order."""
    roots = tuple(sources)
    return [
        (name, m)
        for name, m in named
        if isinstance(m, nn.Conv2d | nn.BatchNorm2d)
        and any(name == r or name.startswith(r + ".") for r in roots)
    ]


def _parent(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def _branches(leaves: list[tuple[str, nn.Module]]) -> dict[str, dict[str, nn.Module]]:
    """Group leaves into branches: a BN joins the unpaired conv defined before it in the same parent
    (``rbr_dense.0`` + ``rbr_dense.1``, ``square_conv`` + ``square_bn``); a BN without one is the
    identity branch. A branch that is the whole of a numbered container is named by the container."""
    out: dict[str, dict[str, nn.Module]] = {}
    pending: dict[str, str] = {}
    for name, m in leaves:
        if isinstance(m, nn.Conv2d):
            pending[_parent(name)] = name
            out[name] = {"conv": m}
        elif (conv := pending.pop(_parent(name), None)) is not None:
            out[conv]["bn"] = m
        else:
            out[name] = {"bn": m}
    per_parent = Counter(_parent(n) for n in out)
    named = {}
    for name, parts in out.items():
        numbered = name.rsplit(".", 1)[-1].isdigit() and per_parent[_parent(name)] == 1
        named[_parent(name) if numbered else name] = parts
    return named


def _bn_gain(bn: nn.BatchNorm2d) -> torch.Tensor:
    gain = torch.rsqrt(bn.running_var.detach().double() + bn.eps)
    return gain * bn.weight.detach().double() if bn.weight is not None else gain


def _branch_kernel(parts: dict[str, nn.Module], fused: nn.Conv2d) -> torch.Tensor | None:
    """The branch's folded kernel in the fused kernel's shape, or None when it cannot be placed."""

    size = tuple(fused.weight.shape[2:])
    conv, bn = parts.get("conv"), parts.get("bn")
    try:
        if conv is not None:
            if conv.groups != fused.groups or conv.dilation != fused.dilation:
                return None
            k = conv.weight.detach().double()
            k = pad_kernel(k, size) if tuple(k.shape[2:]) != size else k
        else:
            k = identity_kernel(fused.out_channels, fused.groups, size, dtype=torch.float64)
    except ValueError:
        return None
    if bn is not None:
        k = k * _bn_gain(bn).reshape(-1, 1, 1, 1)
    return k if k.shape == fused.weight.shape else None


def _describe_branch(name: str, parts: dict[str, nn.Module], channels: int) -> BranchRange | None:
    conv, bn = parts.get("conv"), parts.get("bn")
    gain = _bn_gain(bn).abs().numpy() if bn is not None else None
    weight = channel_ranges(conv.weight) if conv is not None else None
    if conv is None:
        ranges, kind = gain, "identity bn"
    else:
        ranges = weight * gain if gain is not None else weight
        kind = "conv+bn" if gain is not None else "conv"
    if ranges is None or ranges.shape[0] != channels:
        return None
    order = np.argsort(-ranges)
    floor = ELEVATED_RATIO * max(float(np.median(ranges)), 1e-30)
    top = [int(c) for c in order[:8] if ranges[c] >= floor]
    return BranchRange(
        branch=name,
        kind=kind,
        ratio=range_ratio(ranges),
        top_channels=top or [int(order[0])],
        gain_max=float(gain.max()) if gain is not None else None,
        gain_median=float(np.median(gain)) if gain is not None else None,
        weight_ratio=range_ratio(weight) if weight is not None else None,
    )


def attribute(
    original: nn.Module,
    fused: nn.Module,
    sources: list[str],
    *,
    decompose: bool = True,
    named: Named | None = None,
) -> list[BranchRange]:
    """Per-branch ranges of a fused conv; with ``decompose``, ``ratio_without`` is set when the
    branches sum to its kernel (a float64 rebuild of every branch: only worth it where a culprit
    is to be named). ``named``: ``original.named_modules()`` when the caller has walked it."""
    if not isinstance(fused, nn.Conv2d):
        return []
    groups = _branches(_leaf_sources(named if named is not None else list(original.named_modules()), sources))
    described = {n: _describe_branch(n, p, fused.out_channels) for n, p in groups.items()}
    branches = {n: b for n, b in described.items() if b is not None}
    if not decompose:
        return list(branches.values())
    kernels = {n: _branch_kernel(groups[n], fused) for n in branches}
    target = fused.weight.detach().double()
    if branches and all(k is not None for k in kernels.values()):
        total = sum(kernels.values())
        # the branches sum to the fused kernel by the rule of the fused layer's dtype (the one judge),
        # which reads the float64 kernels as they are (named arrays are not copied)
        verdict = judge_outputs(
            {"output": target.numpy()}, {"output": total.numpy()}, profile_for_dtype(fused.weight.dtype)
        )
        if verdict.passed:
            for n, b in branches.items():
                b.ratio_without = range_ratio(channel_ranges(target - kernels[n]))
    return list(branches.values())


REMEDIES = {
    "bn": [
        "keep the layer reading these channels float (reparam quantize `target`/`exclude`)",
        "calibrate with `method` percentile or entropy so outlier channels do not set the activation scale",
        "train a quantization-friendly form (QARepVGG: no BN on the identity and 1x1 branches) or "
        "quantization-aware training",
    ],
    "weights": [
        "per-channel weight scales (reparam quantize uses them)",
        "keep this layer float (reparam quantize `exclude`) or quantization-aware training",
    ],
}


def _blame(branches: list[BranchRange], after_ratio: float) -> tuple[BranchRange | None, str, list[str]]:
    """The branch that widened the fused range, why, and what helps."""
    if not branches:
        return None, "", []
    exact = all(b.ratio_without is not None for b in branches)
    if exact:
        culprit = min(branches, key=lambda b: b.ratio_without)
        if culprit.ratio_without >= after_ratio * 0.8:  # no single branch explains the spread
            return None, "", REMEDIES["weights"]
    else:
        culprit = max(branches, key=lambda b: b.ratio)
    gain_driven = culprit.gain_max is not None and (
        culprit.weight_ratio is None or range_ratio_of_gain(culprit) >= culprit.weight_ratio
    )
    if gain_driven:
        reason = (
            f"BN gain |gamma/sqrt(var+eps)| up to {culprit.gain_max:.3g} (median {culprit.gain_median:.3g}) "
            f"on channels {culprit.top_channels}"
        )
    else:
        reason = f"conv weights with per-channel range max/median {culprit.weight_ratio:.3g}"
    if culprit.ratio_without is not None:
        reason += f"; without this branch the ratio would be {culprit.ratio_without:.3g}"
    return culprit, reason, REMEDIES["bn" if gain_driven else "weights"]


def range_ratio_of_gain(branch: BranchRange) -> float:
    """max / median of a branch's BN gain."""
    if branch.gain_max is None or not branch.gain_median:
        return 1.0
    return branch.gain_max / branch.gain_median


def quantization_risk(original: nn.Module, deploy: nn.Module, record) -> list[LayerRisk]:
    """One LayerRisk per fused layer of ``record`` (a RewriteRecord) whose weights can be found."""
    risks: list[LayerRisk] = []
    seen: set[str] = set()
    named = list(original.named_modules())
    for entry in getattr(record, "entries", []):
        if entry.fused in seen:
            continue
        after_w = _fused_weight(deploy, entry.fused)
        if after_w is None:
            continue
        seen.add(entry.fused)
        after = channel_ranges(after_w)
        src_name, before_w = _square_source_weight(named, list(entry.sources))
        before = (
            channel_ranges(before_w) if before_w is not None and before_w.shape[0] == after.shape[0] else None
        )
        before_ratio = range_ratio(before) if before is not None else None
        after_ratio = range_ratio(after)
        risk = classify(after_ratio)
        try:
            module = _fused_module(deploy, entry.fused)
            branches = attribute(original, module, list(entry.sources), decompose=risk != "low", named=named)
        except Exception:  # attribution is a diagnostic: an unusual source layout must not hide the table
            branches = []
        culprit, reason, remedies = _blame(branches, after_ratio) if risk != "low" else (None, "", [])
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
                risk=risk,
                branches=branches,
                culprit=culprit.branch if culprit else None,
                reason=reason,
                remedies=remedies,
            )
        )
    return risks
