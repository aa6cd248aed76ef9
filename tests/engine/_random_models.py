"""A seeded generator of small models: fusible families and near misses.

Every model is a stem conv, one generated block, and a head conv. The block sums (or otherwise
combines) branches over one input; a *near miss* differs from a fusible block in one property
(a nonlinearity, a stride, a padding mode, a fan-out, an in-place op, ...). ``expected_convs`` is
the conv count of the exact deploy form for fusible families (None for near misses, which only
have to stay correct).

Some fusible families wrap the block in the patterns published model code writes around it:
sizes read in forward and passed on in a tuple or a keyword (an SE gate's pooling window, an
interpolation's target size, a flattening head's batch size), a Python ``if`` on a size (which
torch.fx cannot trace), and submodules registered under Python keywords and names that are no
identifiers. (The test runs every deploy model at other batch sizes and a larger spatial size
too: it must run wherever the original runs, with the same result.)
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reparam.numerics import randomize_batchnorm

C = 4
FUSIBLE = [
    "acb", "repvgg", "avgpool", "crop", "repeated", "nested_residual", "seq_1x1_kxk", "dilated",
    "functional", "two_outputs", "size_kwarg", "view_batch", "interp_size", "shape_if", "keyword_names",
]  # fmt: skip
NEAR_MISS = [
    "relu_in_branch", "stride_only", "reflect_pad", "fan_out", "training_bn", "subtract", "concat",
    "inplace_input", "inplace_between", "inplace_module", "crop_and_pad", "extreme_values",
    "batch_stats", "parent_reads_child", "odd_names", "kxk_then_kxk",
]  # fmt: skip
FAMILIES = FUSIBLE + NEAR_MISS


@dataclass
class Generated:
    model: nn.Module
    x: torch.Tensor
    family: str
    expected_convs: int | None


def _conv(rng: random.Random, k: tuple[int, int], *, stride=1, dil=1, groups=1, pad=None, mode="zeros"):
    pad = pad if pad is not None else (dil * (k[0] // 2), dil * (k[1] // 2))
    return nn.Conv2d(C, C, k, stride, pad, dil, groups, bias=rng.random() < 0.5, padding_mode=mode)


class Branchy(nn.Module):
    """Branches (each a Sequential) over one input, combined by ``how``."""

    def __init__(self, branches: list[nn.Module], how: str = "sum", identity: bool = False, repeat: int = -1):
        super().__init__()
        self.paths = nn.ModuleList(branches)
        self.how, self.identity, self.repeat = how, identity, repeat

    def forward(self, x):
        outs = [p(x) for p in self.paths]
        if self.repeat >= 0:
            outs.append(outs[self.repeat])  # the same term twice: y + y
        if self.identity:
            outs.append(x)
        if self.how == "cat":
            return torch.cat(outs, 1)
        if self.how == "tuple":  # the caller sums them
            return tuple(outs)
        if self.how == "sub":
            return outs[0] - sum(outs[1:])
        total = outs[0]
        for o in outs[1:]:
            total = total + o
        return total


class FunctionalACB(nn.Module):
    """An ACB written with functional ops on its own parameters: no Conv2d / BatchNorm2d modules."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k
        self.w_sq = nn.Parameter(torch.randn(C, C, k, k) * 0.2)
        self.w_hor = nn.Parameter(torch.randn(C, C, 1, k) * 0.2)
        self.w_ver = nn.Parameter(torch.randn(C, C, k, 1) * 0.2)
        for name in ("sq", "hor", "ver"):
            self.register_buffer(f"mean_{name}", torch.randn(C) * 0.5)
            self.register_buffer(f"var_{name}", torch.rand(C) + 0.5)
            self.register_parameter(f"gamma_{name}", nn.Parameter(torch.rand(C) + 0.5))
            self.register_parameter(f"beta_{name}", nn.Parameter(torch.randn(C) * 0.5))

    def _bn(self, y, name):
        return F.batch_norm(
            y,
            getattr(self, f"mean_{name}"),
            getattr(self, f"var_{name}"),
            getattr(self, f"gamma_{name}"),
            getattr(self, f"beta_{name}"),
            False,
            0.0,
            1e-5,
        )

    def forward(self, x):
        p = self.k // 2
        y = self._bn(F.conv2d(x, self.w_sq, padding=p), "sq")
        y = y + self._bn(F.conv2d(x, self.w_hor, padding=(0, p)), "hor")
        return y + self._bn(F.conv2d(x, self.w_ver, padding=(p, 0)), "ver")


class Crop(nn.Module):
    def __init__(self, top: int, left: int):
        super().__init__()
        self.top, self.left = top, left

    def forward(self, x):
        return x[:, :, self.top : -self.top or None, self.left : -self.left or None]


