"""Rebuild a model with a new SA allocation and carry the kept weights over."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from reparam.errors import InternalError, ReparamError
from reparam.slim.select import Selection
from reparam.slim.units import SAUnit


def allocations(units: list[SAUnit], selection: Selection) -> list[list[int]]:
    """Per unit, the kept channel count of every scale (zeros included, in the block's scale order)."""
    out = []
    for unit, kept in zip(units, selection.kept):
        alloc = [0] * len(unit.sa.all_scales)
        for pos, channels in zip(unit.sa.scale_positions, kept):
            alloc[pos] = len(channels)
        out.append(alloc)
    return out


def structure_of(units: list[SAUnit], allocs: list[list[int]]) -> list[list[int]]:
    """The allocation as a structure: one ``[c1, c2, c3, c4, side]`` entry per SA block."""
    return [[*alloc, unit.side] for unit, alloc in zip(units, allocs)]


def slim_kwargs(
    arch_kwargs: Mapping[str, Any], units: list[SAUnit], allocs: list[list[int]]
) -> dict[str, Any]:
    """The architecture kwargs that build the slim model: ``structure`` for the published form,
    ``channels_per_scale`` for the project's form."""
    kwargs = dict(arch_kwargs)
    if all(u.sa.side is not None for u in units):
        kwargs["structure"] = structure_of(units, allocs)
        kwargs.pop("channels_per_scale", None)
    else:
        kwargs["channels_per_scale"] = allocs
    return kwargs


def _branch_map(old: SAUnit, new: SAUnit) -> list[tuple[int, int]]:
    """(old branch, new branch) pairs of the scales the slim block keeps."""
    new_branch = {p: i for i, p in enumerate(new.sa.scale_positions)}
    return [(i, new_branch[p]) for i, p in enumerate(old.sa.scale_positions) if p in new_branch]


@torch.no_grad()
def copy_weights(
    old_model: nn.Module, new_model: nn.Module, old_units, new_units, selection: Selection
) -> None:
    """Copy every weight of ``old_model`` into ``new_model``, keeping only the selected SA channels.

    A removed channel whose BN γ is exactly 0 outputs the constant ReLU(β); its contribution to the
    consumer is folded into the consumer BN's running mean, so removing it changes nothing in eval mode.
    """
    old_sd, new_sd = old_model.state_dict(), new_model.state_dict()
    done = {k for k, v in new_sd.items() if k in old_sd and old_sd[k].shape == v.shape}
    for k in done:
        new_sd[k].copy_(old_sd[k])
    new_names = {id(t): n for n, t in [*new_model.named_parameters(), *new_model.named_buffers()]}
    for old, new, kept in zip(old_units, new_units, selection.kept):
        consumer_cols, offset = [], 0
        dead_shift = torch.zeros(old.consumer.out_channels, dtype=torch.float64)
        for b, (conv, bn) in enumerate(old.branch_parts(i) for i in range(len(old.sa.branches))):
            consumer_cols.append(kept[b] + offset)
            removed = torch.ones(conv.out_channels, dtype=torch.bool)
            removed[kept[b]] = False
            dead = removed & (bn.weight == 0)
            const = torch.relu(bn.bias.double())[dead]
            dead_shift += (
                old.consumer.weight[:, offset : offset + conv.out_channels, 0, 0].double()[:, dead] @ const
            )
            offset += conv.out_channels
        for ob, nb in _branch_map(old, new):
            (oconv, obn), (nconv, nbn) = old.branch_parts(ob), new.branch_parts(nb)
            idx = kept[ob]
            for src, dst in [(oconv.weight, nconv.weight), *_bn_pairs(obn, nbn)]:
                dst.copy_(src[idx] if src.dim() else src)
                done.add(new_names.get(id(dst), ""))
        cols = torch.cat(consumer_cols)
        new.consumer.weight.copy_(old.consumer.weight[:, cols])
        new.consumer_bn.running_mean.copy_((old.consumer_bn.running_mean.double() - dead_shift).float())
        done |= {
            new_names.get(id(new.consumer.weight), ""),
            new_names.get(id(new.consumer_bn.running_mean), ""),
        }
    missing = sorted(set(new_sd) - done)
    if missing:
        raise InternalError(f"slim left weights of the new model unset: {missing[:5]}")


def _bn_pairs(old: nn.Module, new: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    names = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    return [(getattr(old, n), getattr(new, n)) for n in names if getattr(new, n, None) is not None]


def check_allocation(new_units: list[SAUnit], allocs: list[list[int]]) -> None:
    """The rebuilt model must carry exactly the selected allocation."""
    got = [list(u.sa.allocation) for u in new_units]
    if got != allocs:
        raise ReparamError(
            "the architecture did not take the new allocation (its SA blocks differ from the selection)",
            hint="slim rebuilds the model with `structure` (published form) or `channels_per_scale` "
            "(project form); the architecture must accept them, as the zoo's ScaleNets do",
        )
