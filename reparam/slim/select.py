"""Global γ ranking and top-k selection under a MAC budget."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reparam.errors import ReparamError
from reparam.slim.units import SAUnit, scores

WITHIN = 0.02  # the budget is met from below within 2 % unless no remaining channel fits


@dataclass
class Selection:
    """Kept channel indices per unit and kept branch, and the MACs the selection predicts."""

    kept: list[list[torch.Tensor]]
    predicted_macs: int
    next_cost: int | None  # cost of the best-ranked channel that did not fit (None: all kept)
    out_of_order: int = 0  # channels kept below that one in rank, to come within 2 % of the budget


def _candidates(units: list[SAUnit]) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int, int]]]:
    """Scores, costs and (unit, branch, channel) of every SA channel, in a fixed order."""
    score_list, cost_list, where = [], [], []
    for u, unit in enumerate(units):
        for b, s in enumerate(scores(unit)):
            score_list.append(s)
            cost_list.append(torch.full_like(s, unit.conv_cost[b] + unit.consumer_cost, dtype=torch.int64))
            where += [(u, b, c) for c in range(len(s))]
    return torch.cat(score_list), torch.cat(cost_list), where


def select_channels(units: list[SAUnit], seed_macs: int, budget: int) -> Selection:
    """Keep the top-|γ| channels across all SA blocks while the network's MACs stay within ``budget``.

    Every block keeps at least its best channel (an SA block needs one); after those, channels are
    taken in global rank order until the next one would exceed the budget (the paper's top-k). If
    that stops more than 2 % short, the best-ranked channels that still fit fill the gap.
    """
    score, cost, where = _candidates(units)
    fixed = seed_macs - int(cost.sum())
    take = torch.zeros(len(where), dtype=torch.bool)
    start = 0
    for unit_scores in (scores(u) for u in units):
        flat = torch.cat(unit_scores)
        take[start + int(torch.argmax(flat))] = True
        start += len(flat)
    used = fixed + int(cost[take].sum())
    if used > budget:
        raise ReparamError(
            f"the MAC budget {budget:,} is below the smallest network slim can make ({used:,} MACs: "
            "everything outside the SA blocks plus one channel per block)",
            hint="raise the budget",
        )
    # Stable sort: equal scores keep network order, so the result does not depend on sort internals.
    order = torch.sort(-score, stable=True).indices
    next_cost, out_of_order, slack = None, 0, int(budget * WITHIN)
    for i in order.tolist():
        if take[i]:
            continue
        c = int(cost[i])
        if used + c > budget:
            next_cost = c if next_cost is None else next_cost
            if budget - used <= slack:
                break
            continue  # top-k stopped short by more than 2 %: fill with the best channels that still fit
        if next_cost is not None:
            if budget - used <= slack:
                break
            out_of_order += 1
        take[i] = True
        used += c
    kept: list[list[list[int]]] = [[[] for _ in u.sa.branches] for u in units]
    for i in torch.nonzero(take).flatten().tolist():
        u, b, c = where[i]
        kept[u][b].append(c)
    return Selection(
        kept=[[torch.tensor(sorted(ch), dtype=torch.long) for ch in unit] for unit in kept],
        predicted_macs=used,
        next_cost=next_cost,
        out_of_order=out_of_order,
    )
