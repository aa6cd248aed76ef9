"""ScaleNets: ResNet bottlenecks whose 3×3 conv is a scale aggregation (SA) block.

Two forms share the registry entries:

* the project's form (``scalenet50()`` without ``structure``): SA scales 1/2/4/8, the stride applied
  by every scale's 3×3 conv, an equal split of each block's channels (or ``channels_per_scale``);
* the published form (``structure=`` a structure file, a packaged name or a list): the block of the
  authors' ``pytorch/scalenet.py`` (github.com/Eli-YiLi/ScaleNet). A strided block max-pools its
  input by 2 before the 1×1 conv and the shortcut; scales pool by 1/2/4/7 (floor mode); the i-th
  scale's conv is 1×1 where ``side / 2**i <= 1``; upsampling is nearest where the factor is an
  integer at ``side`` and bilinear otherwise. BN sits before the upsampling (the authors' sits
  after): identical in eval mode, and it lets BN fold into the conv (see docs/scalenet.md).

A structure is a list with one entry per SA block, ``[c_scale1, c_scale2, c_scale3, c_scale4, side]``
(``side``: the block's feature-map side at the input size the layout was made for, 224 for the
published files). With a structure, ``width`` scales every conv except the SA blocks' (whose counts
are the structure's).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from reparam.blocks import SABlock
from reparam.errors import ReparamError
from reparam.zoo._layers import StagedNet, conv_bn, imagenet_stem, scale_channels
from reparam.zoo.registry import register_model

SCALENET_PAPER = "Li et al., Data-Driven Neuron Allocation for Scale Aggregation Networks (CVPR 2019)"
PUBLISHED_SCALES = (1, 2, 4, 7)
PUBLISHED = ("scalenet50", "scalenet50_light", "scalenet101", "scalenet152")
LAYERS = {
    "scalenet26": (2, 2, 2, 2),
    "scalenet50": (3, 4, 6, 3),
    "scalenet101": (3, 4, 23, 3),
    "scalenet152": (3, 8, 36, 3),
}

Structure = list[list[int]]
StructureSpec = str | os.PathLike | Sequence[Sequence[int]]


def validate_structure(value: Any, where: str = "structure") -> Structure:
    """Check a structure's shape and values; return it as a list of int lists."""
    ok = isinstance(value, list | tuple) and len(value) > 0
    entries: Structure = []
    for entry in value if ok else []:
        if (
            not isinstance(entry, list | tuple)
            or len(entry) != len(PUBLISHED_SCALES) + 1
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in entry)
            or sum(entry[:-1]) == 0
            or entry[-1] < 1
        ):
            ok = False
            break
        entries.append([int(v) for v in entry])
    if not ok:
        raise ReparamError(
            f"{where} is not a ScaleNet structure",
            hint="expected a JSON list with one [c1, c2, c3, c4, side] entry per SA block: non-negative "
            "channel counts (at least one > 0) and a positive feature-map side",
        )
    return entries


def packaged_structure_path(name: str) -> Path:
    """Path of a published structure shipped with reparam (``scalenet50``, ``scalenet101``, ...)."""
    return Path(str(resources.files("reparam.zoo") / "structures" / f"{name}.json"))


def load_structure(spec: StructureSpec) -> Structure:
    """A structure from a list, a packaged name (see ``PUBLISHED``) or a JSON file path."""
    if not isinstance(spec, str | os.PathLike):
        return validate_structure(spec)
    path = packaged_structure_path(str(spec)) if str(spec) in PUBLISHED else Path(spec)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ReparamError(
            f"cannot read structure file {str(path)!r}: {exc.strerror or exc}",
            hint=f"give a JSON structure file or one of the packaged names: {', '.join(PUBLISHED)}",
        ) from exc
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReparamError(
            f"structure file {str(path)!r} is not valid JSON ({exc.msg} at line {exc.lineno})",
            hint="a structure file is a JSON list of [c1, c2, c3, c4, side] entries",
        ) from exc
    return validate_structure(value, f"structure file {str(path)!r}")


def dump_structure(structure: Sequence[Sequence[int]]) -> str:
    """A structure as text in the published files' format (one JSON line)."""
    return json.dumps([[int(v) for v in entry] for entry in validate_structure(list(structure))])


