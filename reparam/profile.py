"""Model statistics: parameter counts, multiply-accumulates, and modules by type.

This is the one place MACs are counted; the engine report, the zoo listing and the benchmarks all
call it.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


@dataclass
class ModelStats:
    """Parameters, MACs (for one forward on the given input) and leaf-module counts by type."""

    params: int
    macs: int | None
    modules: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"params": self.params, "macs": self.macs, "modules": dict(self.modules)}


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())  # parameters() yields a shared one once


def module_counts(model: nn.Module) -> dict[str, int]:
    """Leaf modules by class name (a torch.export capture's check of the input sizes is not a layer)."""
    leaves = (m for m in model.modules() if all(c is None for c in m._modules.values()))
    return dict(Counter(type(m).__name__ for m in leaves if type(m).__name__ != "GuardsFn"))


def _layer_macs(module: nn.Module, inputs: tuple, output) -> int:
    if isinstance(module, _CONV):
        out = output
        k = module.weight.shape[1:].numel()  # in/groups * prod(kernel)
        return out.numel() // out.shape[0] * k * out.shape[0]
    if isinstance(module, _CONV_T):
        x = inputs[0]
        w = module.weight  # [in, out/g, *k]
        return x.numel() * w.shape[1:].numel()
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return 0


def graph_macs(gm: fx.GraphModule) -> int | None:
    """MACs of the conv, transposed conv and linear calls of a graph whose nodes carry their shapes.

    What :func:`counting_macs` counts on a run of the graph's module, without running it; None
    when a node it needs has no recorded shape (``node.meta["tensor_meta"]``).
    """
    total = 0
    for node in gm.graph.find_nodes(op="call_module"):
        module: Any = gm
        for part in str(node.target).split("."):
            module = getattr(module, part)
        if not isinstance(module, _CONV + _CONV_T + (nn.Linear,)):
            continue
        source = node.args[0] if isinstance(module, _CONV_T) and node.args else node
        shape = (
            getattr(source.meta.get("tensor_meta"), "shape", None) if isinstance(source, fx.Node) else None
        )
        if shape is None:
            return None
        if isinstance(module, nn.Linear):
            total += math.prod(shape) * module.in_features
        else:
            total += math.prod(shape) * module.weight.shape[1:].numel()
    return total


class MacCounter:
    """Accumulates multiply-accumulates while installed on a model (see :func:`counting_macs`)."""

    def __init__(self) -> None:
        self.total = 0

    def hook(self, module: nn.Module, inputs: tuple, output) -> None:
        self.total += _layer_macs(module, inputs, output)


@contextlib.contextmanager
def counting_macs(model: nn.Module) -> Iterator[MacCounter]:
    """Count the MACs of every forward run inside the block (lets a caller count a run it needs anyway)."""
    counter = MacCounter()
    handles = [
        m.register_forward_hook(counter.hook)
        for m in model.modules()
        if isinstance(m, _CONV + _CONV_T + (nn.Linear,))
    ]
    try:
        yield counter
    finally:
        for h in handles:
            h.remove()


def count_macs(model: nn.Module, example_inputs: tuple) -> int:
    """Multiply-accumulates of conv, transposed conv and linear layers for one forward pass.

    Counts by forward hooks, so every call of a module is counted (a module used twice counts
    twice), and layers inside torch.fx GraphModules are seen as well. Elementwise ops, pooling
    and normalisation are not counted.
    """
    with counting_macs(model) as counter, torch.no_grad():
        model(*example_inputs)
    return counter.total


def model_stats(
    model: nn.Module, example_inputs: tuple | None = None, *, macs: int | None = None
) -> ModelStats:
    """Parameters, MACs (given, or counted on ``example_inputs``) and module counts of ``model``."""
    if macs is None and example_inputs is not None:
        macs = count_macs(model, example_inputs)
    return ModelStats(params=count_params(model), macs=macs, modules=module_counts(model))
