"""Model zoo: registry behaviour, paper-size parameter counts, tiny forwards, fx tracing, fusion."""

from __future__ import annotations

import pytest
import torch
import torch.fx
from torch import nn

from reparam.blocks import ACB, RepVGGBlock
from reparam.errors import ReparamError
from reparam.numerics import randomize_batchnorm, scale_relative_error
from reparam.profile import count_params
from reparam.zoo import create_model, list_models, model_info, register_model

REQUIRED = {
    "resnet18",
    "resnet50",
    "acb_resnet18",
    "acb_resnet50",
    "resnet56_cifar",
    "acb_resnet56_cifar",
    "repvgg_a0",
    "repvgg_a0_plain",
    "sknet26",
    "sknet50",
    "se_resnet18",
    "se_resnet50",
    "scalenet50",
}

# Paper parameter counts in millions (ImageNet, 1000 classes).
PAPER_PARAMS_M = {
    "resnet18": 11.7,
    "resnet50": 25.6,
    "se_resnet50": 28.1,
    "sknet50": 27.5,
    "repvgg_a0": 9.1,
    "repvgg_a0_plain": 8.3,  # = RepVGG-A0 deploy form
    "resnet56_cifar": 0.85,
}

TINY = dict(width=0.125, num_classes=5, in_chans=1)


def _tiny(name: str) -> nn.Module:
    return create_model(name, **TINY)


def _fuse_blocks(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, ACB | RepVGGBlock):
            m.reparameterize()
    return model


def _count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


def test_registry_lists_required_models():
    assert set(list_models()) >= REQUIRED
    assert list_models() == sorted(list_models())


def test_unknown_model_suggests_close_matches():
    with pytest.raises(ReparamError) as exc:
        create_model("resnet_18")
    assert "resnet18" in exc.value.hint


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(depth_multiplier=2), "does not take"),
        (dict(num_classes=0), "num_classes"),
        (dict(in_chans=1.5), "in_chans"),
        (dict(width=-1), "width"),
    ],
)
def test_bad_kwargs_raise_reparam_error(kwargs, match):
    with pytest.raises(ReparamError, match=match):
        create_model("resnet18", **kwargs)


def test_model_info():
    info = model_info("acb_resnet56_cifar")
    assert info["counterpart"] == "resnet56_cifar"
    assert "ACNet" in info["paper"]
    assert info["default_kwargs"]["depth"] == 56 and info["default_kwargs"]["num_classes"] == 10
    assert info["description"]
    for name in list_models():
        info = model_info(name)
        assert {"num_classes", "in_chans", "width"} <= set(info["default_kwargs"]), name


def test_register_model_rejects_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        register_model(name="resnet18")(lambda num_classes=1, in_chans=3, width=1.0: nn.Identity())


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS_M))
def test_full_width_param_counts_match_papers(name):
    with torch.device("meta"):
        model = create_model(name)
    assert count_params(model) / 1e6 == pytest.approx(PAPER_PARAMS_M[name], rel=0.02)


def test_repvgg_a0_deploy_param_count_equals_plain():
    with torch.device("meta"):
        plain = create_model("repvgg_a0_plain")
    model = create_model("repvgg_a0")
    _fuse_blocks(model)
    bn_params = sum(
        p.numel() for m in plain.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()
    )
    conv_bias = sum(m.out_channels for m in plain.modules() if isinstance(m, nn.Conv2d))
    # the fused model holds a bias per conv where the plain one holds BN (γ, β)
    assert count_params(model) == count_params(plain) - bn_params + conv_bias
    assert count_params(model) / 1e6 == pytest.approx(8.3, rel=0.02)


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_tiny_forward_train_and_eval(name):
    model = _tiny(name)
    x = torch.randn(2, 1, 32, 32)
    model.train()
    out = model(x)
    assert out.shape == (2, 5)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1, 24, 40))
    assert out.shape == (1, 5) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_fx_traceable(name):
    model = _tiny(name).eval()
    randomize_batchnorm(model, seed=0)
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        ref, out = model(x), traced(x)
    assert scale_relative_error(ref, out) == 0.0
    assert any(n.op == "call_module" for n in traced.graph.nodes)