def block_sides(layers: Sequence[int], input_size: int = 224) -> list[int]:
    """Feature-map side of every SA block for a square input (stem /4, then /2 per later stage)."""
    side = ((input_size - 1) // 2 + 1 - 1) // 2 + 1  # 7×7 stride-2 conv, 3×3 stride-2 max-pool
    sides = []
    for i, n in enumerate(layers):
        side = (side + 1) // 2 if i > 0 else side
        sides += [side] * n
    return sides


def uniform_structure(
    name: str, width: float = 1.0, multiplier: float = 1.0, input_size: int = 224
) -> Structure:
    """Every scale of every block gets ``multiplier / 4`` of the block's ResNet 3×3 channels.

    ``multiplier=1`` is the equal split at ResNet cost; a larger one gives an over-provisioned seed
    for slim.
    """
    layers = LAYERS[name]
    mids = [scale_channels(64 * 2**i, width) for i, n in enumerate(layers) for _ in range(n)]
    sides = block_sides(layers, input_size)
    return [[max(1, round(m * multiplier / 4))] * 4 + [s] for m, s in zip(mids, sides)]


def branch_layout(side: int, scales: Sequence[int] = PUBLISHED_SCALES) -> dict[str, list]:
    """The published block's per-scale pooling, kernel sizes and upsampling modes for a map of ``side``."""
    kernels = [3 if side / 2**i > 1 else 1 for i in range(len(scales))]
    # The pooled side as scale_pool gives it (a map smaller than the factor pools to one pixel).
    modes = ["nearest" if side % max(side // s, 1) == 0 else "bilinear" for s in scales]
    return {"scales": list(scales), "kernel_sizes": kernels, "upsample_modes": modes}


def published_sa(in_ch: int, entry: Sequence[int]) -> SABlock:
    """The published SA block for one structure entry ``[c1, c2, c3, c4, side]``."""
    *channels, side = entry
    layout = branch_layout(side)
    return SABlock(
        in_ch,
        scales=layout["scales"],
        channels_per_scale=channels,
        kernel_sizes=layout["kernel_sizes"],
        upsample_modes=layout["upsample_modes"],
        pool_ceil=False,
        side=side,
    )


class SABottleneck(nn.Module):
    """Project form: a ResNet bottleneck whose 3×3 conv-BN-ReLU is an SA block with the stride in its convs."""

    def __init__(
        self,
        in_ch: int,
        mid_ch: int,
        out_ch: int,
        stride: int,
        scales: Sequence[int],
        channels_per_scale: Sequence[int] | None,
    ):
        super().__init__()
        self.conv1 = conv_bn(in_ch, mid_ch, 1)
        self.relu = nn.ReLU()
        self.sa = SABlock(mid_ch, None if channels_per_scale else mid_ch, scales, channels_per_scale, stride)
        self.conv3 = conv_bn(self.sa.out_channels, out_ch, 1)
        self.shortcut = conv_bn(in_ch, out_ch, 1, stride) if stride != 1 or in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv3(self.sa(self.relu(self.conv1(x))))
        return self.relu(out + self.shortcut(x))


class PublishedSABottleneck(nn.Module):
    """Published form: max-pool by the stride first, then 1×1 conv-BN-ReLU, SA block, 1×1 conv-BN, shortcut."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, stride: int, entry: Sequence[int]):
        super().__init__()
        # ceil_mode: the same on the even maps of a 224 input; keeps a 1-pixel map from vanishing.
        self.pool = nn.MaxPool2d(stride, stride, ceil_mode=True) if stride > 1 else nn.Identity()
        self.conv1 = conv_bn(in_ch, mid_ch, 1)
        self.relu = nn.ReLU()
        self.sa = published_sa(mid_ch, entry)
        self.conv3 = conv_bn(self.sa.out_channels, out_ch, 1)
        self.shortcut = conv_bn(in_ch, out_ch, 1) if stride != 1 or in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(x)
        out = self.conv3(self.sa(self.relu(self.conv1(x))))
        return self.relu(out + self.shortcut(x))


def _stages(layers: Sequence[int], width: float, make_block) -> tuple[int, list[nn.Module], int]:
    stem_ch = scale_channels(64, width)
    in_ch, stages, k = stem_ch, [], 0
    for i, n in enumerate(layers):
        mid_ch, out_ch = scale_channels(64 * 2**i, width), scale_channels(256 * 2**i, width)
        blocks = []
        for j in range(n):
            blocks.append(make_block(k, in_ch, mid_ch, out_ch, 2 if (j == 0 and i > 0) else 1))
            in_ch, k = out_ch, k + 1
        stages.append(nn.Sequential(*blocks))
    return stem_ch, stages, in_ch


def _check_count(name: str, layers: Sequence[int], count: int, what: str) -> None:
    if count != sum(layers):
        raise ReparamError(
            f"{name} has {sum(layers)} SA blocks but {what} has {count} entries",
            hint=f"give one entry per SA block, or build the matching depth ({', '.join(LAYERS)})",
        )


def build_scalenet(
    name: str,
    structure: StructureSpec,
    num_classes: int = 1000,
    in_chans: int = 3,
    width: float = 1.0,
) -> StagedNet:
    """A published-form ScaleNet of depth ``LAYERS[name]`` from ``structure``."""
    layers = LAYERS[name]
    entries = load_structure(structure)
    _check_count(name, layers, len(entries), "the structure")

    def block(k: int, in_ch: int, mid_ch: int, out_ch: int, stride: int) -> nn.Module:
        return PublishedSABottleneck(in_ch, mid_ch, out_ch, stride, entries[k])

    stem_ch, stages, features = _stages(layers, width, block)
    return StagedNet(imagenet_stem(in_chans, stem_ch, conv_bn), stages, features, num_classes)


@register_model(paper=SCALENET_PAPER)
def scalenet50(
    num_classes: int = 1000,
    in_chans: int = 3,
    width: float = 1.0,
    scales: Sequence[int] = (1, 2, 4, 8),
    channels_per_scale: Sequence[Sequence[int]] | None = None,
    structure: StructureSpec | None = None,
) -> nn.Module:
    """ScaleNet-50: ResNet-50 with each bottleneck's 3×3 conv replaced by a scale aggregation block.

    ``structure`` (a file, ``"scalenet50"``/``"scalenet50_light"`` or a list) builds the published
    network; otherwise ``channels_per_scale`` gives one allocation per SA block (16 of them, in order)
    and the default splits each block's channels equally over ``scales``.
    """
    if structure is not None:
        if channels_per_scale is not None or tuple(scales) != (1, 2, 4, 8):
            raise ReparamError(
                "scalenet50 takes either structure or scales/channels_per_scale, not both",
                hint="a structure fixes the scales (1, 2, 4, 7) and the channels of every SA block",
            )
        return build_scalenet("scalenet50", structure, num_classes, in_chans, width)
    layers = LAYERS["scalenet50"]
    if channels_per_scale is not None:
        _check_count("scalenet50", layers, len(channels_per_scale), "channels_per_scale")

    def block(k: int, in_ch: int, mid_ch: int, out_ch: int, stride: int) -> nn.Module:
        alloc = channels_per_scale[k] if channels_per_scale is not None else None
        return SABottleneck(in_ch, mid_ch, out_ch, stride, scales, alloc)

    stem_ch, stages, features = _stages(layers, width, block)
    return StagedNet(imagenet_stem(in_chans, stem_ch, conv_bn), stages, features, num_classes)


@register_model(paper=SCALENET_PAPER)
def scalenet26(
    num_classes: int = 1000, in_chans: int = 3, width: float = 1.0, structure: StructureSpec | None = None
) -> nn.Module:
    """ScaleNet-26 (published block, bottlenecks [2, 2, 2, 2]): a small seed; default: equal split at 224."""
    structure = structure if structure is not None else uniform_structure("scalenet26", width)
    return build_scalenet("scalenet26", structure, num_classes, in_chans, width)


@register_model(paper=SCALENET_PAPER)
def scalenet101(
    num_classes: int = 1000, in_chans: int = 3, width: float = 1.0, structure: StructureSpec = "scalenet101"
) -> nn.Module:
    """ScaleNet-101 (published form): ResNet-101 layout [3, 4, 23, 3] with the authors' SA allocation."""
    return build_scalenet("scalenet101", structure, num_classes, in_chans, width)


@register_model(paper=SCALENET_PAPER)
def scalenet152(
    num_classes: int = 1000, in_chans: int = 3, width: float = 1.0, structure: StructureSpec = "scalenet152"
) -> nn.Module:
    """ScaleNet-152 (published form): ResNet-152 layout [3, 8, 36, 3] with the authors' SA allocation."""
    return build_scalenet("scalenet152", structure, num_classes, in_chans, width)
