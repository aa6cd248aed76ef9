"""RepVGG block: d×d conv-BN + 1×1 conv-BN + identity BN, summed, then the nonlinearity.

At inference the three linear branches fold into one d×d conv with bias (the 1×1 kernel sits at the
centre of the d×d kernel, the identity branch is an identity kernel scaled by its BN), so the
deployed block is a plain conv followed by the nonlinearity.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from reparam.blocks._common import CropPad, aligned_branch_padding, fold_conv_bn64, pair
from reparam.errors import ReparamError
from reparam.kernel_math import fold_bn, identity_kernel, pad_kernel


class RepVGGBlock(nn.Module):
    """RepVGG training-time block; ``activation`` defaults to ReLU and the block's output is after it.

    ``padding`` defaults to ``dilation * (kernel_size // 2)``. The identity branch exists only when
    ``in_channels == out_channels``, the stride is 1 and the padding keeps the spatial size.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | None = None,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        padding_mode: str = "zeros",
        activation: nn.Module | None = None,
        *,
        bn_eps: float = 1e-5,
        bn_momentum: float | None = 0.1,
        use_identity: bool = True,
    ):
        super().__init__()
        if not isinstance(kernel_size, int) or kernel_size % 2 == 0 or kernel_size < 3:
            raise ReparamError(
                f"RepVGGBlock needs an odd kernel_size >= 3, got {kernel_size!r}", hint="use kernel_size=3"
            )
        d = kernel_size
        self.kernel_size = (d, d)
        self.stride = pair(stride, "stride")
        self.dilation = pair(dilation, "dilation")
        half = (self.dilation[0] * (d // 2), self.dilation[1] * (d // 2))
        self.padding = half if padding is None else pair(padding, "padding")
        if min(self.padding) < 0:
            raise ReparamError(f"padding must be >= 0, got {padding!r}", hint="use padding >= 0")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.padding_mode = padding_mode
        self.deployed = False
        bn_args = {"eps": bn_eps, "momentum": bn_momentum}
        conv_args = {"stride": self.stride, "groups": groups, "bias": False, "padding_mode": padding_mode}

        self.rbr_dense = nn.Sequential(
            nn.Conv2d(
                in_channels, out_channels, d, padding=self.padding, dilation=self.dilation, **conv_args
            ),
            nn.BatchNorm2d(out_channels, **bn_args),
        )
        pad_1x1, crop_1x1 = aligned_branch_padding(self.padding, self.dilation, (d, d), (1, 1))
        self.crop_1x1 = CropPad(crop_1x1) if any(crop_1x1) else None
        self.rbr_1x1 = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, padding=pad_1x1, **conv_args),
            nn.BatchNorm2d(out_channels, **bn_args),
        )
        keeps_size = self.stride == (1, 1) and self.padding == half
        has_identity = use_identity and in_channels == out_channels and keeps_size
        self.rbr_identity = nn.BatchNorm2d(out_channels, **bn_args) if has_identity else None
        self.nonlinearity = activation if activation is not None else nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        if self.deployed:
            return self.nonlinearity(self.rbr_reparam(x))
        out = self.rbr_dense(x) + self.rbr_1x1(x if self.crop_1x1 is None else self.crop_1x1(x))
        if self.rbr_identity is not None:
            out = out + self.rbr_identity(x)
        return self.nonlinearity(out)

    @torch.no_grad()
    def get_equivalent_kernel_bias(self) -> tuple[Tensor, Tensor]:
        """The ``(kernel, bias)`` of one d×d conv equal to the linear part of the block (eval mode)."""
        if self.deployed:
            return self.rbr_reparam.weight.detach().clone(), self.rbr_reparam.bias.detach().clone()
        dtype = self.rbr_dense[0].weight.dtype
        kernel, bias = fold_conv_bn64(self.rbr_dense[0], self.rbr_dense[1])
        k1, b1 = fold_conv_bn64(self.rbr_1x1[0], self.rbr_1x1[1])
        kernel = kernel + pad_kernel(k1, self.kernel_size)
        bias = bias + b1
        if self.rbr_identity is not None:
            bn = self.rbr_identity
            ident = identity_kernel(
                self.in_channels, self.groups, self.kernel_size, dtype=torch.float64, device=kernel.device
            )
            k_id, b_id = fold_bn(
                ident,
                None,
                bn.running_mean.double(),
                bn.running_var.double(),
                None if bn.weight is None else bn.weight.double(),
                None if bn.bias is None else bn.bias.double(),
                bn.eps,
            )
            kernel = kernel + k_id
            bias = bias + b_id
        return kernel.to(dtype), bias.to(dtype)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Replace the branches by one fused d×d conv with bias, in place (idempotent)."""
        if self.deployed:
            return
        kernel, bias = self.get_equivalent_kernel_bias()
        w = self.rbr_dense[0].weight
        fused = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            bias=True,
            padding_mode=self.padding_mode,
            device=w.device,
            dtype=w.dtype,
        )
        fused.weight.copy_(kernel)
        fused.bias.copy_(bias)
        for name in ("rbr_dense", "rbr_1x1", "crop_1x1", "rbr_identity"):
            delattr(self, name)
        self.rbr_reparam = fused
        self.deployed = True

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, deployed={self.deployed}"
        )
