"""onnxsim without the weights' bytes gives the graph onnxsim gives with them, or is not used."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
onnxsim = pytest.importorskip("onnxsim")

from reparam.engine import convert  # noqa: E402
from reparam.exporters.onnx import export as onnx_export  # noqa: E402
from reparam.exporters.onnx.weightless import LARGE_ELEMENTS, graft, infer_shapes, split_weights  # noqa: E402
from reparam.numerics import randomize_batchnorm  # noqa: E402
from reparam.zoo import create_model  # noqa: E402


def _simplified(model, shapes):
    with contextlib.redirect_stdout(io.StringIO()):
        out, ok = onnxsim.simplify(model, check_n=0, test_input_shapes=shapes)
    assert ok
    return out


def _shapes(value_info) -> dict[str, bytes]:
    return {v.name: v.type.SerializeToString() for v in value_info}


def _exported_graphs(monkeypatch, tmp_path, module, x, **kwargs) -> list:
    """The exporter's graphs as they reach onnxsim."""
    seen = []
    real = onnx_export._simplify
    monkeypatch.setattr(onnx_export, "_simplify", lambda model, *a: seen.append(model) or real(model, *a))
    onnx_export.export_onnx(module, (x,), tmp_path / "m.onnx", **kwargs)
    return seen


@pytest.mark.parametrize("arch", ["acb_resnet18", "repvgg_a0", "se_resnet18", "sknet26"])
def test_a_deploy_graph_simplifies_to_what_onnxsim_gives_with_its_weights(arch, monkeypatch, tmp_path):
    model = randomize_batchnorm(create_model(arch, width=0.25, num_classes=10).eval(), seed=0)
    x = torch.randn(2, 3, 32, 32)
    [graph] = _exported_graphs(monkeypatch, tmp_path, convert(model, (x,), check=False), x)
    split = split_weights(graph)
    assert split is not None, "a deploy graph's kernels are only read by the ops that use them"
    light, weights = split
    assert weights and all(np.prod(t.dims) >= LARGE_ELEMENTS for t in weights.values())
    assert light.ByteSize() < graph.ByteSize() / 4
    shapes = {"input": [2, 3, 32, 32]}
    full = _simplified(graph, shapes)
    inferred = onnx.shape_inference.infer_shapes(graph, check_type=True)
    kernels = {name: t.raw_data for name, t in weights.items()}
    joined = graft(graph, _simplified(light, shapes), weights)
    assert onnx_export.same_computation(joined, full)
    assert {t.name: t.raw_data for t in joined.graph.initializer if t.name in kernels} == kernels
    onnx.checker.check_model(joined, full_check=True)
    # shape inference on the light view gives what it gives on the whole graph
    infer_shapes(joined)
    assert _shapes(joined.graph.value_info) == _shapes(inferred.graph.value_info)


def _graph(nodes, initializers, x_shape, y_shape):
    g = onnx.helper.make_graph(
        nodes,
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x_shape)],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, y_shape)],
        [onnx.numpy_helper.from_array(a, n) for n, a in initializers.items()],
    )
    return onnx.helper.make_model(g)


def test_a_graph_with_batchnorm_or_constant_only_nodes_keeps_its_weights():
    rng = np.random.default_rng(0)
    c = 64
    bn = {n: rng.uniform(0.5, 2, c).astype(np.float32) for n in ("g", "b", "m", "v")}
    conv_bn = _graph(
        [
            onnx.helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
            onnx.helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"]),
        ],
        {"w": rng.standard_normal((c, c, 3, 3)).astype(np.float32), **bn},
        [1, c, 8, 8],
        [1, c, 8, 8],
    )
    assert split_weights(conv_bn) is None  # onnxsim folds BN into the conv kernel: it must see the kernel

    w = rng.standard_normal((128, 128)).astype(np.float32)
    transposed = _graph(  # Transpose(w) is computed from constants only: onnxsim folds it, reading w
        [
            onnx.helper.make_node("Transpose", ["w"], ["wt"]),
            onnx.helper.make_node("MatMul", ["x", "wt"], ["y"]),
        ],
        {"w": w},
        [1, 128],
        [1, 128],
    )
    assert split_weights(transposed) is None
    plain = _graph([onnx.helper.make_node("MatMul", ["x", "w"], ["y"])], {"w": w}, [1, 128], [1, 128])
    light, weights = split_weights(plain)
    assert list(weights) == ["w"] and not light.graph.initializer
    assert [i.name for i in light.graph.input] == ["x", "w"]
    joined = graft(plain, _simplified(light, {"x": [1, 128]}), weights)
    assert [i.name for i in joined.graph.input] == ["x"]
    assert np.array_equal(onnx.numpy_helper.to_array(joined.graph.initializer[0]), w)


def test_the_export_keeps_the_weights_bitwise(tmp_path):
    model = randomize_batchnorm(create_model("acb_resnet18", width=0.25, num_classes=10).eval(), seed=1)
    x = torch.randn(2, 3, 32, 32)
    result = convert(model, (x,), check=False)
    onnx_export.export_onnx(result, (x,), tmp_path / "m.onnx")
    saved = {
        t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "m.onnx")).graph.initializer
    }
    kernels = {name: p.detach().numpy() for name, p in result.model.named_parameters() if p.dim() == 4}
    matched = [name for name in kernels if name in saved]
    assert len(matched) == len(kernels)  # every fused kernel is an initializer of the file, by its name
    assert all(np.array_equal(saved[name], kernels[name]) for name in matched)
    assert not [i.name for i in onnx.load(str(tmp_path / "m.onnx")).graph.input if i.name != "input"]
