"""Graphs in the shapes other frameworks write, and near misses that must stay as they are."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import helper
from torch import nn

from tests.onnx_reparam._helpers import (
    NEWEST_ONNX_OPSET,
    assert_equal_in_ort,
    bn_inits,
    bn_node,
    convert,
    export,
    hand_model,
    ops,
    tensor,
)

RNG_SEED = 3


def _save(model, tmp_path, name="train.onnx"):
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def _conv(name, x, y, w, **attrs):
    return helper.make_node("Conv", [x, w], [y], name=name, **attrs)


@pytest.mark.parametrize("opset", [13, NEWEST_ONNX_OPSET])
def test_paddle_style_repvgg_with_odd_names_and_sum_of_three(tmp_path, opset):
    """BN without training_mode, unusual and empty node names, one Sum node over three branches."""
    rng = np.random.default_rng(RNG_SEED)
    c = 4
    inits = [
        tensor("w 3x3:0", rng.normal(0, 0.3, (c, c, 3, 3))),
        tensor("w/1x1", rng.normal(0, 0.3, (c, c, 1, 1))),
        *bn_inits("bn.a", c, rng),
        *bn_inits("bn.b", c, rng),
        *bn_inits("bn.id", c, rng),
    ]
    nodes = [
        _conv("conv#1 (3x3)", "x", "a0", "w 3x3:0", pads=[1, 1, 1, 1]),
        bn_node("bn.a", "a0", "a"),
        _conv("", "x", "b0", "w/1x1"),
        bn_node("bn.b", "b0", "b"),
        bn_node("bn.id", "x", "i"),
        helper.make_node("Sum", ["a", "b", "i"], ["s"], name=""),
        helper.make_node("Relu", ["s"], ["y"], name="relu"),
    ]
    src = _save(hand_model(nodes, inits, opset=opset), tmp_path)
    result = convert(src, tmp_path)
    assert ops(result.output) == {"Conv": 1, "Relu": 1}
    assert_equal_in_ort(src, result.output, (2, c, 9, 11))


def test_mul_add_instead_of_bn_and_bias_add(tmp_path):
    """TF-style: Conv with a bias, then a separate Add of a constant, Mul/Add for the BatchNorm."""
    rng = np.random.default_rng(RNG_SEED)
    c = 4
    inits = [
        tensor("w", rng.normal(0, 0.3, (6, c, 3, 3))),
        tensor("b", rng.normal(0, 0.3, 6)),
        tensor("extra", rng.normal(0, 0.3, (6, 1, 1))),
        tensor("scale", rng.uniform(0.5, 1.5, (1, 6, 1, 1))),
        tensor("shift", rng.normal(0, 0.3, (1, 6, 1, 1))),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c", "extra"], ["c2"]),
        helper.make_node("Mul", ["scale", "c2"], ["m"]),
        helper.make_node("Add", ["m", "shift"], ["y"]),
    ]
    src = _save(hand_model(nodes, inits), tmp_path)
    result = convert(src, tmp_path)
    assert ops(result.output) == {"Conv": 1}
    assert_equal_in_ort(src, result.output, (1, c, 8, 8))


def test_explicit_pad_and_pads_attribute_branches(tmp_path):
    """A Pad node before an unpadded 3x3, a 3x1 with its own pads, a 1x1: one 3x3 conv."""
    rng = np.random.default_rng(RNG_SEED)
    c = 4
    inits = [
        tensor("k3", rng.normal(0, 0.3, (c, c, 3, 3))),
        tensor("k31", rng.normal(0, 0.3, (c, c, 3, 1))),
        tensor("k1", rng.normal(0, 0.3, (c, c, 1, 1))),
        onnx.numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], dtype=np.int64), "pads"),
    ]
    nodes = [
        helper.make_node("Pad", ["x", "pads"], ["p"]),
        _conv("k3", "p", "a", "k3"),
        _conv("k31", "x", "b", "k31", pads=[1, 0, 1, 0]),
        _conv("k1", "x", "d", "k1"),
        helper.make_node("Sum", ["a", "b", "d"], ["y"]),
    ]
    src = _save(hand_model(nodes, inits, opset=13), tmp_path)
    result = convert(src, tmp_path)
    assert ops(result.output) == {"Conv": 1}
    assert_equal_in_ort(src, result.output, (1, c, 7, 9))


def test_bn_in_training_mode_is_left_alone(tmp_path):
    rng = np.random.default_rng(RNG_SEED)
    inits = [tensor("w", rng.normal(0, 0.3, (4, 4, 1, 1))), *bn_inits("bn", 4, rng)]
    bn = bn_node("bn", "c", "y", training_mode=1)
    bn.output.extend(["running_mean", "running_var"])
    nodes = [_conv("conv", "x", "c", "w"), bn]
    src = _save(hand_model(nodes, inits), tmp_path)
    result = convert(src, tmp_path, check=False)
    assert ops(result.output)["BatchNormalization"] == 1
    assert any("training mode" in x.reason for x in result.report.left_alone)


def test_computed_weights_are_left_alone(tmp_path):
    rng = np.random.default_rng(RNG_SEED)
    inits = [tensor("w", rng.normal(0, 0.3, (4, 4, 1, 1))), *bn_inits("bn", 4, rng)]
    nodes = [
        helper.make_node("Abs", ["w"], ["w2"]),
        _conv("conv", "x", "c", "w2"),
        bn_node("bn", "c", "y"),
    ]
    src = _save(hand_model(nodes, inits), tmp_path)
    result = convert(src, tmp_path)
    assert ops(result.output)["BatchNormalization"] == 1
    assert any("not constants" in x.reason for x in result.report.left_alone)


class ReluInBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(4, 4, 1, bias=False), nn.BatchNorm2d(4))

    def forward(self, x):
        return self.a(x) + self.b(x)


class UnequalStrides(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(4, 4, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(4))
        self.b = nn.Sequential(nn.Conv2d(4, 4, 7, bias=False), nn.BatchNorm2d(4))  # 12 -> 6 as well

    def forward(self, x):
        return self.a(x) + self.b(x)


class BranchUsedElsewhere(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4))
        self.b = nn.Sequential(nn.Conv2d(4, 4, 1, bias=False), nn.BatchNorm2d(4))

    def forward(self, x):
        a = self.a(x)
        return a + self.b(x), a


@pytest.mark.parametrize(
    ("model", "reason", "convs"),
    [
        (ReluInBranch(), "Relu", 2),
        (UnequalStrides(), "strides differ", 2),
        (BranchUsedElsewhere(), "also read elsewhere", 2),
    ],
)
def test_near_misses_stay_with_a_reason(tmp_path, model, reason, convs):
    names = ["y", "a"] if isinstance(model, BranchUsedElsewhere) else None
    src = export(model, tmp_path / "train.onnx", (1, 4, 12, 12), dynamic=False, output_names=names)
    result = convert(src, tmp_path)
    after = ops(result.output)
    assert after["Conv"] == convs and after["Add"] == 1 and "BatchNormalization" not in after
    assert any(reason in x.reason for x in result.report.left_alone), result.report.left_alone
    assert_equal_in_ort(src, result.output, (1, 4, 12, 12))


def test_bn_before_padded_conv_stays(tmp_path):
    model = nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU(), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3, padding=1))
    src = export(model, tmp_path / "train.onnx", (1, 4, 12, 12))
    result = convert(src, tmp_path)
    assert ops(result.output)["BatchNormalization"] == 1
    assert any("zero padding" in x.reason for x in result.report.left_alone)


def test_a_wrong_rewrite_is_caught_and_not_written(tmp_path, monkeypatch):
    """The check is real: a corrupted fused kernel fails, names the tensor, writes nothing."""
    from reparam.onnx_reparam import terms

    src = export(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)), tmp_path / "t.onnx")
    original = terms._scale_shift_after

    def corrupted(a, b):
        out = original(a, b)
        return terms.replace(out, kernel=out.kernel * 1.01)

    monkeypatch.setattr(terms, "_scale_shift_after", corrupted)
    from reparam.onnx_reparam.convert import convert_onnx

    result = convert_onnx(src, tmp_path / "deploy.onnx")
    assert not result.passed and result.output is None
    assert not (tmp_path / "deploy.onnx").exists()
    assert result.check.first_diverging and "output of" in result.check.first_diverging
    torch.manual_seed(0)


def test_every_remaining_bn_has_a_reason(tmp_path):
    model = nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU(), nn.BatchNorm2d(4), nn.ReLU())
    src = export(model, tmp_path / "train.onnx", (1, 4, 12, 12))
    result = convert(src, tmp_path)
    assert ops(result.output)["BatchNormalization"] == 1
    [entry] = result.report.left_alone
    assert "BatchNorm stays" in entry.reason and "Relu" in entry.reason


def test_tf_style_dense_matmul_bias_and_batchnorm(tmp_path):
    """tf2onnx writes Dense as MatMul + Add and Keras' BatchNormalization as Mul + Add."""
    rng = np.random.default_rng(RNG_SEED)
    inits = [
        tensor("kernel", rng.normal(0, 0.3, (6, 5))),
        tensor("bias", rng.normal(0, 0.3, 5)),
        tensor("bn_scale", rng.uniform(0.5, 1.5, 5)),
        tensor("bn_offset", rng.normal(0, 0.3, 5)),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "kernel"], ["m"], name="dense/MatMul"),
        helper.make_node("Add", ["m", "bias"], ["d"], name="dense/BiasAdd"),
        helper.make_node("Mul", ["d", "bn_scale"], ["s"], name="bn/mul_1"),
        helper.make_node("Add", ["s", "bn_offset"], ["y"], name="bn/add_1"),
    ]
    graph = helper.make_graph(
        nodes,
        "dense",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 6])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 5])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    src = _save(model, tmp_path)
    result = convert(src, tmp_path)
    assert ops(result.output) == {"Gemm": 1}
    assert_equal_in_ort(src, result.output, (3, 6))


