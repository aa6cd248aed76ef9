"""Training-form ONNX files for the tests: torch exports with BNs and branches kept, hand-built graphs."""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from reparam.numerics import randomize_batchnorm, scale_relative_error
from reparam.onnx_reparam.convert import OnnxConversion, convert_onnx

NEWEST_OPSET = 20  # the newest opset torch's TorchScript exporter writes
NEWEST_ONNX_OPSET = onnx.defs.onnx_opset_version()  # for hand-built graphs


def export(
    model: nn.Module,
    path: Path,
    shape: tuple[int, ...] = (1, 4, 12, 12),
    *,
    opset: int = 17,
    dynamic: bool = True,
    seed: int = 0,
    output_names: list[str] | None = None,
) -> Path:
    """Export ``model`` (eval mode, randomized BN statistics) without constant folding."""
    model = randomize_batchnorm(model, seed=seed).eval()
    x = torch.randn(*shape)
    axes = {"input": {0: "batch", 2: "height", 3: "width"}} if dynamic and len(shape) == 4 else None
    if dynamic and len(shape) == 2:
        axes = {"input": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            str(path),
            dynamo=False,
            do_constant_folding=False,
            opset_version=opset,
            input_names=["input"],
            output_names=output_names,
            dynamic_axes=axes,
        )
    return path


def ops(path: Path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def run(path: Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)


def assert_equal_in_ort(
    a: Path, b: Path, shape: tuple[int, ...], seed: int = 1, limit: float = 1e-5
) -> float:
    """Independent of the library's check: both files on one random input, fp32 rule."""
    name = onnx.load(str(a), load_external_data=False).graph.input[0].name
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    worst = 0.0
    for ref, got in zip(run(a, {name: x}), run(b, {name: x}), strict=True):
        assert np.isfinite(got).all()
        assert float(np.abs(ref).max()) > 1e-3, "degenerate reference"
        worst = max(worst, scale_relative_error(ref.astype(np.float64), got.astype(np.float64)))
    assert worst <= limit, worst
    return worst


def convert(src: Path, tmp: Path, **kwargs) -> OnnxConversion:
    result = convert_onnx(src, tmp / (src.stem + ".deploy.onnx"), **kwargs)
    assert result.passed, result.check.to_dict() if result.check else None
    return result


def tensor(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def hand_model(
    nodes, inits, shape=(1, 4, 10, 10), out_shape=("N", "Co", "Ho", "Wo"), opset: int = 17, outputs=("y",)
):
    """A model over input "x" [N, C, H, W] (N, H, W free) made of ``nodes`` and ``inits``."""
    dims = ["N", shape[1], "H", "W"]
    graph = helper.make_graph(
        nodes,
        "hand",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, out_shape) for o in outputs],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset <= 17 else onnx.helper.find_min_ir_version_for([model.opset_import[0]])
    onnx.checker.check_model(model)
    return model


def bn_inits(prefix: str, channels: int, rng: np.random.Generator) -> list[onnx.TensorProto]:
    return [
        tensor(f"{prefix}.gamma", rng.uniform(0.5, 1.5, channels)),
        tensor(f"{prefix}.beta", rng.normal(0, 0.5, channels)),
        tensor(f"{prefix}.mean", rng.normal(0, 0.5, channels)),
        tensor(f"{prefix}.var", rng.uniform(0.5, 1.5, channels)),
    ]


def bn_node(prefix: str, x: str, y: str, **attrs) -> onnx.NodeProto:
    inputs = [x] + [f"{prefix}.{p}" for p in ("gamma", "beta", "mean", "var")]
    return helper.make_node("BatchNormalization", inputs, [y], name=prefix, **attrs)
