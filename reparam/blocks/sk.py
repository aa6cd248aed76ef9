"""SKNet's Selective Kernel convolution and the SK unit (a ResNeXt bottleneck around it).

Split: M grouped 3×3 convs with dilation 1..M (the paper's 3×3 dilation-2 conv stands in for the
5×5 branch), each with BN and ReLU. Fuse: U = Σ U_m, s = global average pool(U), z = ReLU(BN(W s))
with ``d = max(C / r, L)``. Select: per-branch logits A_m z, softmax across the M branches for each
channel, V = Σ a_m ⊙ U_m. The selection depends on the input, so an SK conv is not foldable into
one conv; only its per-branch conv-BN pairs are.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from reparam.errors import ReparamError


class SKConv(nn.Module):
    """Selective Kernel convolution SK[M, G, r] with ``channels`` in and out.

    ``d = max(channels // r, L)``. The FC that makes z has no bias (a BatchNorm follows it); the
    per-branch heads A_m are bias-free ``d → C`` maps as in the paper. Training mode needs a batch of
    at least two samples (the BatchNorm on z sees one value per sample).
    """

    def __init__(self, channels: int, M: int = 2, G: int = 32, r: int = 16, L: int = 32, stride: int = 1):
        super().__init__()
        if M < 1:
            raise ReparamError(
                f"SKConv needs at least one branch, got M={M}", hint="use M=2 (the paper's default)"
            )
        if channels % G:
            raise ReparamError(
                f"SKConv channels ({channels}) must be divisible by the group count G={G}",
                hint="pick G dividing the channel count",
            )
        self.channels, self.M, self.G, self.r, self.L = channels, M, G, r, L
        self.d = max(channels // r, L)
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(
                    channels, channels, 3, stride=stride, padding=m + 1, dilation=m + 1, groups=G, bias=False
                ),
                nn.BatchNorm2d(channels),
                nn.ReLU(),
            )
            for m in range(M)
        )
        self.fc = nn.Linear(channels, self.d, bias=False)
        self.fc_bn = nn.BatchNorm1d(self.d)
        self.relu = nn.ReLU()
        self.heads = nn.ModuleList(nn.Linear(self.d, channels, bias=False) for _ in range(M))

    def forward(self, x: Tensor) -> Tensor:
        feats = torch.stack([branch(x) for branch in self.branches], dim=1)  # [N, M, C, H, W]
        s = feats.sum(dim=1).mean(dim=(2, 3))  # global average pool of U
        z = self.relu(self.fc_bn(self.fc(s)))
        logits = torch.stack([head(z) for head in self.heads], dim=1)  # [N, M, C]
        attention = torch.softmax(logits, dim=1)
        return (feats * attention[:, :, :, None, None]).sum(dim=1)


class SKUnit(nn.Module):
    """ResNeXt bottleneck with the 3×3 grouped conv replaced by an SKConv.

    1×1 conv-BN-ReLU (``in → mid``) → SKConv(mid, stride) → 1×1 conv-BN (``mid → out``), plus the
    shortcut (1×1 conv-BN when the shape changes), then ReLU.
    """

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        stride: int = 1,
        M: int = 2,
        G: int = 32,
        r: int = 16,
        L: int = 32,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, mid_channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_channels)
        self.relu = nn.ReLU()
        self.sk = SKConv(mid_channels, M=M, G=G, r=r, L=L, stride=stride)
        self.conv3 = nn.Conv2d(mid_channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        if stride == 1 and in_channels == out_channels:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn3(self.conv3(self.sk(out)))
        return self.relu(out + self.shortcut(x))