def test_weights_listed_as_graph_inputs(tmp_path):
    """From IR 4 on, an initializer that is also a graph input may be fed: it is not folded."""
    rng = np.random.default_rng(RNG_SEED)
    inits = [tensor("w", rng.normal(0, 0.3, (4, 4, 1, 1))), *bn_inits("bn", 4, rng)]
    model = hand_model([_conv("conv", "x", "c", "w"), bn_node("bn", "c", "y")], inits)
    model.graph.input.append(helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, [4, 4, 1, 1]))
    src = _save(model, tmp_path)
    result = convert(src, tmp_path)
    assert ops(result.output)["BatchNormalization"] == 1
    assert any("graph inputs" in x.reason for x in result.report.left_alone)


def test_crop_then_pad_of_the_same_border_stays(tmp_path):
    """Slice off a row, pad a zero row back: not the identity, so no net-zero padding."""
    rng = np.random.default_rng(RNG_SEED)
    ints = {
        "starts": [1],
        "ends": [2**62],
        "axes": [2],
        "pads": [0, 0, 1, 0, 0, 0, 0, 0],
    }
    inits = [tensor("w", rng.normal(0, 0.3, (4, 4, 3, 3)))]
    inits += [onnx.numpy_helper.from_array(np.array(v, np.int64), k) for k, v in ints.items()]
    nodes = [
        helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["s"]),
        helper.make_node("Pad", ["s", "pads"], ["p"]),
        _conv("conv", "p", "y", "w", pads=[1, 1, 1, 1]),
    ]
    src = _save(hand_model(nodes, inits), tmp_path)
    result = convert(src, tmp_path)
    assert_equal_in_ort(src, result.output, (1, 4, 9, 9))
    assert ops(result.output) == {"Slice": 1, "Conv": 1}  # the Pad joins the conv, the crop stays


