"""slim: budgets met, γ ranking, exact dead-channel removal, rebuild/round trip, conversion."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import reparam
from reparam.blocks import SABlock
from reparam.equivalence import fp32_noise
from reparam.errors import ReparamError
from reparam.numerics import fp32_limit, scale_relative_error
from reparam.profile import count_macs
from reparam.slim import parse_budget, slim_model
from reparam.slim.select import select_channels
from reparam.slim.units import find_units, measure, scores
from reparam.zoo import create_model
from tests.slim.conftest import PROJECT_KW, PUBLISHED_KW, SHAPE, make_seed

X = torch.randn(4, *SHAPE[1:], generator=torch.Generator().manual_seed(5))


def _allocs(model) -> list[tuple[int, ...]]:
    return [m.allocation for m in model.modules() if isinstance(m, SABlock)]


@pytest.mark.parametrize("kwargs", [PUBLISHED_KW, PROJECT_KW], ids=["published", "project"])
@pytest.mark.parametrize("budget", [0.5, 0.8, "1.1M"])
def test_budget_met_on_random_seeds(kwargs, budget):
    for seed in (1, 2):
        model = make_seed(kwargs, seed)
        result = slim_model(model, "scalenet50", kwargs, budget, input_shape=SHAPE)
        r = result.report
        assert r["budget_macs"] == parse_budget(budget, count_macs(model, (torch.randn(SHAPE),)))
        assert r["macs"] == count_macs(result.model, (torch.randn(SHAPE),))
        assert r["macs"] <= r["budget_macs"]
        assert r["within_2_percent"] or r["granularity_limited"]
        assert r["sa_channels_after"] < r["sa_channels_before"]


def test_ranking_keeps_the_largest_gammas(published_seed):
    units = find_units(published_seed)
    macs = measure(published_seed, units, torch.randn(SHAPE))
    sel = select_channels(units, macs, int(0.5 * macs))
    assert sel.out_of_order == 0
    kept, removed, block_best = [], [], set()
    for unit, unit_kept in zip(units, sel.kept):
        flat = torch.cat(scores(unit))
        block_best.add(float(flat.max()))
        for s, k in zip(scores(unit), unit_kept):
            mask = torch.zeros(len(s), dtype=torch.bool)
            mask[k] = True
            kept += s[mask].tolist()
            removed += s[~mask].tolist()
    assert removed and kept
    # Every kept channel outranks every removed one, except each block's forced best channel.
    assert min(g for g in kept if g not in block_best) >= max(removed)


def test_a_scale_with_large_gammas_survives(published_seed):
    model = copy.deepcopy(published_seed)
    unit = find_units(model)[5]
    with torch.no_grad():
        for b in range(len(unit.sa.branches)):
            unit.branch_parts(b)[1].weight.mul_(0.01 if b != 2 else 100.0)
    result = slim_model(model, "scalenet50", PUBLISHED_KW, 0.5, input_shape=SHAPE)
    assert result.structure[5][:4] == [0, 0, 8, 0]


def _kill(model, channels: dict[int, list[tuple[int, int]]]) -> int:
    """Zero γ of (branch, channel) pairs in the given units; return how many."""
    units = find_units(model)
    with torch.no_grad():
        for u, pairs in channels.items():
            for b, c in pairs:
                units[u].branch_parts(b)[1].weight[c] = 0.0
    return sum(len(p) for p in channels.values())


@pytest.mark.parametrize("kwargs", [PUBLISHED_KW, PROJECT_KW], ids=["published", "project"])
def test_dead_channels_are_removed_exactly(kwargs):
    model = make_seed(kwargs, 3)
    # Includes the whole of one scale of block 14 (the branch disappears) and channels with β > 0.
    dead = {0: [(0, 1), (3, 4)], 7: [(1, 0), (1, 7), (2, 2)], 14: [(2, c) for c in range(8)] + [(0, 5)]}
    n = _kill(model, dead)
    units = find_units(model)
    seed_macs = measure(model, units, torch.randn(SHAPE))
    dead_cost = sum((units[u].conv_cost[b] + units[u].consumer_cost) for u, p in dead.items() for b, _ in p)
    budget = f"{(seed_macs - dead_cost) / 1e3}K"
    result = slim_model(model, "scalenet50", kwargs, budget, input_shape=SHAPE)
    assert result.report["removed_dead_channels"] == n
    assert result.report["sa_channels_after"] == result.report["sa_channels_before"] - n
    assert result.report["macs"] == seed_macs - dead_cost
    with torch.no_grad():
        ref, out = model(X), result.model(X)
    limit = fp32_limit(fp32_noise(model, (X,), ref))
    assert scale_relative_error(ref, out) <= limit
    # Without the folded constants the outputs do differ: the fold is what makes the removal exact.
    unfolded = copy.deepcopy(result.model)
    seed_bns = [u.consumer_bn for u in find_units(model)]
    with torch.no_grad():
        for unit, bn in zip(find_units(unfolded), seed_bns):
            unit.consumer_bn.running_mean.copy_(bn.running_mean)
        assert scale_relative_error(ref, unfolded(X)) > 100 * limit


def test_slim_model_rebuilds_from_its_kwargs_and_structure(published_seed):
    result = slim_model(published_seed, "scalenet50", PUBLISHED_KW, 0.6, input_shape=SHAPE)
    again = create_model("scalenet50", **result.arch_kwargs)
    again.load_state_dict(result.model.state_dict())
    from_structure = create_model(
        "scalenet50", **{**PUBLISHED_KW, "structure": json.loads(json.dumps(result.structure))}
    ).eval()
    assert _allocs(from_structure) == _allocs(result.model)
    assert count_macs(from_structure, (X[:1],)) == result.report["macs"]
    with torch.no_grad():
        assert torch.equal(again.eval()(X), result.model(X))


def test_project_form_rebuilds_with_channels_per_scale(project_seed):
    result = slim_model(project_seed, "scalenet50", PROJECT_KW, 0.5, input_shape=SHAPE)
    assert "structure" not in result.arch_kwargs
    assert [tuple(a) for a in result.arch_kwargs["channels_per_scale"]] == _allocs(result.model)
    assert [tuple(e[:4]) for e in result.structure] == _allocs(result.model)
    assert [e[4] for e in result.structure] == [8] * 3 + [4] * 4 + [2] * 6 + [1] * 3  # measured sides


def test_kept_weights_are_copied_and_reinit_starts_fresh(published_seed):
    kept = slim_model(published_seed, "scalenet50", PUBLISHED_KW, 0.6, input_shape=SHAPE)
    fresh = slim_model(published_seed, "scalenet50", PUBLISHED_KW, 0.6, input_shape=SHAPE, reinit=True)
    assert kept.structure == fresh.structure
    seed_sd, kept_sd, fresh_sd = (
        published_seed.state_dict(),
        kept.model.state_dict(),
        fresh.model.state_dict(),
    )
    assert torch.equal(kept_sd["stem.conv.conv.weight"], seed_sd["stem.conv.conv.weight"])
    assert not torch.equal(fresh_sd["stem.conv.conv.weight"], seed_sd["stem.conv.conv.weight"])
    # A kept SA channel carries the seed's filter.
    seed_unit, slim_unit = find_units(published_seed)[0], find_units(kept.model)[0]
    seed_filters = seed_unit.branch_parts(0)[0].weight
    slim_filter = slim_unit.branch_parts(0)[0].weight[0]
    assert any(torch.equal(slim_filter, f) for f in seed_filters)


def test_slim_model_converts(published_seed):
    result = slim_model(published_seed, "scalenet50", PUBLISHED_KW, 0.6, input_shape=SHAPE)
    deploy = reparam.reparameterize(result.model, (X[:2],))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in deploy.modules())
    assert deploy.reparam_report.check.passed


@pytest.mark.parametrize("budget", [0, -0.5, 1.5, "2", "lots", "0G", "1T", True])
def test_bad_budgets(published_seed, budget):
    with pytest.raises(ReparamError, match="budget"):
        slim_model(published_seed, "scalenet50", PUBLISHED_KW, budget, input_shape=SHAPE)


def test_budget_below_the_smallest_network(published_seed):
    with pytest.raises(ReparamError, match="smallest network"):
        slim_model(published_seed, "scalenet50", PUBLISHED_KW, 0.01, input_shape=SHAPE)


def test_model_without_sa_blocks():
    model = create_model("resnet18", width=0.125, num_classes=10)
    with pytest.raises(ReparamError, match="no SA"):
        slim_model(model, "resnet18", {"width": 0.125, "num_classes": 10}, 0.5, input_shape=SHAPE)
