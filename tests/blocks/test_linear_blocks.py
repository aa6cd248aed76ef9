"""ACB and RepVGGBlock: shapes, gradients, parameter counts and exact fusion."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from reparam.blocks import ACB, RepVGGBlock
from reparam.errors import ReparamError
from reparam.numerics import randomize_batchnorm, scale_relative_error

ACB_CONFIGS = [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=3, padding=0),  # padding < d//2: asymmetric branches crop their input
    dict(kernel_size=5, padding=1, stride=2),
    dict(kernel_size=3, padding=1, stride=2, groups=2),
    dict(kernel_size=3, padding=2, dilation=2, groups=4),
    dict(kernel_size=5, padding=1, dilation=2),  # crop with dilation
    dict(kernel_size=3, padding=(0, 1), stride=(2, 1)),
    dict(kernel_size=7, padding=3, stride=2, bias=True),
    dict(kernel_size=3, padding=2, padding_mode="reflect"),
    dict(kernel_size=3, padding=1, bn_affine=False, bn_eps=1e-3),
]


def _conv_like(block, kernel: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    conv = nn.Conv2d(
        block.in_channels,
        block.out_channels,
        block.kernel_size,
        stride=block.stride,
        padding=block.padding,
        dilation=block.dilation,
        groups=block.groups,
        padding_mode=block.padding_mode,
        dtype=kernel.dtype,
    )
    with torch.no_grad():
        conv.weight.copy_(kernel)
        conv.bias.copy_(bias)
    return conv


def _conv_out(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


@pytest.mark.parametrize("cfg", ACB_CONFIGS, ids=str)
def test_acb_shape_matches_conv2d(cfg):
    block = ACB(4, 8, **cfg)
    x = torch.randn(2, 4, 13, 10)
    conv_cfg = {k: v for k, v in cfg.items() if not k.startswith("bn_")}
    assert block(x).shape == nn.Conv2d(4, 8, **conv_cfg)(x).shape


@pytest.mark.parametrize("cfg", ACB_CONFIGS, ids=str)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_acb_equivalent_kernel_matches_block(cfg, dtype, tol):
    block = ACB(4, 8, **cfg).to(dtype)
    randomize_batchnorm(block, seed=1)
    block.eval()
    x = torch.randn(2, 4, 13, 10, dtype=dtype)
    with torch.no_grad():
        ref = block(x)
        kernel, bias = block.get_equivalent_kernel_bias()
        fused = _conv_like(block, kernel, bias)(x)
    assert kernel.dtype == dtype and kernel.shape == block.square_conv.weight.shape
    assert ref.abs().max() > 0.1  # the comparison is not between two near-zero tensors
    assert scale_relative_error(ref, fused) <= tol
    # pure: the block is unchanged and still has its BatchNorms
    assert not block.deployed and isinstance(block.square_bn, nn.BatchNorm2d)


@pytest.mark.parametrize("cfg", ACB_CONFIGS[:6], ids=str)
def test_acb_reparameterize_in_place(cfg):
    block = ACB(4, 8, **cfg)
    randomize_batchnorm(block, seed=2)
    block.eval()
    x = torch.randn(1, 4, 12, 12)
    with torch.no_grad():
        ref = block(x)
        block.reparameterize()
        out = block(x)
    assert block.deployed
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in block.modules())
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 and convs[0].bias is not None and convs[0].kernel_size == block.kernel_size
    assert scale_relative_error(ref, out) <= 1e-5
    weight = block.fused_conv.weight.clone()
    block.reparameterize()  # idempotent
    assert torch.equal(block.fused_conv.weight, weight)
    kernel, _ = block.get_equivalent_kernel_bias()
    assert torch.equal(kernel, weight)


def test_acb_centre_row_and_column_alignment():
    """Only the horizontal branch nonzero: the fused kernel is zero outside the centre row."""
    block = ACB(1, 1, 3, padding=0)
    with torch.no_grad():
        block.square_conv.weight.zero_()
        block.ver_conv.weight.zero_()
        block.hor_conv.weight.copy_(torch.tensor([[[[1.0, 2.0, 3.0]]]]))
    block.eval()
    kernel, _ = block.get_equivalent_kernel_bias()
    expected = torch.zeros(3, 3)
    expected[1] = torch.tensor([1.0, 2.0, 3.0])
    assert torch.allclose(kernel[0, 0], expected)


def test_acb_gradients_reach_every_branch():
    block = ACB(3, 6, 3, padding=1, stride=2, groups=3)
    block(torch.randn(2, 3, 9, 9)).square().sum().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_acb_param_count():
    c_in, c_out, d = 4, 8, 5
    block = ACB(c_in, c_out, d, padding=2)
    # d*d + 1*d + d*1 kernels, and three BNs with gamma and beta each
    expected = c_out * c_in * (d * d + 2 * d) + 3 * 2 * c_out
    assert sum(p.numel() for p in block.parameters()) == expected


@pytest.mark.parametrize(
    "bad", [dict(kernel_size=2), dict(kernel_size=1), dict(kernel_size=(3, 5)), dict(padding=-1)]
)
def test_acb_rejects_bad_arguments(bad):
    with pytest.raises(ReparamError):
        ACB(4, 4, **{"kernel_size": 3, **bad})


REPVGG_CONFIGS = [
    dict(in_channels=8, out_channels=8),  # identity branch
    dict(in_channels=8, out_channels=8, stride=2),  # no identity: stride 2
    dict(in_channels=4, out_channels=8),  # no identity: channel change
    dict(in_channels=8, out_channels=8, groups=4),
    dict(in_channels=8, out_channels=8, padding=0),  # 1×1 branch crops, no identity
    dict(in_channels=8, out_channels=8, dilation=2, groups=2),
    dict(in_channels=8, out_channels=8, kernel_size=5, stride=(1, 2)),
]


@pytest.mark.parametrize("cfg", REPVGG_CONFIGS, ids=str)
def test_repvgg_shapes_and_identity_branch(cfg):
    block = RepVGGBlock(**cfg)
    x = torch.randn(2, cfg["in_channels"], 11, 14)
    k = cfg.get("kernel_size", 3)
    d = cfg.get("dilation", 1)
    p = cfg.get("padding", d * (k // 2))
    s = cfg.get("stride", 1)
    sh, sw = (s, s) if isinstance(s, int) else s
    out = block(x)
    assert out.shape == (2, cfg["out_channels"], _conv_out(11, k, sh, p, d), _conv_out(14, k, sw, p, d))
    assert (out >= 0).all()  # output is after the ReLU
    has_identity = cfg["in_channels"] == cfg["out_channels"] and (sh, sw) == (1, 1) and p == d * (k // 2)
    assert (block.rbr_identity is not None) == has_identity


@pytest.mark.parametrize("cfg", REPVGG_CONFIGS, ids=str)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_repvgg_equivalent_kernel_matches_block(cfg, dtype, tol):
    block = RepVGGBlock(**cfg, activation=nn.Identity()).to(dtype)
    randomize_batchnorm(block, seed=3)
    block.eval()
    x = torch.randn(2, cfg["in_channels"], 11, 14, dtype=dtype)
    with torch.no_grad():
        ref = block(x)
        kernel, bias = block.get_equivalent_kernel_bias()
        fused = _conv_like(block, kernel, bias)(x)
    assert kernel.dtype == dtype
    assert ref.abs().max() > 0.1
    assert scale_relative_error(ref, fused) <= tol


@pytest.mark.parametrize("cfg", REPVGG_CONFIGS, ids=str)
def test_repvgg_reparameterize_in_place(cfg):
    block = RepVGGBlock(**cfg)
    randomize_batchnorm(block, seed=4)
    block.eval()
    x = torch.randn(1, cfg["in_channels"], 10, 10)
    with torch.no_grad():
        ref = block(x)
        block.reparameterize()
        block.reparameterize()
        out = block(x)
    assert block.deployed
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in block.modules())
    assert [type(m) for m in block.modules() if isinstance(m, nn.Conv2d)] == [nn.Conv2d]
    assert scale_relative_error(ref, out) <= 1e-5


def test_repvgg_gradients_reach_every_branch():
    block = RepVGGBlock(8, 8, activation=nn.Identity())
    block(torch.randn(2, 8, 6, 6)).square().sum().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_repvgg_param_counts():
    c = 8
    block = RepVGGBlock(c, c)
    assert sum(p.numel() for p in block.parameters()) == c * c * 9 + c * c + 3 * 2 * c
    block.eval()
    block.reparameterize()
    assert sum(p.numel() for p in block.parameters()) == c * c * 9 + c


@pytest.mark.parametrize("padding,crops", [(1, 0), (0, 2)])
def test_acb_traced_graph_is_three_conv_bn_branches(padding, crops):
    import torch.fx

    graph = torch.fx.symbolic_trace(ACB(4, 4, 3, padding=padding)).graph
    modules = [n.target for n in graph.nodes if n.op == "call_module"]
    assert sorted(modules) == sorted(["square_conv", "square_bn", "hor_conv", "hor_bn", "ver_conv", "ver_bn"])
    assert sum(n.op == "call_function" and "getitem" in str(n.target) for n in graph.nodes) == crops