def test_tied_weights_read_through_identity(tmp_path):
    """torch.onnx writes a weight shared by two layers once, the second reader through an Identity."""
    rng = np.random.default_rng(RNG_SEED)
    inits = [
        tensor("w", rng.normal(0, 0.3, (4, 4, 3, 3))),
        *bn_inits("bn1", 4, rng),
        *bn_inits("bn2", 4, rng),
    ]
    nodes = [
        helper.make_node("Identity", ["w"], ["w_tied"]),
        _conv("conv1", "x", "c1", "w", pads=[1, 1, 1, 1]),
        bn_node("bn1", "c1", "b1"),
        helper.make_node("Relu", ["b1"], ["r"]),
        _conv("conv2", "r", "c2", "w_tied", pads=[1, 1, 1, 1]),
        helper.make_node("Identity", ["c2"], ["c2_copy"]),
        bn_node("bn2", "c2_copy", "y"),
    ]
    src = _save(hand_model(nodes, inits), tmp_path)
    result = convert(src, tmp_path)
    assert ops(result.output) == {"Conv": 2, "Relu": 1}
    assert_equal_in_ort(src, result.output, (1, 4, 8, 8))


def test_repmixer_style_difference_of_branches(tmp_path):
    """FastViT's RepMixer: x + layer_scale * (conv_bn(x) - bn(x)), a Sub of two branches."""
    rng = np.random.default_rng(RNG_SEED)
    c = 4
    inits = [
        tensor("dw", rng.normal(0, 0.3, (c, 1, 3, 3))),
        tensor("layer_scale", rng.uniform(0.5, 1.5, (c, 1, 1))),
        *bn_inits("mix.bn", c, rng),
        *bn_inits("norm", c, rng),
    ]
    nodes = [
        _conv("mixer.conv", "x", "m0", "dw", pads=[1, 1, 1, 1], group=c),
        bn_node("mix.bn", "m0", "m"),
        bn_node("norm", "x", "n"),
        helper.make_node("Sub", ["m", "n"], ["d"]),
        helper.make_node("Mul", ["d", "layer_scale"], ["s"]),
        helper.make_node("Add", ["x", "s"], ["y"]),
    ]
    src = _save(hand_model(nodes, inits), tmp_path)
    result = convert(src, tmp_path)
    assert ops(result.output) == {"Conv": 1}
    assert_equal_in_ort(src, result.output, (2, c, 9, 7))
