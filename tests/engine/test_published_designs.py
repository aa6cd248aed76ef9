"""The engine fuses published block designs whatever code computes them.

Each model is checked numerically (fp32 rule, BN statistics randomized) and structurally: no batch
norm left (module or functional call), no operation left that reads only parameters, and the conv
count of the plain deploy architecture.
"""

from __future__ import annotations

import operator

import pytest
import torch
from torch import fx, nn

from reparam.engine import convert
from reparam.numerics import randomize_batchnorm, scale_relative_error
from tests.engine import _published as pub
from tests.engine._models import assert_untouched, fingerprint

_BATCH_NORM_CALLS = {"batch_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit"}
_CONV_CALLS = {"conv1d", "conv2d", "conv3d", "convolution"}


def _name(target) -> str:
    return getattr(target, "__name__", str(target)).split(".")[0]


def structure(deploy: nn.Module) -> dict[str, int]:
    """Conv and batch-norm operations (modules or calls) and operations that read only parameters."""
    convs = sum(isinstance(m, nn.modules.conv._ConvNd) for m in deploy.modules())
    norms = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in deploy.modules())
    param_only = 0
    for gm in (m for m in deploy.modules() if isinstance(m, fx.GraphModule)):
        for node in gm.graph.nodes:
            if node.op not in ("call_function", "call_method"):
                continue
            name = _name(node.target) if node.op == "call_function" else str(node.target)
            convs += name in _CONV_CALLS
            norms += name in _BATCH_NORM_CALLS
            inputs = node.all_input_nodes
            if inputs and all(n.op == "get_attr" for n in inputs) and node.target is not operator.getitem:
                param_only += 1
    return {"convs": convs, "norms": norms, "param_only": param_only}


def _check(model: nn.Module, x: torch.Tensor, convs: int):
    torch.manual_seed(1)
    randomize_batchnorm(model, 3)
    model.eval()
    before = fingerprint(model)
    result = convert(model, x)  # the built-in check runs too
    assert_untouched(model, before)
    with torch.no_grad():
        ref, got = model(x.clone()), result.model(x.clone())
    assert scale_relative_error(ref.numpy(), got.numpy()) <= 1e-5
    assert structure(result.model) == {"convs": convs, "norms": 0, "param_only": 0}, result.report.render()
    _check_other_sizes(model, result.model, x)
    return result


def _check_other_sizes(model: nn.Module, deploy: nn.Module, x: torch.Tensor) -> None:
    """The deploy model runs, and agrees, at other batch sizes and wherever the original runs at
    other spatial sizes."""
    n, c, h, w = x.shape
    for shape in [(1, c, h, w), (3, c, h, w), (2, c, h + 1, w + 1), (1, c, h + 3, w + 2)]:
        other = torch.randn(*shape)
        with torch.no_grad():
            try:
                ref = model(other.clone())
            except RuntimeError:  # the original does not take this size either
                continue
            got = deploy(other.clone())
        assert scale_relative_error(ref.numpy(), got.numpy()) <= 1e-5, shape


def test_functional_conv_and_batch_norm():
    _check(pub.FunctionalConvBN(3, 4), torch.randn(2, 3, 8, 8), convs=1)


def test_batch_norm_subclass_with_its_own_forward_and_an_assert():
    result = _check(pub.RepStyleWithNormAct(4), torch.randn(2, 4, 8, 8), convs=1)
    assert result.report.tracing == "whole model"


@pytest.mark.parametrize("groups", [1, 2])
def test_weight_built_in_forward_with_einsum_and_conv_of_parameters(groups):
    result = _check(pub.OnlineReparam(4, 4, groups), torch.randn(2, 4, 7, 7), convs=1)
    assert any("evaluated once in float64" in n for n in result.report.notes)


def test_in_place_border_fill_one_by_one_then_k_by_k_and_pool_branch_merge_into_one_conv():
    result = _check(pub.DiverseBranches(4), torch.randn(2, 4, 9, 9), convs=1)
    assert "by torch.export" in result.report.tracing
    conv = next(m for m in result.model.modules() if isinstance(m, nn.Conv2d))
    assert conv.kernel_size == (3, 3) and conv.padding == (1, 1)


def test_five_by_five_diverse_branches_merge_into_one_conv():
    _check(pub.DiverseBranches(4, k=5), torch.randn(1, 4, 11, 11), convs=1)


def test_batch_norm_before_an_unpadded_pointwise_conv_folds():
    _check(pub.PreNormPointwise(4), torch.randn(2, 4, 9, 9), convs=2)


def test_shape_if_at_the_top_level_still_fuses_everything():
    """torch.export would trace the odd-width branch only: converted part by part, the deploy model
    keeps the ``if`` and takes even widths too."""
    result = _check(pub.ShapeCheckTop(4), torch.randn(2, 3, 9, 9), convs=3)
    assert result.report.tracing.startswith("per submodule")


def test_sync_batch_norm():
    _check(pub.SyncNormNet(4), torch.randn(2, 3, 8, 8), convs=1)


@pytest.mark.slow  # ONNX export of three models
@pytest.mark.parametrize(
    ("make", "shape", "tracing"),
    [
        (lambda: pub.DiverseBranches(4), (2, 4, 9, 9), "whole model, by torch.export"),
        (lambda: pub.ShapeCheckTop(4), (2, 3, 9, 9), "per submodule"),
        (lambda: pub.OnlineReparam(4, 4, 2), (2, 4, 7, 7), "whole model, by torch.export"),
    ],
)
def test_models_fx_cannot_trace_ship_as_pt2_and_onnx(make, shape, tracing, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from reparam.artifact import load_artifact, save_artifact
    from reparam.exporters.onnx import export_onnx

    model = randomize_batchnorm(make(), 1).eval()
    x = torch.randn(*shape)
    result = convert(model, x)
    assert result.report.tracing.startswith(tracing)
    save_artifact(result.model, (x,), tmp_path / "m.pt2", report=result.report, record=result.record)
    export_onnx(result, (x,), tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    with torch.no_grad():
        ref = model(x.clone())
        from_pt2 = load_artifact(tmp_path / "m.pt2")(x.clone())
    from_onnx = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert scale_relative_error(ref.numpy(), from_pt2.numpy()) <= 1e-5
    assert scale_relative_error(ref.numpy(), from_onnx) <= 1e-5
    three = torch.randn(3, *shape[1:])  # the batch stays free in both files
    with torch.no_grad():
        ref, from_pt2 = model(three.clone()), load_artifact(tmp_path / "m.pt2")(three.clone())
    assert scale_relative_error(ref.numpy(), from_pt2.numpy()) <= 1e-5
    from_onnx = session.run(None, {session.get_inputs()[0].name: three.numpy()})[0]
    assert scale_relative_error(ref.numpy(), from_onnx) <= 1e-5
