"""ACNet's Asymmetric Convolution Block (ACB).

A d×d conv, a 1×d conv and a d×1 conv see the same input; each is followed by its own BatchNorm and
the three results are summed (no BatchNorm after the sum). At inference the BatchNorms fold into
their convs (ACNet eq. 2) and the 1×d / d×1 kernels add onto the centre row / column of the d×d
kernel (eq. 3), giving one d×d conv with bias.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from reparam.blocks._common import CropPad, aligned_branch_padding, fold_conv_bn64, pair
from reparam.errors import ReparamError
from reparam.kernel_math import pad_kernel


class ACB(nn.Module):
    """Asymmetric Convolution Block: a drop-in for ``Conv2d(d×d) + BatchNorm2d`` (training form).

    Takes ``nn.Conv2d``'s arguments (``kernel_size`` must be one odd int or an odd square pair) plus
    the BatchNorm options ``bn_eps``, ``bn_momentum`` and ``bn_affine``; defaults match ``nn.Conv2d``
    (``padding=0``) except ``bias=False``, since a BatchNorm follows every conv. When ``padding`` is smaller
    than ``dilation * (d // 2)`` the asymmetric branches get their input cropped so that their
    windows stay on the centre row / column of the d×d window.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int] = 3,
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        bias: bool = False,
        padding_mode: str = "zeros",
        *,
        bn_eps: float = 1e-5,
        bn_momentum: float | None = 0.1,
        bn_affine: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        kh, kw = pair(kernel_size, "kernel_size")
        if kh != kw or kh % 2 == 0 or kh < 3:
            raise ReparamError(
                f"ACB needs a square odd kernel of size >= 3, got {kernel_size!r}",
                hint="use kernel_size=3, 5, 7, ... (a 1×1 conv has no asymmetric branches)",
            )
        if isinstance(padding, str):
            raise ReparamError(
                f"ACB does not accept padding={padding!r}", hint="pass the padding as an int or a pair"
            )
        d = kh
        self.kernel_size = (d, d)
        self.stride = pair(stride, "stride")
        self.dilation = pair(dilation, "dilation")
        self.padding = pair(padding, "padding")
        if min(self.padding) < 0:
            raise ReparamError(f"padding must be >= 0, got {padding!r}", hint="use padding >= 0")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.bias, self.padding_mode = bias, padding_mode
        self.deployed = False
        factory = {"device": device, "dtype": dtype}
        bn_args = {"eps": bn_eps, "momentum": bn_momentum, "affine": bn_affine, **factory}
        conv_args = {
            "stride": self.stride,
            "dilation": self.dilation,
            "groups": groups,
            "bias": bias,
            "padding_mode": padding_mode,
            **factory,
        }

        self.square_conv = nn.Conv2d(in_channels, out_channels, d, padding=self.padding, **conv_args)
        self.square_bn = nn.BatchNorm2d(out_channels, **bn_args)
        # 1×d: collapses the row dimension; d×1: collapses the column dimension.
        hor_pad, hor_crop = aligned_branch_padding(self.padding, self.dilation, (d, d), (1, d))
        ver_pad, ver_crop = aligned_branch_padding(self.padding, self.dilation, (d, d), (d, 1))
        self.hor_crop = CropPad(hor_crop) if any(hor_crop) else None
        self.hor_conv = nn.Conv2d(in_channels, out_channels, (1, d), padding=hor_pad, **conv_args)
        self.hor_bn = nn.BatchNorm2d(out_channels, **bn_args)
        self.ver_crop = CropPad(ver_crop) if any(ver_crop) else None
        self.ver_conv = nn.Conv2d(in_channels, out_channels, (d, 1), padding=ver_pad, **conv_args)
        self.ver_bn = nn.BatchNorm2d(out_channels, **bn_args)

    def forward(self, x: Tensor) -> Tensor:
        if self.deployed:
            return self.fused_conv(x)
        square = self.square_bn(self.square_conv(x))
        # No module at all when no crop is needed, so a traced graph shows x -> conv -> bn per branch.
        hor = self.hor_bn(self.hor_conv(x if self.hor_crop is None else self.hor_crop(x)))
        ver = self.ver_bn(self.ver_conv(x if self.ver_crop is None else self.ver_crop(x)))
        return square + hor + ver

    @torch.no_grad()
    def get_equivalent_kernel_bias(self) -> tuple[Tensor, Tensor]:
        """The ``(kernel, bias)`` of one d×d conv equal to this block in eval mode (no mutation)."""
        if self.deployed:
            return self.fused_conv.weight.detach().clone(), self.fused_conv.bias.detach().clone()
        dtype = self.square_conv.weight.dtype
        k_sq, b_sq = fold_conv_bn64(self.square_conv, self.square_bn)
        k_h, b_h = fold_conv_bn64(self.hor_conv, self.hor_bn)
        k_v, b_v = fold_conv_bn64(self.ver_conv, self.ver_bn)
        kernel = k_sq + pad_kernel(k_h, self.kernel_size) + pad_kernel(k_v, self.kernel_size)
        return kernel.to(dtype), (b_sq + b_h + b_v).to(dtype)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Replace the three branches by one fused d×d conv with bias, in place (idempotent)."""
        if self.deployed:
            return
        kernel, bias = self.get_equivalent_kernel_bias()
        w = self.square_conv.weight
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
        for name in (
            "square_conv",
            "square_bn",
            "hor_crop",
            "hor_conv",
            "hor_bn",
            "ver_crop",
            "ver_conv",
            "ver_bn",
        ):
            delattr(self, name)
        self.fused_conv = fused
        self.deployed = True

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, deployed={self.deployed}"
        )
