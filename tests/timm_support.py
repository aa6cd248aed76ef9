"""Import timm for tests: installed with ``pip install --no-deps timm==1.0.31`` by ``make test``.

timm imports a few torchvision names at import time, and no CPU torchvision loads beside the torch
this project pins; ``tests/_stubs`` holds test-only stand-ins for exactly those names (see its
README). Tests skip with this reason when timm is not installed.
"""

from __future__ import annotations

import copy
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

STUBS = Path(__file__).parent / "_stubs"


def import_timm():
    """The timm module, or a pytest skip saying how to install it."""
    try:
        import torchvision  # noqa: F401
    except ImportError:
        sys.path.append(str(STUBS))
    try:
        import timm
    except ImportError as exc:
        pytest.skip(
            f"timm is not installed ({exc}); `make test` installs it with pip install --no-deps timm==1.0.31"
        )
    return timm


# Operations as the dispatcher sees them (below autograd and the composite ops): on CPU an eval
# BatchNorm arrives as native_batch_norm and every conv as convolution; the rest are the names
# other backends and torch versions use, so that nothing is missed by name.
CONV_OPS = frozenset(
    {
        "aten.convolution.default",
        "aten._convolution.default",
        "aten.conv1d.default",
        "aten.conv2d.default",
        "aten.conv3d.default",
        "aten.cudnn_convolution.default",
        "aten.mkldnn_convolution.default",
        "aten.miopen_convolution.default",
        "aten.miopen_depthwise_convolution.default",
        "aten._nnpack_spatial_convolution.default",
        "aten.slow_conv_dilated2d.default",
        "aten.thnn_conv2d.default",
        "aten._slow_conv2d_forward.default",
    }
)
BATCH_NORM_OPS = frozenset(
    {
        "aten.batch_norm.default",
        "aten._batch_norm_impl_index.default",
        "aten.native_batch_norm.default",
        "aten._native_batch_norm_legit.default",
        "aten._native_batch_norm_legit.no_stats",
        "aten._native_batch_norm_legit_no_training.default",
        "aten._batch_norm_no_update.default",
        "aten._batch_norm_with_update.default",
        "aten.cudnn_batch_norm.default",
        "aten.miopen_batch_norm.default",
    }
)


class DispatchCounter(TorchDispatchMode):
    """Counts every aten operation a forward pass executes, by name (``aten.convolution.default``)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def convs(self) -> int:
        return sum(n for op, n in self.ops.items() if op in CONV_OPS)

    @property
    def batch_norms(self) -> int:
        return sum(n for op, n in self.ops.items() if op in BATCH_NORM_OPS)


def executed_ops(model: nn.Module, *inputs: torch.Tensor) -> DispatchCounter:
    """Run ``model`` once without grad under a :class:`DispatchCounter`; returns the counter."""
    inputs = tuple(x.clone() for x in inputs)
    with torch.no_grad(), DispatchCounter() as counter:
        model(*inputs)
    return counter


def fp32_judgement(model: nn.Module, x: torch.Tensor, reference: torch.Tensor, candidate: torch.Tensor):
    """(error, limit) of ``candidate`` against the fp32 ``reference`` output of ``model`` on ``x``.

    The limit is the project's fp32 rule: ``fp32_limit`` of the reference's own fp32 noise, measured
    against a float64 copy of ``model`` on the same input.
    """
    from reparam.numerics import fp32_limit, scale_relative_error

    with torch.no_grad():
        out64 = copy.deepcopy(model).double()(x.clone().double())
    noise = scale_relative_error(out64.numpy(), reference.double().numpy())
    error = scale_relative_error(reference.numpy(), candidate.numpy())
    return error, fp32_limit(noise)
