"""Stand-in: timm only subclasses or isinstance-checks this name."""

from torch import nn


class FrozenBatchNorm2d(nn.Module):
    def __init__(self, *args, **kwargs):
        raise RuntimeError("torchvision stand-in: FrozenBatchNorm2d is not available in tests")
