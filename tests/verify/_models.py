"""Tiny stand-in models for verifier tests (no engine needed)."""

from __future__ import annotations

import torch
from torch import fx, nn

from reparam.equivalence import Boundaries, BoundaryKind
from reparam.numerics import randomize_batchnorm

BLOCKS = ["stem", "layer1.0", "layer1.1", "layer2"]


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 5, width: int = 4):
        super().__init__()
        self.stem = Block(3, width, 2)
        self.layer1 = nn.Sequential(Block(width, width), Block(width, width))
        self.layer2 = Block(width, 2 * width, 2)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class _BlockLeaves(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, Block) or super().is_leaf_module(m, qualname)


class Record:
    """Stand-in with the fields of the engine's RewriteRecord that the verifier reads."""

    def __init__(self, boundaries, entries=()):
        self.boundaries = Boundaries(BoundaryKind.GRAPH_NODE, dict(boundaries))
        self.entries = list(entries)


def tiny_pair(seed: int = 0) -> tuple[nn.Module, fx.GraphModule, Boundaries]:
    """A training-form TinyNet (BN randomized), an fx copy whose blocks are call_module nodes, and
    the graph-node boundaries of those blocks."""
    torch.manual_seed(seed)
    ref = randomize_batchnorm(TinyNet(), seed=seed).eval()
    copy = TinyNet()
    copy.load_state_dict(ref.state_dict())
    copy.eval()
    gm = fx.GraphModule(copy, _BlockLeaves().trace(copy))
    return ref, gm, Boundaries(BoundaryKind.GRAPH_NODE, {p: p.replace(".", "_") for p in BLOCKS})


@torch.no_grad()
def calibrate_bn_stats(model: nn.Module, shape=(8, 3, 32, 32), batches: int = 2, seed: int = 0) -> nn.Module:
    """Replace BN running statistics by the statistics of random data (affine parameters are kept).

    Randomized statistics alone let activations explode through deep residual stacks (an ACB
    ResNet-56 reaches 1e11); data statistics keep outputs in a sane range, as in a trained model.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(batches):
        model(torch.randn(*shape, generator=gen))
    for m, momentum in zip(bns, saved):
        m.momentum = momentum
        # a channel that happened to be dead on the few calibration samples would divide by sqrt(eps)
        m.running_var.clamp_(min=1e-2)
    return model.eval()


def save_zoo_checkpoint(path, arch: str = "repvgg_a0", seed: int = 0, **arch_kwargs) -> nn.Module:
    """Write a reparam checkpoint of a zoo model with random BN affine parameters and data-calibrated
    BN statistics; return the model (eval mode)."""
    from reparam.zoo import create_model

    kwargs = {"num_classes": 10, "width": 0.25, **arch_kwargs}
    torch.manual_seed(seed)
    model = calibrate_bn_stats(randomize_batchnorm(create_model(arch, **kwargs), seed=seed), seed=seed + 100)
    torch.save({"arch": arch, "arch_kwargs": kwargs, "state_dict": model.state_dict()}, path)
    return model


def expected_block(record, source: str) -> str:
    """The innermost recorded block containing the original module ``source``."""
    return max((b for b in record.boundaries if source == b or source.startswith(b + ".")), key=len)