class SizeGate(nn.Module):
    """A block, then an SE gate whose pooling window is the block's output size, read in forward
    and passed as a keyword or in a tuple (as RepVGG's SE writes ``kernel_size=x.size(3)``)."""

    def __init__(self, block: nn.Module, how: int):
        super().__init__()
        self.block, self.how = block, how
        self.down = nn.Conv2d(C, C // 2, 1)
        self.up = nn.Conv2d(C // 2, C, 1)

    def forward(self, x):
        y = self.block(x)
        if self.how == 0:
            s = F.avg_pool2d(y, kernel_size=y.size(3))
        elif self.how == 1:
            s = F.avg_pool2d(y, (y.size(2), y.size(3)))
        else:
            s = F.max_pool2d(y, kernel_size=y.shape[2:])
        return y * torch.sigmoid(self.up(F.relu(self.down(s))))


class Upsampled(nn.Module):
    """A block joined with a strided branch over the same input, upsampled back to the block's size
    (``F.interpolate(b, size=a.shape[2:])``)."""

    def __init__(self, block: nn.Module, down: nn.Module, how: int, mode: str):
        super().__init__()
        self.block, self.down, self.how, self.mode = block, down, how, mode

    def forward(self, x):
        a, b = self.block(x), self.down(x)
        if self.how == 0:
            size = a.shape[2:]
        elif self.how == 1:
            size = (a.size(2), a.size(3))
        else:
            size = x.shape[-2:]
        return a + F.interpolate(b, size=size, mode=self.mode)


class ShapeIf(nn.Module):
    """A block on one of two paths, chosen by a Python ``if`` on an input size (torch.fx cannot
    trace it). Both paths run the block; the path taken may differ between input sizes."""

    def __init__(self, block: nn.Module, cond: str):
        super().__init__()
        self.block, self.cond = block, cond

    def forward(self, x):
        if self.cond == "width":
            taken = x.shape[-1] > 4  # true at every size generated
        elif self.cond == "batch":
            taken = x.size(0) > 1  # false at batch 1
        else:
            taken = x.shape[-1] > 9  # false at the example sizes, true 4 pixels wider
        if taken:
            return self.block(x)
        return self.block(x) * 0.5


KEYWORD_NAMES = ["class", "def", "lambda", "1x1", "é", "None", "in", "3x3-b"]


class Keyworded(nn.Module):
    """Summed branches registered under Python keywords and names that are no identifiers, in a
    ModuleDict or with setattr, and called from forward by those names."""

    def __init__(self, branches: list[nn.Module], names: list[str], in_table: list[bool]):
        super().__init__()
        self.table = nn.ModuleDict()
        self.names, self.in_table = names, in_table
        for branch, name, tabled in zip(branches, names, in_table):
            if tabled:
                self.table[name] = branch
            else:
                setattr(self, name, branch)

    def forward(self, x):
        total = None
        for name, tabled in zip(self.names, self.in_table):
            y = self.table[name](x) if tabled else getattr(self, name)(x)
            total = y if total is None else total + y
        return total


HEADS = ["view_pool", "reshape", "view_mean"]


class Wrap(nn.Module):
    """stem -> block -> head, written several ways depending on ``style`` and ``head_style``."""

    def __init__(self, block: nn.Module, style: str = "plain", head_style: str = "conv"):
        super().__init__()
        self.stem = nn.Conv2d(3, C, 1)
        self.block = block
        self.head = nn.Conv2d(C * getattr(block, "widen", 1), C, 1)
        self.style, self.head_style = style, head_style
        if head_style in ("view_pool", "view_mean"):
            self.fc = nn.Linear(C, 3)

    def forward(self, x):
        if self.style == "inplace_input":
            x.mul_(2)
        h = self.stem(x)
        if self.style == "inplace_between":
            F.relu(h, inplace=True)
        if self.style == "parent_reads_child":
            if h.sum() > 1e12:  # a shape/value branch: the whole model is not traceable
                return h
            h = self.block.paths[0](h) * self.block.scale + self.block(h)
        else:
            h = self.block(h)
        if isinstance(h, tuple):  # a block with several outputs: their sum is the block's result
            h = h[0] + h[1]
        out = self.head(F.relu(h))  # the ReLU keeps the head from merging into the block
        if self.head_style == "view_pool":  # a classifier flattened by the batch size read in forward
            out = F.adaptive_avg_pool2d(out, 1)
            return self.fc(out.view(out.size(0), -1))
        if self.head_style == "reshape":
            return out.reshape(out.shape[0], -1)
        if self.head_style == "view_mean":
            return self.fc(out.view(out.size(0), out.size(1), -1).mean(-1))
        return out


def _acb(rng: random.Random, k: int = 3, dil: int = 1, stride: int = 1) -> list[nn.Module]:
    groups = rng.choice([1, C])
    return [
        nn.Sequential(_conv(rng, (k, k), dil=dil, stride=stride, groups=groups), nn.BatchNorm2d(C)),
        nn.Sequential(
            _conv(rng, (1, k), dil=dil, stride=stride, groups=groups, pad=(0, dil * (k // 2))),
            nn.BatchNorm2d(C),
        ),
        nn.Sequential(
            _conv(rng, (k, 1), dil=dil, stride=stride, groups=groups, pad=(dil * (k // 2), 0)),
            nn.BatchNorm2d(C),
        ),
    ]


def _repvgg(rng: random.Random) -> list[nn.Module]:
    return [
        nn.Sequential(_conv(rng, (3, 3)), nn.BatchNorm2d(C)),
        nn.Sequential(_conv(rng, (1, 1)), nn.BatchNorm2d(C)),
        nn.BatchNorm2d(C),
    ]


def _renamed(rng: random.Random, seq: nn.Sequential) -> nn.Sequential:
    """``seq`` with its children under odd names drawn from KEYWORD_NAMES."""
    out = nn.Sequential()
    for name, child in zip(rng.sample(KEYWORD_NAMES, len(seq)), seq):
        out.add_module(name, child)
    return out


def _block(rng: random.Random, family: str) -> tuple[nn.Module, str | tuple[str, str], int | None]:
    """(block, wrapper style (or style and head), convs of the exact deploy form incl. stem and
    head, or None)."""
    k = rng.choice([3, 5])
    if family == "acb":
        return Branchy(_acb(rng, k)), "plain", 3
    if family == "dilated":
        return Branchy(_acb(rng, 3, dil=2)), "plain", 3
    if family == "repvgg":
        return Branchy(_repvgg(rng), identity=rng.random() < 0.5), "plain", 3
    if family == "avgpool":
        pool = nn.Sequential(nn.AvgPool2d(3, 1, 1), nn.BatchNorm2d(C))
        return Branchy([nn.Sequential(_conv(rng, (3, 3)), nn.BatchNorm2d(C)), pool]), "plain", 3
    if family == "crop":
        # 3x3 pad 1 with a 1x3 branch on a row-cropped input: exact (crop and pad on different dims)
        side = nn.Sequential(Crop(1, 0), _conv(rng, (1, 3), pad=(0, 1)), nn.BatchNorm2d(C))
        square = nn.Sequential(_conv(rng, (3, 3), pad=(0, 1)), nn.BatchNorm2d(C))
        return Branchy([square, side]), "plain", 3
    if family == "repeated":
        branches = [nn.Sequential(_conv(rng, (k, k)), nn.BatchNorm2d(C)), nn.Sequential(_conv(rng, (1, 1)))]
        return Branchy(branches, repeat=rng.randrange(2), identity=rng.random() < 0.5), "plain", 3
    if family == "nested_residual":
        inner = Branchy(_repvgg(rng), identity=True)  # an identity branch inside ...
        return Branchy([inner], identity=True), "plain", 3  # ... and a residual around it
    if family == "seq_1x1_kxk":
        chain = nn.Sequential(nn.Conv2d(C, C, 1, bias=False), nn.BatchNorm2d(C), _conv(rng, (k, k), pad=0))
        return Branchy([chain]), "plain", None
    if family == "functional":
        return FunctionalACB(k), "plain", 3
    if family == "two_outputs":
        return Branchy(_acb(rng, k)[:2], how="tuple"), "plain", 3
    if family == "size_kwarg":  # stem, the fused block, the gate's two convs, head
        return SizeGate(Branchy(_acb(rng, k)), rng.randrange(3)), "plain", 5
    if family == "view_batch":
        return Branchy(_repvgg(rng), identity=rng.random() < 0.5), ("plain", rng.choice(HEADS)), 3
    if family == "interp_size":  # stem, the fused block, the strided branch, head
        down = nn.Sequential(_conv(rng, (3, 3), stride=2), nn.BatchNorm2d(C))
        mode = rng.choice(["nearest", "bilinear"])
        return Upsampled(Branchy(_acb(rng, k)), down, rng.randrange(3), mode), "plain", 4
    if family == "shape_if":
        block = ShapeIf(
            Branchy(_repvgg(rng), identity=rng.random() < 0.5), rng.choice(["width", "batch", "wide"])
        )
        return block, ("plain", rng.choice(["conv", *HEADS])), 3
    if family == "keyword_names":
        branches = [
            _renamed(rng, b) if isinstance(b, nn.Sequential) and rng.random() < 0.5 else b
            for b in _acb(rng, k)
        ]
        names = rng.sample(KEYWORD_NAMES, len(branches))
        return Keyworded(branches, names, [rng.random() < 0.5 for _ in branches]), "plain", 3
    if family == "relu_in_branch":
        b = _acb(rng, k)
        b[1].append(nn.ReLU())
        return Branchy(b), "plain", None
    if family == "stride_only":
        # on a 4x4 input a 3x3/stride 2/pad 1 and a 1x1/stride 3/pad 0 conv give equal 2x2 outputs
        a = nn.Sequential(_conv(rng, (3, 3), stride=2), nn.BatchNorm2d(C))
        b = nn.Sequential(_conv(rng, (1, 1), stride=3), nn.BatchNorm2d(C))
        return Branchy([a, b]), "plain", 4
    if family == "reflect_pad":
        b = _acb(rng, k)
        b[0][0] = _conv(rng, (k, k), mode="reflect")
        return Branchy(b), "plain", None
    if family == "fan_out":

        class FanOut(Branchy):
            def forward(self, x):
                a = self.paths[0](x)
                return a + self.paths[1](x) + a.mean((2, 3), keepdim=True)

        return FanOut(_acb(rng, k)[:2]), "plain", None
    if family == "training_bn":
        return Branchy(_acb(rng, k)), "plain", None
    if family == "subtract":
        return Branchy(_acb(rng, k), how="sub"), "plain", None
    if family == "concat":
        block = Branchy(_acb(rng, k)[:2], how="cat")
        block.widen = 2
        return block, "plain", None
    if family in ("inplace_input", "inplace_between"):
        return Branchy(_repvgg(rng), identity=True), family, None
    if family == "inplace_module":
        b = _repvgg(rng)
        return nn.Sequential(nn.ReLU(inplace=True), Branchy(b, identity=True)), "plain", None
    if family == "crop_and_pad":
        side = nn.Sequential(Crop(1, 0), _conv(rng, (1, 3), pad=(1, 1)), nn.BatchNorm2d(C))
        square = nn.Sequential(_conv(rng, (3, 3), pad=(1, 1)), nn.BatchNorm2d(C))
        return Branchy([square, side]), "plain", None
    if family == "extreme_values":
        return Branchy(_acb(rng, k)), "plain", None
    if family == "batch_stats":
        b = _repvgg(rng)
        b[0][1] = nn.BatchNorm2d(C, track_running_stats=False)
        return Branchy(b), "plain", None
    if family == "parent_reads_child":
        block = Branchy(_acb(rng, k))
        block.scale = 0.5
        return block, "parent_reads_child", None
    if family == "odd_names":
        block = Branchy(_acb(rng, k))
        seq = block.paths[0]
        block.paths[0] = nn.Sequential()
        block.paths[0].add_module("µ_k", seq[0])  # Python reads this identifier as 'μ_k'
        block.paths[0].add_module("ﬁlter", seq[1])  # and this one as 'filter'
        return block, "plain", 3
    if family == "kxk_then_kxk":
        chain = nn.Sequential(_conv(rng, (3, 3)), nn.BatchNorm2d(C), _conv(rng, (3, 3)), nn.BatchNorm2d(C))
        return Branchy([chain]), "plain", 4
    raise ValueError(family)


@torch.no_grad()
def _extreme(model: nn.Module, rng: random.Random) -> None:
    """Huge weights and tiny variances: folds that may leave the float32 range."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and rng.random() < 0.5:
            m.eps = 0.0
            m.running_var.fill_(10.0 ** rng.choice([-20, -30, -38]))
        if isinstance(m, nn.Conv2d) and m is not model.stem and rng.random() < 0.5:
            m.weight.mul_(10.0 ** rng.choice([20, 30]))


def generate(seed: int, family: str | None = None) -> Generated:
    """A random model of ``family`` (drawn from all families when None), its input and expectation."""
    rng = random.Random(seed)
    family = family or rng.choice(FAMILIES)
    torch.manual_seed(seed)
    block, style, expected = _block(rng, family)
    model = Wrap(block, *style) if isinstance(style, tuple) else Wrap(block, style)
    randomize_batchnorm(model, seed)
    model.eval()
    if family == "training_bn":
        next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d)).train()
    if family == "extreme_values":
        _extreme(model, rng)
    side = 4 if family == "stride_only" else rng.choice([6, 8, 9])
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(seed))
    return Generated(model, x, family, expected)
