"""``expand``: turn a plain CNN into its multi-branch training form (ACNet's "architecture-neutral" step)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

from reparam.engine.inputs import make_inputs
from reparam.equivalence import fp32_noise, judge_error, output_error
from reparam.errors import InternalError, MismatchError, ReparamError
from reparam.expansion.block import ExpandedConv
from reparam.expansion.find import Site, Skipped, find_sites, traced_parts
from reparam.expansion.schemes import branch_specs, build_branch, check_scheme
from reparam.expansion.structure import conv_layout
from reparam.tensors import eval_mode, module_dtype

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


class Expansion(NamedTuple):
    """The expanded model and the report (unpacks as ``model, report``)."""

    model: nn.Module
    report: ExpandReport


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
            "try another --scheme",
        )
    return report


@torch.no_grad()
def eval_outputs(model: nn.Module, inputs: tuple) -> Any:
    """``model(*inputs)`` in eval mode, leaving each submodule's train/eval mode as it was."""
    with eval_mode(model):
        return model(*inputs)


def within_fp32_rule(model: nn.Module, inputs: tuple, reference: Any, rel: float) -> bool:
    """Whether a scale-relative error against ``model``'s output ``reference`` passes the fp32 rule (NaN fails)."""
    dtype, _ = module_dtype(model)
    return judge_error(rel, dtype, lambda: fp32_noise(model, inputs, reference)).passed


def _check_preserved(plain: nn.Module, expanded: nn.Module, inputs: tuple, report: ExpandReport) -> None:
    reference = eval_outputs(plain, inputs)
    rel = output_error(reference, eval_outputs(expanded, inputs)).scale_rel
    report.preserve_error = rel
    if not within_fp32_rule(plain, inputs, reference, rel):
        raise MismatchError(
            f"the expanded model does not compute what the plain model computes (scale-relative error {rel:.3g})",
            hint="report the model: expansion with init='preserve' should be exact",
        )


def _check_roundtrip(plain: nn.Module, expanded: nn.Module, inputs: tuple, report: ExpandReport) -> None:
    from reparam.engine import convert

    with eval_mode(plain, expanded):
        fused = convert(expanded, inputs)  # raises MismatchError when the fusion is not exact
        plain_deploy = convert(plain, inputs, check=False).model
    report.roundtrip_error = fused.report.check.relative_error if fused.report.check else None
    report.roundtrip_layout = conv_layout(fused.model) == conv_layout(plain_deploy)
    if not report.roundtrip_layout:
        raise InternalError("the fused expanded model does not have the plain model's conv layout")


def expand(
    model: nn.Module,
    scheme: str = "acb",
    *,
    init: str = "preserve",
    example_inputs: Any = None,
    input_shape: Sequence[int] | None = None,
    check: bool = True,
    inplace: bool = False,
) -> Expansion:
    """Replace every conv (+ BN) the scheme fits, found by dataflow, with its training-time block.

    ``scheme``: ``acb`` | ``repvgg`` | ``dbb`` (see ``reparam.expansion.SCHEMES``). ``init="preserve"``
    keeps the original conv and BN and starts each new branch at zero contribution (BN gamma = 0),
    so the expanded model computes what the plain one does; ``"fresh"`` gives new branches
    PyTorch's default initialisation (gamma = 1), for training from scratch. With ``check``, the
    expanded model is run on ``example_inputs`` (or random inputs of ``input_shape``): under
    ``preserve`` it must match the plain model, and its fusion must have the plain conv layout.
    """
    work = model if inplace else copy.deepcopy(model)
    report = expand_structure(work, scheme, init)
    if check:
        inputs, _ = make_inputs(model, example_inputs, input_shape)
        if inputs is None:
            raise ReparamError(
                "cannot check the expansion: no example inputs and no input shape could be inferred",
                hint="pass example_inputs or input_shape (--input-shape), or check=False",
            )
        if init == "preserve":
            _check_preserved(model, work, inputs, report)
        _check_roundtrip(model, work, inputs, report)
    return Expansion(work, report)
