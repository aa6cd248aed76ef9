"""Real TensorRT builds and runs (fp32 and fp16 engines of a tiny model, compared with ONNX Runtime).

Skipped where TensorRT or a CUDA device is missing; nothing here has run on the CPU-only machine
the project is developed on.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from reparam.numerics import scale_relative_error
from tests.exporters._models import tiny_net

pytestmark = pytest.mark.gpu

trt = pytest.importorskip(
    "tensorrt", reason="TensorRT is not installed (needs an NVIDIA GPU; see docs/export.md)"
)
if not torch.cuda.is_available():
    pytest.skip("no CUDA device visible", allow_module_level=True)

from reparam.exporters.onnx import export_onnx  # noqa: E402
from reparam.exporters.tensorrt import build_engine, read_engine_sidecar, read_plan_header  # noqa: E402
from reparam.runners import OnnxRuntimeRunner, TensorRTRunner  # noqa: E402


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("trt") / "m.onnx"
    export_onnx(tiny_net(), torch.randn(1, 3, 16, 16), path, dynamo=False)
    return path


@pytest.mark.parametrize(("precision", "tol"), [("fp32", 1e-4), ("fp16", 5e-3)])
def test_engine_matches_onnxruntime(onnx_file, tmp_path, precision, tol):
    engine = tmp_path / f"m.{precision}.engine"
    result = build_engine(
        onnx_file,
        engine,
        precision=precision,
        input_shape=(4, 3, 16, 16),
        max_batch=8,
        timing_cache=tmp_path / "cache.bin",
        progress=False,
    )
    assert engine.is_file() and result.profiles["input"].max[0] == 8
    side = read_engine_sidecar(engine)
    assert side["precision"] == precision and side["tensorrt"] == trt.__version__
    assert json.loads(json.dumps(side["profiles"]))["input"]["opt"] == [4, 3, 16, 16]
    assert read_plan_header(engine).tensorrt_major in (None, int(trt.__version__.split(".")[0]))
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    ref = OnnxRuntimeRunner(onnx_file).run({"input": x})["output"]
    runner = TensorRTRunner(engine)
    assert runner.input_names == ["input"] and runner.output_names == ["output"]
    out = runner.run({"input": x})["output"]
    assert out.shape == ref.shape and scale_relative_error(ref, out) <= tol
    # the timing cache was written with its version/GPU header and is accepted on a rebuild
    build_engine(
        onnx_file,
        tmp_path / "again.engine",
        precision=precision,
        timing_cache=tmp_path / "cache.bin",
        progress=False,
    )


def test_engine_rejects_shapes_outside_the_profile(onnx_file, tmp_path):
    from reparam.errors import ReparamError

    engine = tmp_path / "m.engine"
    build_engine(onnx_file, engine, input_shape=(1, 3, 16, 16), max_batch=2, progress=False)
    with pytest.raises(ReparamError, match="outside the engine's profile"):
        TensorRTRunner(engine).run({"input": np.zeros((4, 3, 16, 16), np.float32)})


def test_qdq_int8_engine_matches_onnxruntime(tmp_path):
    """A Q/DQ ONNX from reparam quantize builds (strongly typed) and computes what ONNX Runtime computes."""
    from reparam.equivalence.metrics import compute_metrics
    from reparam.quantize import quantize

    model = tiny_net()
    path = tmp_path / "m.onnx"
    export_onnx(model, torch.randn(1, 3, 16, 16), path, dynamo=False)
    rng = np.random.default_rng(0)
    quantize(
        path, tmp_path / "m.int8.onnx", [{"input": rng.standard_normal((32, 3, 16, 16)).astype(np.float32)}]
    )
    engine = tmp_path / "m.int8.engine"
    result = build_engine(tmp_path / "m.int8.onnx", engine, input_shape=(4, 3, 16, 16), progress=False)
    assert result.plan.precision == "int8" and read_engine_sidecar(engine)["explicit_quantization"] is True
    x = rng.standard_normal((4, 3, 16, 16)).astype(np.float32)
    ref = OnnxRuntimeRunner(tmp_path / "m.int8.onnx").run({"input": x})["output"]
    out = TensorRTRunner(engine).run({"input": x})["output"]
    assert compute_metrics(ref, out).cosine >= 0.999
