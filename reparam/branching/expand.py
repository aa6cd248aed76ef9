"""Expand a model's structure in place: each conv (+ BN) a scheme fits becomes an ExpandedConv.

No checks run here (see :func:`reparam.expansion.expand`); the zoo's ``expanded`` model is built
with this alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from reparam.branching.block import ExpandedConv
from reparam.branching.find import Site, Skipped, find_sites, traced_parts
from reparam.branching.schemes import branch_specs, build_branch, check_scheme
from reparam.errors import ReparamError

INITS = ("preserve", "fresh")


@dataclass
class ExpandedLayer:
    """One conv (+ BN) that became an :class:`ExpandedConv`."""

    path: str
    bn: str | None
    kernel: tuple[int, ...]
    branches: list[str]


@dataclass
class ExpandReport:
    """What ``expand`` did: expanded layers, convs left alone (with reasons) and the checks."""

    scheme: str
    init: str
    expanded: list[ExpandedLayer] = field(default_factory=list)
    left: list[Skipped] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    preserve_error: float | None = None
    roundtrip_error: float | None = None
    roundtrip_layout: bool | None = None

    def render(self) -> str:
        """A short human-readable summary."""
        lines = [
            f"expand ({self.scheme}, init={self.init}): {len(self.expanded)} conv(s) expanded, "
            f"{len(self.left)} left; parameters {self.params_before:,} -> {self.params_after:,}"
        ]
        for e in self.expanded:
            bn = f" + {e.bn}" if e.bn else " (bias, no BN)"
            kernel = "x".join(map(str, e.kernel))
            lines.append(f"  expanded {e.path}{bn} [{kernel}]: + {', '.join(e.branches)}")
        for s in self.left:
            lines.append(f"  left {s.where}: {s.reason}")
        if self.preserve_error is not None:
            lines.append(f"  function preserved: scale-relative error {self.preserve_error:.3g}")
        if self.roundtrip_error is not None:
            lines.append(
                f"  round trip: fused model matches the expanded one (scale-relative error "
                f"{self.roundtrip_error:.3g}); conv layout equals the plain model's: {self.roundtrip_layout}"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scheme": self.scheme,
            "init": self.init,
            "expanded": [vars(e) | {"kernel": list(e.kernel)} for e in self.expanded],
            "left": [{"where": s.where, "reason": s.reason} for s in self.left],
            "params_before": self.params_before,
            "params_after": self.params_after,
            "preserve_error": self.preserve_error,
            "roundtrip_error": self.roundtrip_error,
            "roundtrip_layout": self.roundtrip_layout,
        }


def count_params(model: nn.Module) -> int:
    """Number of parameter elements (lazy, still uninitialised parameters count as 0)."""
    return sum(
        p.numel() for p in model.parameters() if not isinstance(p, nn.parameter.UninitializedParameter)
    )


def _set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def _expand_site(model: nn.Module, site: Site, scheme: str, init: str) -> ExpandedLayer | Skipped:
    conv = model.get_submodule(site.conv)
    specs = branch_specs(scheme, conv)
    if isinstance(specs, str):
        return Skipped(site.conv, specs)
    bn = model.get_submodule(site.bn) if site.bn else None
    branches = {s.name: build_branch(s, conv, bn, init) for s in specs}
    block = ExpandedConv(conv, bn, branches, scheme)
    block.train(conv.training)
    _set_module(model, site.conv, block)
    if site.bn:
        # The BatchNorm now lives inside the block; its old place passes the block's output through.
        _set_module(model, site.bn, nn.Identity())
    return ExpandedLayer(site.conv, site.bn, tuple(conv.kernel_size), [s.name for s in specs])


def expand_structure(model: nn.Module, scheme: str, init: str = "preserve") -> ExpandReport:
    """Expand ``model`` in place (no checks); the report lists expanded and skipped convs."""
    check_scheme(scheme)
    if init not in INITS:
        shown = repr(init) if isinstance(init, str) else f"of type {type(init).__name__}"
        raise ReparamError(f"unknown init {shown}", hint=f"choose one of: {', '.join(INITS)}")
    if not isinstance(model, nn.Module):
        raise ReparamError(
            f"expected a torch.nn.Module, got {type(model).__name__}",
            hint="pass the model object, e.g. reparam.zoo.create_model('resnet18')",
        )
    report = ExpandReport(scheme, init, params_before=count_params(model))
    parts, report.left = traced_parts(model)
    sites: list[Site] = []
    for prefix, gm in parts:
        found, skipped = find_sites(gm, prefix)
        sites += found
        report.left += skipped
    for site in sites:
        done = _expand_site(model, site, scheme, init)
        if isinstance(done, Skipped):
            report.left.append(done)
        else:
            report.expanded.append(done)
    report.params_after = count_params(model)
    if not report.expanded:
        reasons = "; ".join(f"{s.where}: {s.reason}" for s in report.left[:3]) or "the model has no conv"
        raise ReparamError(
            f"no conv in {type(model).__name__} can take the {scheme!r} scheme ({reasons})",
            hint="expansion needs a conv followed by BatchNorm (or with a bias) whose kernel suits the scheme; "
            "try another `scheme`",
        )
    return report
