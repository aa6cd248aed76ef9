"""expand(): function preservation, structural round trip, refusals, and the ACB cross-check with the zoo."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import reparam
from reparam.errors import ReparamError
from reparam.expansion import ExpandedConv, conv_layout, expand, graph_signature, op_counts
from reparam.numerics import FP32_SCALE_REL, randomize_batchnorm, scale_relative_error
from reparam.zoo import create_model
from tests.expand._models import MODELS, DataDependent

SCHEMES = ("acb", "repvgg", "dbb")


def _plain(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    cls, shape = MODELS[name]
    model = randomize_batchnorm(cls(), seed=seed).eval()
    return model, torch.randn(shape)


@torch.no_grad()
def _perturb(model: nn.Module, seed: int) -> None:
    """Simulate training: every parameter moves, every BatchNorm gets new statistics and affine values."""
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    randomize_batchnorm(model, seed=seed + 1)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    return scale_relative_error(a.detach(), b.detach())


# which convs each scheme must expand (by path) in the test models
EXPECTED = {
    ("fanout", "acb"): {"bn", "left", "right", "wide", "head"},
    ("fanout", "repvgg"): {"bn", "left", "right", "wide", "head"},
    ("fanout", "dbb"): {"bn", "left", "right", "wide", "head"},
    ("refusals", "acb"): {"ok"},
    ("vol3d", "acb"): {"p", "r"},
    ("vol3d", "repvgg"): {"p", "r"},
    ("seq1d", "repvgg"): {"a", "b", "c"},
    ("seq1d", "dbb"): {"a", "b", "c"},
}


@pytest.mark.parametrize(("name", "scheme"), sorted(EXPECTED))
def test_preserve_is_exact_and_round_trip_gives_the_plain_graph(name, scheme):
    plain, x = _plain(name)
    expanded, report = expand(plain, scheme, example_inputs=x)
    assert {e.path for e in report.expanded} == EXPECTED[name, scheme]
    assert all(isinstance(expanded.get_submodule(p), ExpandedConv) for p in EXPECTED[name, scheme])
    assert report.params_after > report.params_before
    # preserve: eval mode and training mode (batch statistics) both compute what the plain model does
    with torch.no_grad():
        assert _rel(plain(x), expanded.eval()(x)) <= FP32_SCALE_REL
        train_plain, train_exp = copy.deepcopy(plain).train(), copy.deepcopy(expanded).train()
        assert _rel(train_plain(x), train_exp(x)) <= FP32_SCALE_REL
    # round trip after "training": the fused model is the plain graph and computes the expanded model
    _perturb(expanded, seed=3)
    expanded.eval()
    deploy = reparam.reparameterize(expanded, x)
    plain_deploy = reparam.reparameterize(plain, x)
    assert graph_signature(deploy) == graph_signature(plain_deploy)
    assert op_counts(deploy) == op_counts(plain_deploy)
    assert graph_signature(expanded) != graph_signature(plain)  # the signature does see structure
    assert conv_layout(deploy) == conv_layout(plain_deploy)
    if name != "refusals":  # there the engine also merges the two calls of a shared conv
        assert conv_layout(deploy) == conv_layout(plain)
    with torch.no_grad():
        assert _rel(expanded(x), deploy(x)) <= FP32_SCALE_REL


@pytest.mark.parametrize("scheme", SCHEMES)
def test_fresh_init_changes_the_function_and_still_fuses_to_the_plain_graph(scheme):
    plain, x = _plain("fanout", seed=1)
    expanded, report = expand(plain, scheme, init="fresh", example_inputs=x)
    assert report.preserve_error is None and report.roundtrip_layout is True
    with torch.no_grad():
        assert _rel(plain(x), expanded.eval()(x)) > 1e-3
    deploy = reparam.reparameterize(expanded, x)
    assert conv_layout(deploy) == conv_layout(plain)
    with torch.no_grad():
        assert _rel(expanded(x), deploy(x)) <= FP32_SCALE_REL


def test_refused_convs_stay_with_their_reason():
    plain, x = _plain("refusals")
    expanded, report = expand(plain, "acb", example_inputs=x)
    reasons = {s.where: s.reason for s in report.left}
    assert "even kernel" in reasons["even"]
    assert "1×1 kernel" in reasons["point"]
    assert "reflect" in reasons["mirror"]
    assert "also" in reasons["tap"] and "tap_n" in reasons["tap"]
    assert "no BatchNorm" in reasons["bare"]
    assert "called 2 times" in reasons["twice"]
    for path in reasons:
        assert type(expanded.get_submodule(path)) is nn.Conv2d


def test_one_d_kernels_refuse_acb_with_a_reason():
    plain, x = _plain("seq1d")
    with pytest.raises(ReparamError, match="no conv in Seq1d can take the 'acb' scheme.*1-D kernel"):
        expand(plain, "acb", example_inputs=x)


def test_repvgg_identity_branch_only_where_shapes_allow():
    plain, x = _plain("fanout")
    _, report = expand(plain, "repvgg", example_inputs=x)
    branches = {e.path: e.branches for e in report.expanded}
    assert branches["left"] == ["1x1", "identity"]  # 8->8, stride 1, same padding (dilated)
    assert branches["right"] == ["1x1"]  # stride 2
    assert branches["bn"] == ["1x1"]  # 3->8
    assert branches["head"] == ["1x1"]  # 12->6


def test_dbb_average_pool_branch_only_where_channels_and_geometry_allow():
    plain, x = _plain("fanout")
    _, report = expand(plain, "dbb", example_inputs=x)
    branches = {e.path: e.branches for e in report.expanded}
    assert branches["right"] == ["1x1", "1x1_3x3", "avg"]  # 8->8 depthwise, stride 2, padding 0
    assert branches["left"] == ["1x1", "1x1_3x3"]  # dilated: a pool has no dilation
    assert branches["wide"] == ["1x1", "1x1_3x5"]  # 8->12
    plain, x = _plain("seq1d")
    _, report = expand(plain, "dbb", example_inputs=x)
    branches = {e.path: e.branches for e in report.expanded}
    assert branches["b"] == ["1", "1x1_3", "avg"] and branches["c"] == ["1", "1x1_3"]  # c: padding 2 > 3 // 2


def test_bad_input_is_one_reparam_error():
    plain, _ = _plain("fanout")
    with pytest.raises(ReparamError, match="unknown expansion scheme 'acnet'"):
        expand(plain, "acnet")
    with pytest.raises(ReparamError, match="unknown init"):
        expand(plain, "acb", init="zero")
    with pytest.raises(ReparamError, match="no conv in Sequential"):
        expand(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2)), "acb")
    with pytest.raises(ReparamError, match="expected a torch.nn.Module"):
        expand("resnet18")


def test_top_level_name():
    assert reparam.expand is expand


def test_input_model_is_left_untouched():
    plain, x = _plain("vol3d")
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    expand(plain, "acb", example_inputs=x)
    assert all(torch.equal(before[k], v) for k, v in plain.state_dict().items())
    assert all(type(m) is not ExpandedConv for m in plain.modules())


@pytest.mark.parametrize("name", ["resnet18", "resnet56_cifar", "repvgg_a0_plain"])
def test_zoo_plain_models_preserve_and_round_trip(name):
    kwargs = {"width": 0.125, "num_classes": 10}
    if name == "resnet56_cifar":
        kwargs["depth"] = 8
    if name == "repvgg_a0_plain":
        kwargs = {"width": 0.25, "num_classes": 10, "num_blocks": (1, 1, 1, 1)}
    torch.manual_seed(0)
    plain = randomize_batchnorm(create_model(name, **kwargs), seed=2).eval()
    x = torch.randn(2, 3, 32, 32)
    expanded, report = expand(plain, "acb", example_inputs=x)
    assert report.preserve_error is not None and report.preserve_error <= FP32_SCALE_REL
    _perturb(expanded, seed=5)
    deploy = reparam.reparameterize(expanded.eval(), x)
    assert graph_signature(deploy) == graph_signature(reparam.reparameterize(plain, x))
    assert conv_layout(deploy) == conv_layout(plain)
    with torch.no_grad():
        assert _rel(expanded(x), deploy(x)) <= FP32_SCALE_REL


def test_expanding_resnet18_with_acb_matches_the_zoo_acb_resnet18():
    """Two independent paths to ACB-ResNet-18: the same parameter count, tensor shapes and conv layout."""
    kwargs = {"width": 0.25, "num_classes": 10}
    expanded, _ = expand(create_model("resnet18", **kwargs), "acb", check=False)
    zoo = create_model("acb_resnet18", **kwargs)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(expanded) == count(zoo)
    shapes = lambda m: sorted(tuple(t.shape) for t in m.state_dict().values())  # noqa: E731
    assert shapes(expanded) == shapes(zoo)
    assert conv_layout(expanded) == conv_layout(zoo)
    assert len(conv_layout(zoo)) == 3 * 17 + 3 + 1  # 17 ACBs, 3 shortcuts, fc


def test_untraceable_model_expands_its_traceable_parts():
    torch.manual_seed(0)
    plain = randomize_batchnorm(DataDependent()).eval()
    x = torch.randn(2, 3, 10, 10)
    expanded, report = expand(plain, "acb", example_inputs=x)
    assert [e.path for e in report.expanded] == ["block.0"]
    assert "cannot be traced" in {s.where: s.reason for s in report.left}["stem"]
    assert report.preserve_error == 0.0 and report.roundtrip_layout is True
