"""Randomized training-form ONNX graphs: the rewrite is never wrong, and merges what it should.

Each example is a sum of branches over one input, written with onnx.helper: convs of random
kernel sizes, dilations, groups and (possibly asymmetric) padding, with or without a BatchNorm,
Pad nodes, identity BatchNorms, average pools with a BatchNorm, 1x1 -> kxk chains, and sometimes a
ReLU inside a branch (a near miss). Every result is compared with the input in ONNX Runtime,
independently of the library's own check.
"""

from __future__ import annotations

import numpy as np
import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper

from tests.onnx_reparam._helpers import assert_equal_in_ort, bn_inits, bn_node, hand_model, ops, tensor

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
C = 4


@st.composite
def branch(draw, stride: int):
    kind = draw(st.sampled_from(["conv", "conv", "pad_conv", "identity", "avg", "chain"]))
    kh, kw = draw(st.sampled_from([(1, 1), (3, 3), (1, 3), (3, 1), (5, 5), (3, 5)]))
    dil = draw(st.sampled_from([1, 1, 2]))
    groups = draw(st.sampled_from([1, 2, 4]))
    crop = draw(st.integers(0, 3)) == 0  # a crop (Slice) of the input instead of some padding
    top = -draw(st.integers(1, 2)) if crop else draw(st.integers(0, dil * (kh - 1)))
    left = draw(st.integers(-1 if crop else 0, dil * (kw - 1)))
    relu = draw(st.booleans()) and draw(st.booleans())
    bn = draw(st.booleans()) or kind == "identity"
    return {
        "kind": kind,
        "k": (kh, kw),
        "dil": dil,
        "groups": groups,
        "start": (top, left),
        "stride": stride,
        "relu": relu,
        "bn": bn,
    }


@st.composite
def block(draw):
    stride = draw(st.sampled_from([1, 1, 2]))
    branches = draw(st.lists(branch(stride), min_size=2, max_size=4))
    if stride == 2:  # an identity or pool keeps the size: give those branches a conv instead
        for b in branches:
            b["kind"] = "conv" if b["kind"] in ("identity", "avg") else b["kind"]
    return {
        "branches": branches,
        "sum": draw(st.sampled_from(["Sum", "Add"])),
        "seed": draw(st.integers(0, 99)),
    }


def _pads(b):
    """Pads that keep the 'same' output size: begin + end = dilation * (k - 1)."""
    (kh, kw), d, (top, left) = b["k"], b["dil"], b["start"]
    return [top, left, d * (kh - 1) - top, d * (kw - 1) - left]


def _branch_nodes(b, i, rng, nodes, inits):
    """Nodes computing branch ``i`` from "x"; returns the branch's output tensor name."""
    p = f"b{i}"
    kind, out = b["kind"], f"{p}.out"
    if kind == "identity":
        inits += bn_inits(f"{p}.bn", C, rng)
        nodes.append(bn_node(f"{p}.bn", "x", out))
        return out
    if kind == "avg":
        nodes.append(
            helper.make_node(
                "AveragePool", ["x"], [f"{p}.pool"], kernel_shape=[3, 3], pads=[1] * 4, count_include_pad=1
            )
        )
        inits += bn_inits(f"{p}.bn", C, rng)
        nodes.append(bn_node(f"{p}.bn", f"{p}.pool", out))
        return out
    src = "x"
    if kind == "chain":  # 1x1 conv + BN, then the kxk conv on it, unpadded after a zero Pad
        inits += [tensor(f"{p}.w1", rng.normal(0, 0.4, (C, C, 1, 1)))]
        nodes.append(helper.make_node("Conv", ["x", f"{p}.w1"], [f"{p}.c1"]))
        src = f"{p}.c1"
    pads = _pads(b)
    if min(pads) < 0:  # crop the input where the padding would be negative
        starts = [max(0, -p) for p in pads[:2]]
        ends = [-p if p < 0 else 2**62 for p in pads[2:]]
        names = [f"{p}.{k}" for k in ("starts", "ends", "axes")]
        for name, value in zip(names, (starts, ends, [2, 3])):
            inits.append(onnx.numpy_helper.from_array(np.array(value, np.int64), name))
        nodes.append(helper.make_node("Slice", [src, *names], [f"{p}.cropped"]))
        src, pads = f"{p}.cropped", [max(0, q) for q in pads]
    if kind in ("pad_conv", "chain"):
        inits.append(
            onnx.numpy_helper.from_array(np.array([0, 0, *pads[:2], 0, 0, *pads[2:]], np.int64), f"{p}.pads")
        )
        nodes.append(helper.make_node("Pad", [src, f"{p}.pads"], [f"{p}.padded"]))
        src, pads = f"{p}.padded", [0, 0, 0, 0]
    g = b["groups"]
    inits.append(tensor(f"{p}.w", rng.normal(0, 0.4, (C, C // g, *b["k"]))))
    conv_out = f"{p}.conv" if b["bn"] or b["relu"] else out
    nodes.append(
        helper.make_node(
            "Conv",
            [src, f"{p}.w"],
            [conv_out],
            pads=pads,
            strides=[b["stride"]] * 2,
            dilations=[b["dil"]] * 2,
            group=g,
        )
    )
    last = conv_out
    if b["bn"]:
        inits += bn_inits(f"{p}.bn", C, rng)
        last = f"{p}.bnout" if b["relu"] else out
        nodes.append(bn_node(f"{p}.bn", conv_out, last))
    if b["relu"]:
        nodes.append(helper.make_node("Relu", [last], [out]))
    return out


def build(spec):
    rng = np.random.default_rng(spec["seed"])
    nodes, inits = [], []
    outs = [_branch_nodes(b, i, rng, nodes, inits) for i, b in enumerate(spec["branches"])]
    if spec["sum"] == "Sum":
        nodes.append(helper.make_node("Sum", outs, ["y"]))
    else:
        acc = outs[0]
        for j, o in enumerate(outs[1:]):
            name = "y" if j == len(outs) - 2 else f"acc{j}"
            nodes.append(helper.make_node("Add", [acc, o], [name]))
            acc = name
    return hand_model(nodes, inits, shape=(1, C, 11, 11))


@SETTINGS
@given(block())
def test_random_training_graphs_are_never_wrong(tmp_path, spec):
    from reparam.onnx_reparam.convert import convert_onnx

    src = tmp_path / "train.onnx"
    onnx.save(build(spec), str(src))
    out = tmp_path / "deploy.onnx"
    result = convert_onnx(src, out, check=False)
    for shape in [(1, C, 11, 11), (2, C, 8, 13)]:
        assert_equal_in_ort(src, out, shape, seed=spec["seed"])
    if not any(b["relu"] or min(_pads(b)) < 0 for b in spec["branches"]):
        # merged into one conv, unless that conv would cost more than the branches (then: said so)
        reasons = [x.reason for x in result.report.left_alone]
        merged = ops(out) == {"Conv": 1}
        assert merged or any("cost" in r for r in reasons), (spec, reasons, ops(out))