@pytest.mark.parametrize(
    "acb_name,plain_name",
    [("acb_resnet18", "resnet18"), ("acb_resnet50", "resnet50"), ("acb_resnet56_cifar", "resnet56_cifar")],
)
def test_acb_models_fuse_to_plain_layer_shapes(acb_name, plain_name):
    kwargs = dict(TINY, depth=14) if "cifar" in acb_name else TINY
    acb, plain = create_model(acb_name, **kwargs), create_model(plain_name, **kwargs)
    assert model_info(acb_name)["counterpart"] == plain_name
    randomize_batchnorm(acb, seed=5)
    acb.eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        ref = acb(x)
        _fuse_blocks(acb)
        out = acb(x)
    assert scale_relative_error(ref, out) <= 1e-5
    fused_convs = [
        (m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.groups)
        for m in acb.modules()
        if isinstance(m, nn.Conv2d)
    ]
    plain_convs = [
        (m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.groups)
        for m in plain.modules()
        if isinstance(m, nn.Conv2d)
    ]
    assert fused_convs == plain_convs
    traced = torch.fx.symbolic_trace(acb)  # the deployed form stays traceable
    assert scale_relative_error(ref, traced(x).detach()) <= 1e-5
    assert _count(acb, ACB) == sum(1 for c in plain_convs if c[2] != (1, 1))


def test_repvgg_a0_fuses_to_plain_layer_shapes():
    model, plain = _tiny("repvgg_a0"), _tiny("repvgg_a0_plain")
    randomize_batchnorm(model, seed=6)
    model.eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        ref = model(x)
        _fuse_blocks(model)
        out = model(x)
    assert scale_relative_error(ref, out) <= 1e-5
    assert _count(model, nn.BatchNorm2d) == 0
    shapes = [m.weight.shape for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert shapes == [m.weight.shape for m in plain.modules() if isinstance(m, nn.Conv2d)]
    assert len(shapes) == 1 + 2 + 4 + 14 + 1


def test_repvgg_a0_full_width_layout():
    with torch.device("meta"):
        model = create_model("repvgg_a0_plain")
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert widths == [48] + [48] * 2 + [96] * 4 + [192] * 14 + [1280]


def test_resnet56_cifar_layout_and_depth_kwarg():
    model = create_model("resnet56_cifar")
    assert [len(model.layer1), len(model.layer2), len(model.layer3)] == [9, 9, 9]
    assert [
        model.layer1[0].conv1.conv.out_channels,
        model.layer2[0].conv1.conv.out_channels,
        model.layer3[0].conv1.conv.out_channels,
    ] == [16, 32, 64]
    assert model.stem.conv.conv.kernel_size == (3, 3)
    assert len(create_model("resnet56_cifar", depth=20).layer1) == 3
    with pytest.raises(ReparamError, match="6n\\+2"):
        create_model("resnet56_cifar", depth=21)


def test_tiny_width_clamps_groups_and_keeps_channels():
    model = create_model("sknet26", width=0.0625)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            assert m.out_channels >= 8 and m.in_channels % m.groups == 0 and m.out_channels % m.groups == 0


def test_scalenet_custom_allocation():
    alloc = [[4, 2, 1, 1]] * 3 + [[8, 4, 2, 2]] * 4 + [[16, 8, 4, 4]] * 6 + [[32, 16, 8, 8]] * 3
    model = create_model("scalenet50", width=0.125, channels_per_scale=alloc)
    assert model.layer1[0].sa.channels_per_scale == (4, 2, 1, 1)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 1000)
    with pytest.raises(ReparamError, match="16 SA blocks"):
        create_model("scalenet50", channels_per_scale=alloc[:3])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onnx_export_of_a_zoo_model(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = create_model("scalenet50", width=0.125, num_classes=10).eval()
    randomize_batchnorm(model, seed=7)
    x = torch.randn(1, 3, 32, 32)
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["output"], dynamo=False)
    out = ort.InferenceSession(str(path)).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        ref = model(x)
    assert scale_relative_error(ref, out) <= 1e-5
