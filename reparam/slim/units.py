"""SA units: an SA block and the 1×1 conv-BN that consumes its output, with per-channel scores and costs."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from reparam.blocks import SABlock
from reparam.errors import ReparamError
from reparam.profile import MacCounter, counting_macs


@dataclass
class SAUnit:
    """One SA block of a model and its consumer (the 1×1 conv-BN ``conv3`` next to it)."""

    path: str
    sa: SABlock
    consumer: nn.Conv2d
    consumer_bn: nn.modules.batchnorm._BatchNorm
    side: int = 0  # the block's feature-map side (the structure's, or measured)
    conv_cost: list[int] = field(default_factory=list)  # MACs of one output channel, per kept branch
    consumer_cost: int = 0  # MACs of one input channel of the consumer

    def branch_parts(self, i: int) -> tuple[nn.Conv2d, nn.modules.batchnorm._BatchNorm]:
        """The conv and BatchNorm of the block's i-th kept branch."""
        return _only(self.sa.branches[i], nn.Conv2d), _only(self.sa.branches[i], nn.BatchNorm2d)


def _only(module: nn.Module, kind: type) -> nn.Module:
    found = [m for m in module.modules() if isinstance(m, kind)]
    if len(found) != 1:
        raise ReparamError(
            f"an SA branch holds {len(found)} {kind.__name__} layers", hint="expected exactly one"
        )
    return found[0]


def _consumer(parent: nn.Module, path: str) -> tuple[nn.Conv2d, nn.modules.batchnorm._BatchNorm]:
    conv3 = getattr(parent, "conv3", None)
    conv, bn = getattr(conv3, "conv", None), getattr(conv3, "bn", None)
    if (
        not isinstance(conv, nn.Conv2d)
        or not isinstance(bn, nn.modules.batchnorm._BatchNorm)
        or conv.kernel_size != (1, 1)
        or conv.groups != 1
        or conv.padding != (0, 0)
    ):
        raise ReparamError(
            f"the SA block {path!r} is not followed by a 1×1 conv-BN named conv3",
            hint="slim handles SA blocks inside bottlenecks (sa → conv3.conv → conv3.bn), as in the zoo's ScaleNets",
        )
    return conv, bn


def find_units(model: nn.Module) -> list[SAUnit]:
    """Every SA block of ``model`` with its consumer, in module order."""
    units = []
    for parent_path, parent in model.named_modules():
        sa = getattr(parent, "sa", None)
        if isinstance(sa, SABlock) and sa in parent.children():
            path = f"{parent_path}.sa" if parent_path else "sa"
            conv, bn = _consumer(parent, path)
            units.append(SAUnit(path, sa, conv, bn, side=sa.side or 0))
    total = sum(isinstance(m, SABlock) for m in model.modules())
    if not units:
        raise ReparamError(
            "the model has no SA (scale aggregation) block, so there is no per-scale allocation to learn",
            hint="slim a ScaleNet (e.g. `arch` scalenet50), a model built from reparam.blocks.SABlock",
        )
    if len(units) != total:
        raise ReparamError(
            f"{total - len(units)} of the model's {total} SA blocks are not an attribute `sa` of a bottleneck",
            hint="slim handles SA blocks inside bottlenecks (sa → conv3), as in the zoo's ScaleNets",
        )
    return units


def check_batchnorms(units: list[SAUnit]) -> None:
    """Refuse BatchNorms without affine γ or running statistics (no scores, or nothing to fold)."""
    for unit in units:
        bns = [unit.branch_parts(i)[1] for i in range(len(unit.sa.branches))] + [unit.consumer_bn]
        for bn in bns:
            if not bn.affine or bn.running_mean is None or bn.running_var is None:
                raise ReparamError(
                    f"a BatchNorm in {unit.path!r} has no {'affine γ' if not bn.affine else 'running statistics'}",
                    hint="slim scores channels by BN γ and needs a trained model with affine, "
                    "statistics-tracking BatchNorms",
                )


def scores(unit: SAUnit) -> list[torch.Tensor]:
    """|γ| of each kept branch's BatchNorm, one tensor per branch."""
    return [unit.branch_parts(i)[1].weight.detach().abs().double() for i in range(len(unit.sa.branches))]


@torch.no_grad()
def measure(model: nn.Module, units: list[SAUnit], example: torch.Tensor) -> int:
    """Fill each unit's per-channel MAC costs (and measured side if unset); return the model's MACs.

    One forward pass with the project's MAC counter on every branch conv and consumer; every cost is
    linear in the channel counts, so a channel's cost is its layer's MACs divided by the channel count.
    """
    counters: dict[nn.Module, MacCounter] = {}
    sides: dict[int, int] = {}
    handles = []
    for k, unit in enumerate(units):
        for conv in [unit.branch_parts(i)[0] for i in range(len(unit.sa.branches))] + [unit.consumer]:
            counters[conv] = MacCounter()
            handles.append(conv.register_forward_hook(counters[conv].hook))
        handles.append(unit.sa.register_forward_hook(lambda m, i, o, k=k: sides.__setitem__(k, o.shape[-1])))
    try:
        with counting_macs(model) as total:
            model.eval()(example)
    finally:
        for h in handles:
            h.remove()
    for k, unit in enumerate(units):
        convs = [unit.branch_parts(i)[0] for i in range(len(unit.sa.branches))]
        unit.conv_cost = [counters[c].total // c.out_channels for c in convs]
        unit.consumer_cost = counters[unit.consumer].total // unit.consumer.in_channels
        unit.side = unit.side or sides[k]
    return total.total
