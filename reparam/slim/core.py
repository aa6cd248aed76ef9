"""ScaleNet's data-driven neuron allocation: slim a seed network's SA blocks to a MAC budget by BN γ."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from reparam.checkpoint import build_model
from reparam.errors import InternalError
from reparam.profile import count_macs, count_params
from reparam.slim.budget import parse_budget
from reparam.slim.select import WITHIN, Selection, select_channels
from reparam.slim.surgery import allocations, check_allocation, copy_weights, slim_kwargs, structure_of
from reparam.slim.units import SAUnit, check_batchnorms, find_units, measure
from reparam.verify.inputs import default_input_shape


@dataclass
class SlimResult:
    """The slim model, how to rebuild it, its structure and the allocation report."""

    model: nn.Module
    arch: str
    arch_kwargs: dict[str, Any]
    structure: list[list[int]]
    report: dict[str, Any]


def slim_model(
    model: nn.Module,
    arch: str,
    arch_kwargs: Mapping[str, Any] | None,
    budget: float | str,
    *,
    input_shape: tuple[int, ...] | None = None,
    reinit: bool = False,
) -> SlimResult:
    """Keep the SA channels with the largest BN |γ| network-wide so that the model meets ``budget`` MACs.

    ``budget``: a fraction of the seed's MACs (0.6) or a count with a unit ("3.8G"). ``arch`` and
    ``arch_kwargs`` must rebuild ``model``; the slim model is rebuilt with the new allocation and,
    unless ``reinit``, takes the seed's kept weights. MACs are counted on one input of ``input_shape``
    (default 1×C×224×224).
    """
    seed = copy.deepcopy(model).eval()
    units = find_units(seed)
    check_batchnorms(units)
    example = torch.randn(
        input_shape or default_input_shape(seed), generator=torch.Generator().manual_seed(0)
    )
    seed_macs = measure(seed, units, example)
    budget_macs = parse_budget(budget, seed_macs)
    selection = select_channels(units, seed_macs, budget_macs)
    allocs = allocations(units, selection)
    kwargs = slim_kwargs(arch_kwargs or {}, units, allocs)
    slim = build_model(arch, kwargs).eval()
    new_units = find_units(slim)
    check_allocation(new_units, allocs)
    if not reinit:
        copy_weights(seed, slim, units, new_units, selection)
    macs = count_macs(slim, (example,))
    if macs != selection.predicted_macs:
        raise InternalError(f"slim predicted {selection.predicted_macs} MACs, the model has {macs}")
    report = build_report(seed, slim, units, selection, allocs, budget, budget_macs, seed_macs, macs)
    report.update(arch=arch, input_shape=list(example.shape), reinit=reinit)
    return SlimResult(slim, arch, kwargs, structure_of(units, allocs), report)


def _dead_removed(units: list[SAUnit], selection: Selection) -> int:
    n = 0
    for unit, kept in zip(units, selection.kept):
        for b in range(len(unit.sa.branches)):
            gamma = unit.branch_parts(b)[1].weight.detach()
            removed = torch.ones_like(gamma, dtype=torch.bool)
            removed[kept[b]] = False
            n += int((removed & (gamma == 0)).sum())
    return n


def build_report(
    seed: nn.Module,
    slim: nn.Module,
    units: list[SAUnit],
    selection: Selection,
    allocs: list[list[int]],
    budget: float | str,
    budget_macs: int,
    seed_macs: int,
    macs: int,
) -> dict[str, Any]:
    """Budget, MACs, parameters and per-block channels before/after, as plain JSON-able values."""
    shortfall = (budget_macs - macs) / budget_macs
    blocks = [
        {
            "index": k,
            "path": unit.path,
            "side": unit.side,
            "scales": list(unit.sa.all_scales),
            "before": list(unit.sa.allocation),
            "after": alloc,
        }
        for k, (unit, alloc) in enumerate(zip(units, allocs))
    ]
    before, after = sum(sum(b["before"]) for b in blocks), sum(sum(b["after"]) for b in blocks)
    return {
        "budget": budget if isinstance(budget, str) else float(budget),
        "budget_macs": budget_macs,
        "seed_macs": seed_macs,
        "macs": macs,
        "macs_fraction_of_seed": macs / seed_macs,
        "shortfall_fraction_of_budget": shortfall,
        "within_2_percent": shortfall <= WITHIN,
        "next_channel_macs": selection.next_cost,  # the best-ranked channel that did not fit
        "kept_out_of_rank_order": selection.out_of_order,
        # More than 2 % short only when no remaining channel fits in what is left of the budget.
        "granularity_limited": shortfall > WITHIN,
        "seed_params": count_params(seed),
        "params": count_params(slim),
        "sa_channels_before": before,
        "sa_channels_after": after,
        "removed_dead_channels": _dead_removed(units, selection),
        "blocks": blocks,
    }
