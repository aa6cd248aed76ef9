"""Property-based equivalence: fused equals unfused over block configurations (BN randomized)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

from reparam.engine import convert
from tests.engine._models import Asym, Rep, count, prepared
from tests.engine._models import error as _error

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# The same examples on every clone and every run: no example database to replay, no fresh randomness.
SETTINGS = settings(
    max_examples=25,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
DTYPES = st.sampled_from([torch.float32, torch.float64])
EPS = st.sampled_from([1e-5, 1e-3, 0.1])
BN = nn.modules.batchnorm._BatchNorm


def error(original: nn.Module, deploy: nn.Module, x: torch.Tensor) -> float:
    """The deploy model's relative error; a generated case whose reference output is degenerate
    (all but zero, or not finite) is filtered out, not judged."""
    with torch.no_grad():
        ref = original(x)
    assume(bool(torch.isfinite(ref).all()) and float(ref.abs().max()) > 1e-3)
    return _error(original, deploy, x)


def _tol(dtype: torch.dtype) -> float:
    return 1e-5 if dtype == torch.float32 else 1e-10


@st.composite
def asym_configs(draw):
    d = draw(st.sampled_from([3, 5]))
    dil = draw(st.sampled_from([1, 2]))
    half = dil * (d // 2)
    groups = draw(st.sampled_from([1, 2]))
    return (
        {
            "cin": 2 * groups,
            "cout": 2 * draw(st.integers(1, 3)),
            "d": d,
            "stride": draw(st.sampled_from([1, 2])),
            "pad": draw(st.integers(0, half + 1)),  # includes padding < d//2 (crops) and > d//2
            "dil": dil,
            "groups": groups,
            "bias": draw(st.booleans()),
            "affine": draw(st.booleans()),
            "eps": draw(EPS),
        },
        draw(DTYPES),
        draw(st.integers(0, 2**16)),
    )


@given(asym_configs())
@SETTINGS
def test_acb_like_blocks_fuse_into_one_conv(cfg):
    kw, dtype, seed = cfg
    model = prepared(Asym(**kw), seed, dtype)
    size = kw["dil"] * (kw["d"] - 1) + 5
    x = torch.randn(2, kw["cin"], size, size + 1, dtype=dtype)
    deploy = convert(model, x).model
    assert count(deploy, BN) == 0
    assert count(deploy, nn.Conv2d) == 1
    conv = next(m for m in deploy.modules() if isinstance(m, nn.Conv2d))
    assert conv.kernel_size == (kw["d"], kw["d"]) and conv.stride == (kw["stride"],) * 2
    assert error(model, deploy, x) <= _tol(dtype)
    # other spatial sizes too: the merged geometry must not depend on the example input
    y = torch.randn(1, kw["cin"], size + 3, size + 2, dtype=dtype)
    assert error(model, deploy, y) <= _tol(dtype)


@st.composite
def rep_configs(draw):
    groups = draw(st.sampled_from([1, 2]))
    stride = draw(st.sampled_from([1, 2]))
    dil = draw(st.sampled_from([1, 2]))
    same = draw(st.booleans())
    cin = 2 * groups * draw(st.integers(1, 2))
    return (
        {
            "cin": cin,
            "cout": cin if same else 2 * groups * 3,
            "d": draw(st.sampled_from([3, 5])),
            "stride": stride,
            "dil": dil,
            "groups": groups,
            "identity": same and stride == 1,
            "pool": same and dil == 1 and draw(st.booleans()),
            "bias": draw(st.booleans()),
            "affine": draw(st.booleans()),
            "eps": draw(EPS),
        },
        draw(DTYPES),
        draw(st.integers(0, 2**16)),
    )


@given(rep_configs())
@SETTINGS
def test_repvgg_like_blocks_fuse_into_one_conv(cfg):
    kw, dtype, seed = cfg
    model = prepared(Rep(**kw), seed, dtype)
    x = torch.randn(2, kw["cin"], 11, 10, dtype=dtype)
    deploy = convert(model, x).model
    assert count(deploy, BN) == 0
    assert count(deploy, nn.Conv2d) == 1
    assert count(deploy, nn.AvgPool2d) == 0
    assert error(model, deploy, x) <= _tol(dtype)


class LayerBN(nn.Module):
    def __init__(self, layer: nn.Module, bn: nn.Module):
        super().__init__()
        self.layer, self.norm = layer, bn

    def forward(self, x):
        return self.norm(self.layer(x)) * 1.5


@st.composite
def fold_configs(draw):
    kind = draw(st.sampled_from(["conv1d", "conv2d", "conv3d", "convt1d", "convt2d", "convt3d", "linear"]))
    groups = draw(st.sampled_from([1, 2])) if kind != "linear" else 1
    cin, cout = 2 * groups, 2 * groups * draw(st.integers(1, 2))
    bias, affine, eps = draw(st.booleans()), draw(st.booleans()), draw(EPS)
    k = draw(st.sampled_from([1, 2, 3]))
    stride = draw(st.sampled_from([1, 2]))
    pad = draw(st.integers(0, k // 2))
    if kind == "linear":
        layer, bn, shape = nn.Linear(cin, cout, bias), nn.BatchNorm1d(cout, eps=eps, affine=affine), (3, cin)
    else:
        nd = int(kind[-2])
        conv = {
            1: (nn.Conv1d, nn.ConvTranspose1d),
            2: (nn.Conv2d, nn.ConvTranspose2d),
            3: (nn.Conv3d, nn.ConvTranspose3d),
        }[nd][kind.startswith("convt")]
        layer = conv(cin, cout, k, stride, pad, groups=groups, bias=bias)
        bn = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[nd](cout, eps=eps, affine=affine)
        shape = (2, cin) + (5,) * nd
    return LayerBN(layer, bn), shape, draw(DTYPES), draw(st.integers(0, 2**16))


@given(fold_configs())
@SETTINGS
def test_fold_bn_into_conv_transposed_conv_and_linear(cfg):
    module, shape, dtype, seed = cfg
    model = prepared(module, seed, dtype)
    x = torch.randn(*shape, dtype=dtype)
    result = convert(model, x)
    assert count(result.model, BN) == 0
    assert count(result.model, type(module.layer)) == 1
    assert [e.pass_name for e in result.record.entries] == ["fold_bn"]
    assert sorted(result.record.entries[0].sources) == ["layer", "norm"]
    assert error(model, result.model, x) <= _tol(dtype)
