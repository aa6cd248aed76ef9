"""SENet's Squeeze-and-Excitation block and the SE residual units built on it."""

from __future__ import annotations

from torch import Tensor, nn


class SEBlock(nn.Module):
    """Squeeze-and-Excitation: global average pool → FC(C/r) → ReLU → FC(C) → sigmoid → channel scale.

    Parameters: ``2 C²/r`` weights plus ``C/r + C`` biases (hidden size ``max(C // r, 1)``).
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.channels, self.reduction, self.hidden = channels, reduction, hidden
        self.fc1 = nn.Linear(channels, hidden)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(hidden, channels)
        self.gate = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean(dim=(2, 3))
        s = self.gate(self.fc2(self.relu(self.fc1(s))))
        return x * s[:, :, None, None]


def _shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))


class SEBasicBlock(nn.Module):
    """ResNet basic block (two 3×3 conv-BN) with SE applied to the residual before the addition."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1, reduction: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.se = SEBlock(channels, reduction)
        self.shortcut = _shortcut(in_channels, channels, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        return self.relu(out + self.shortcut(x))


class SEBottleneck(nn.Module):
    """ResNet bottleneck (1×1, 3×3 with the stride, 1×1 to ``4 * channels``) with SE on the residual."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1, reduction: int = 16):
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.se = SEBlock(out_channels, reduction)
        self.shortcut = _shortcut(in_channels, out_channels, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.se(self.bn3(self.conv3(out)))
        return self.relu(out + self.shortcut(x))
