"""Every zoo model converts exactly, loses its BatchNorms and (where re-parameterized) its branches."""

from __future__ import annotations

import operator

import pytest
import torch
from torch import fx, nn

from reparam.engine import convert
from reparam.equivalence import BoundaryKind
from reparam.equivalence.capture import graph_node_values
from reparam.profile import count_macs
from reparam.zoo import create_model, list_models
from tests.engine._models import count, error, prepared

BN = nn.modules.batchnorm._BatchNorm
REPARAM = {"acb_resnet18", "acb_resnet50", "acb_resnet56_cifar", "expanded", "repvgg_a0"}


def _tiny(name: str, seed: int = 0) -> nn.Module:
    return prepared(create_model(name, num_classes=7, width=0.25), seed)


def _conv_shapes(model: nn.Module) -> list[tuple]:
    return [
        (tuple(m.weight.shape), m.stride, m.padding, m.groups)
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
    ]


@pytest.mark.parametrize("name", list_models())
def test_zoo_model_converts_exactly(name):
    model = _tiny(name)
    x = torch.randn(2, 3, 32, 32)
    result = convert(model, x)
    deploy = result.model
    assert error(model, deploy, x) <= 1e-5
    assert result.report.check.passed and result.report.check.relative_error <= 1e-5
    # MACs read off the shaped graphs are what hooks on a run of each model count
    assert result.report.before.macs == count_macs(model, (x,))
    assert result.report.after.macs == count_macs(deploy, (x,))
    assert count(deploy, BN) == 0, [x.reason for x in result.report.left_alone]
    before, after = count(model, nn.Conv2d), count(deploy, nn.Conv2d)
    if name in REPARAM:
        assert after < before
    else:
        assert after == before
    assert result.report.after.params < result.report.before.params
    assert result.report.after.macs <= result.report.before.macs
    assert isinstance(deploy, fx.GraphModule) and result.record.boundaries.kind is BoundaryKind.GRAPH_NODE


def test_acb_resnet18_becomes_exactly_plain_resnet18():
    acb, plain = _tiny("acb_resnet18"), _tiny("resnet18")
    deploy = convert(acb, torch.randn(1, 3, 32, 32)).model
    plain_deploy = convert(plain, torch.randn(1, 3, 32, 32)).model
    assert count(deploy, nn.Conv2d) == count(plain, nn.Conv2d) == 20
    assert _conv_shapes(deploy) == _conv_shapes(plain_deploy)
    # fused convs keep the names users know: the ACB at layer1.0.conv1 is now a conv called that
    assert isinstance(deploy.get_submodule("layer1.0.conv1"), nn.Conv2d)
    assert deploy.get_submodule("layer1.0.conv1").weight.shape[-2:] == (3, 3)


def test_repvgg_a0_becomes_a_plain_3x3_conv_chain():
    model = _tiny("repvgg_a0")
    deploy = convert(model, torch.randn(1, 3, 32, 32)).model
    plain = convert(_tiny("repvgg_a0_plain"), torch.randn(1, 3, 32, 32)).model
    convs = [m for m in deploy.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 22 and all(c.kernel_size == (3, 3) for c in convs)
    assert _conv_shapes(deploy) == _conv_shapes(plain)
    adds = [n for n in deploy.graph.nodes if n.target in (operator.add, torch.add)]
    assert adds == []  # no branch left anywhere
    kinds = [
        type(deploy.get_submodule(n.target)).__name__ for n in deploy.graph.nodes if n.op == "call_module"
    ]
    assert kinds[:-2] == ["Conv2d", "ReLU"] * 22  # conv, relu, conv, relu, ... then pool and classifier


def test_sk_units_fold_branch_and_attention_bn_and_keep_the_attention():
    model = _tiny("sknet26")
    deploy = convert(model, torch.randn(2, 3, 32, 32)).model
    assert count(model, nn.BatchNorm1d) > 0 and count(deploy, BN) == 0
    assert count(deploy, nn.Linear) == count(model, nn.Linear)  # attention FCs stay (BN folded into fc)
    softmax = [n for n in deploy.graph.nodes if "softmax" in str(n.target)]
    from reparam.blocks import SKConv

    assert len(softmax) == count(model, SKConv) > 0


@pytest.mark.parametrize("name", ["acb_resnet18", "repvgg_a0", "sknet26"])
def test_block_boundaries_hold_the_original_block_outputs(name):
    model = _tiny(name)
    x = torch.randn(2, 3, 32, 32)
    result = convert(model, x)
    boundaries = result.record.boundaries
    nonleaf = {n for n, m in model.named_modules() if n and list(m.children())}
    assert {n for n in nonleaf if "." not in n} <= set(boundaries)  # every stage has its boundary
    assert set(boundaries) <= nonleaf
    if name == "acb_resnet18":
        # an ACB summed with the residual keeps its own boundary: every block's output still exists
        assert set(boundaries) == nonleaf and "layer1.0.conv2" in boundaries
    outputs = {}
    modules = dict(model.named_modules())
    handles = [
        modules[p].register_forward_hook(lambda m, i, o, p=p: outputs.setdefault(p, o)) for p in boundaries
    ]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    values = graph_node_values(result.model, set(boundaries.values()), (x,))
    for path, node in boundaries.items():
        ref, (got,) = outputs[path], values[node]
        got = torch.from_numpy(got)
        assert ref.shape == got.shape, path
        assert (ref - got).abs().max() <= 1e-5 * ref.abs().max(), path
