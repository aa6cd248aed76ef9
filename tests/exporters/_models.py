"""Small models for export tests: conv/BN/ReLU, a residual add, an ACB-style parallel branch."""

from __future__ import annotations

import torch
from torch import nn

from reparam.numerics import randomize_batchnorm


class TinyNet(nn.Module):
    """conv-BN-ReLU stem, a residual block whose 3x3 has a parallel 1x3 + 3x1 (ACB-like) branch, a head."""

    def __init__(self, num_classes: int = 5, width: int = 8):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.sq = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))
        self.hor = nn.Sequential(
            nn.Conv2d(width, width, (1, 3), padding=(0, 1), bias=False), nn.BatchNorm2d(width)
        )
        self.ver = nn.Sequential(
            nn.Conv2d(width, width, (3, 1), padding=(1, 0), bias=False), nn.BatchNorm2d(width)
        )
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.sq(x) + self.hor(x) + self.ver(x))
        return self.head(x.mean((2, 3)))


class TwoOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.conv(x)
        return y, y.mean((2, 3))


def tiny_net(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    model = TinyNet()
    randomize_batchnorm(model, seed)
    return model.eval()
