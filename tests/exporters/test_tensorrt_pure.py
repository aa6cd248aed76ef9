"""TensorRT parts that need no GPU: capabilities, build plans for 10 and 11, profiles, header, caches, calib."""

from __future__ import annotations

import io
import json
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from reparam.errors import ReparamError
from reparam.exporters.tensorrt import (
    BuildOptions,
    Capabilities,
    capabilities_of,
    default_cache_name,
    derive_profiles,
    make_build_plan,
    pack_timing_cache,
    parse_plan_header,
    unpack_timing_cache,
)
from reparam.exporters.tensorrt.calib import load_calibration_batches
from reparam.exporters.tensorrt.header import (
    HEADER_BYTES,
    MAJOR_OFFSET,
    check_engine_version,
    read_plan_header,
)
from reparam.exporters.tensorrt.progress import BuildProgress


class _Enum:
    """Stands in for a pybind11 enum: members by name with arbitrary (renumbered) values."""

    def __init__(self, **members):
        self.__members__ = dict(members)
        for k, v in members.items():
            setattr(self, k, v)


def fake_trt(version: str):
    """A module shaped like tensorrt 10.x or 11.x, as far as capability checks look."""
    if version.startswith("10."):
        flags = _Enum(FP16=0, BF16=1, INT8=2, REFIT=5, STRICT_TYPES=6, SPARSE_WEIGHTS=11, TF32=13)
        extra = {"IInt8EntropyCalibrator2": object}
    else:  # 11: precision flags gone, the rest renumbered
        flags = _Enum(REFIT=0, SPARSE_WEIGHTS=1, TF32=2)
        extra = {}
    return SimpleNamespace(
        __version__=version,
        BuilderFlag=flags,
        NetworkDefinitionCreationFlag=_Enum(STRONGLY_TYPED=1) if version.startswith("10.") else _Enum(),
        IProgressMonitor=object,
        MemoryPoolType=_Enum(WORKSPACE=0),
        ITimingCache=object,
        **extra,
    )


TRT10 = capabilities_of(fake_trt("10.13.0.35"))
TRT11 = capabilities_of(fake_trt("11.0.0.1"))


def test_capabilities_by_name():
    assert TRT10.major == 10 and TRT10.has_fp16_flag and TRT10.has_int8_flag and TRT10.has_strongly_typed
    assert TRT10.has_int8_calibrator and TRT10.has_progress_monitor and TRT10.has_memory_pool_limit
    assert TRT11.major == 11 and not TRT11.has_fp16_flag and not TRT11.has_int8_flag
    assert TRT11.always_strongly_typed and not TRT11.has_int8_calibrator


def test_fp32_plan_has_no_precision_flags():
    for caps in (TRT10, TRT11):
        plan = make_build_plan(BuildOptions(precision="fp32", workspace_mb=512), caps)
        assert plan.builder_flags == [] and plan.network_flags == [] and not plan.prepare_fp16_onnx
        assert plan.workspace_bytes == 512 << 20


def test_fp16_on_trt10_is_a_builder_flag():
    plan = make_build_plan(BuildOptions(precision="fp16"), TRT10)
    assert plan.builder_flags == ["FP16"] and not plan.prepare_fp16_onnx


def test_fp16_on_trt11_converts_the_onnx():
    plan = make_build_plan(BuildOptions(precision="fp16"), TRT11)
    assert plan.builder_flags == [] and plan.prepare_fp16_onnx
    assert "FP16" not in plan.builder_flags and "strongly typed" in plan.notes[0]


def test_fp16_onnx_builds_typed_on_both():
    p10 = make_build_plan(BuildOptions(onnx_is_fp16=True), TRT10)
    assert p10.precision == "fp16" and p10.network_flags == ["STRONGLY_TYPED"] and not p10.prepare_fp16_onnx
    p11 = make_build_plan(BuildOptions(onnx_is_fp16=True), TRT11)
    assert p11.precision == "fp16" and p11.network_flags == [] and p11.builder_flags == []


def test_int8(tmp_path):
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=np.zeros((4, 3, 8, 8), np.float32))
    plan = make_build_plan(BuildOptions(precision="int8", calib=calib), TRT10)
    assert plan.builder_flags == ["INT8", "FP16"] and plan.int8_calibrator
    with pytest.raises(ReparamError) as err:
        make_build_plan(BuildOptions(precision="int8", calib=calib), TRT11)
    assert "Model Optimizer" in err.value.hint and "nvidia-modelopt" in err.value.hint


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (BuildOptions(precision="bf8"), "unknown precision"),
        (BuildOptions(workspace_mb=0), "workspace"),
        (BuildOptions(precision="int8"), "calibration data"),
        (BuildOptions(precision="fp16", calib="x.npz"), "only applies to int8"),
        (BuildOptions(precision="fp32", onnx_is_fp16=True), "float16 weights"),
    ],
)
def test_option_validation(options, match):
    with pytest.raises(ReparamError, match=match):
        options.validate()


def test_missing_calib_file(tmp_path):
    with pytest.raises(ReparamError, match="does not exist"):
        BuildOptions(precision="int8", calib=tmp_path / "nope.npz").validate()


def test_profiles_from_dynamic_batch():
    dims = {"input": ["batch", 3, 224, 224]}
    p = derive_profiles(dims, input_shape=(8, 3, 224, 224), max_batch=64)["input"]
    assert (p.min, p.opt, p.max) == ((1, 3, 224, 224), (8, 3, 224, 224), (64, 3, 224, 224))
    default = derive_profiles(dims)["input"]
    assert (default.min[0], default.opt[0], default.max[0]) == (1, 1, 32)
    assert derive_profiles({"input": [2, 3, 8, 8]}) == {}  # static: no profile needed


def test_explicit_profiles_win_and_are_checked():
    dims = {"input": [None, 3, "h", "w"]}
    p = derive_profiles(dims, min_shape=(1, 3, 32, 32), opt_shape=(4, 3, 64, 64), max_shape=(8, 3, 128, 128))[
        "input"
    ]
    assert p.contains((2, 3, 100, 50)) and not p.contains((9, 3, 64, 64))
    with pytest.raises(ReparamError, match="besides the batch"):
        derive_profiles(dims)
    with pytest.raises(ReparamError, match="not ordered"):
        derive_profiles(dims, min_shape=(4, 3, 32, 32), opt_shape=(2, 3, 32, 32), max_shape=(8, 3, 32, 32))
    with pytest.raises(ReparamError, match="fixes at 3"):
        derive_profiles(dims, opt_shape=(1, 4, 32, 32))
    with pytest.raises(ReparamError, match="rank"):
        derive_profiles(dims, input_shape=(1, 3, 32))
    with pytest.raises(ReparamError, match="below the batch"):
        derive_profiles({"input": ["batch", 3]}, input_shape=(16, 3), max_batch=8)
    with pytest.raises(ReparamError, match="ambiguous"):
        derive_profiles({"a": ["batch", 3], "b": ["batch", 3]}, input_shape=(2, 3))


def _synthetic_plan(major: int, size: int = 64) -> bytes:
    data = bytearray(i % 251 for i in range(size))
    data[MAJOR_OFFSET] = major
    return bytes(data)


def test_plan_header_major(tmp_path):
    header = parse_plan_header(_synthetic_plan(10))
    assert header.tensorrt_major == 10 and len(header.leading_bytes) == 2 * HEADER_BYTES
    assert parse_plan_header(_synthetic_plan(200)).tensorrt_major is None
    with pytest.raises(ReparamError, match="too short"):
        parse_plan_header(b"\x00" * 10)
    engine = tmp_path / "m.engine"
    engine.write_bytes(_synthetic_plan(11, 4096))
    assert read_plan_header(engine).size == 4096 and read_plan_header(engine).tensorrt_major == 11
    assert "header says TensorRT 11" in check_engine_version(engine, "10.13.0")
    assert check_engine_version(engine, "11.0.1") is None
    (tmp_path / "m.engine.json").write_text(json.dumps({"tensorrt": "11.0.0"}))
    assert "built with TensorRT 11.0.0" in check_engine_version(engine, "11.0.1")


def test_timing_cache_keyed_by_version_and_gpu():
    packed = pack_timing_cache(b"\x01\x02raw", "10.13.0", "NVIDIA H100")
    assert unpack_timing_cache(packed, "10.13.0", "NVIDIA H100") == b"\x01\x02raw"
    with pytest.raises(ReparamError) as err:
        unpack_timing_cache(packed, "11.0.0", "NVIDIA H100")
    assert (
        "one cache file per pair" in err.value.hint and "timing-trt11.0.0-NVIDIA-H100.cache" in err.value.hint
    )
    with pytest.raises(ReparamError, match="H100"):
        unpack_timing_cache(packed, "10.13.0", "NVIDIA A100")
    with pytest.raises(ReparamError, match="not written by reparam"):
        unpack_timing_cache(b"foreign bytes", "10.13.0", "NVIDIA H100")
    assert (
        default_cache_name("10.13.0", "NVIDIA GeForce RTX 4090")
        == "timing-trt10.13.0-NVIDIA-GeForce-RTX-4090.cache"
    )


def test_calibration_batches(tmp_path):
    path = tmp_path / "c.npz"
    np.savez(path, input=np.arange(10 * 3 * 2 * 2, dtype=np.float64).reshape(10, 3, 2, 2))
    batches = load_calibration_batches(path, {"input": ["batch", 3, 2, 2]}, 4)
    assert len(batches) == 2 and batches[0]["input"].shape == (4, 3, 2, 2)
    assert batches[1]["input"].dtype == np.float32 and batches[1]["input"][0, 0, 0, 0] == 4 * 12
    with pytest.raises(ReparamError, match="no arrays for input"):
        load_calibration_batches(path, {"x": ["batch", 3, 2, 2]}, 4)
    with pytest.raises(ReparamError, match="fewer than one batch"):
        load_calibration_batches(path, {"input": ["batch", 3, 2, 2]}, 11)
    with pytest.raises(ReparamError, match="shape"):
        load_calibration_batches(path, {"input": ["batch", 4, 2, 2]}, 2)


def test_progress_plain_lines_and_cancel():
    out = io.StringIO()
    progress = BuildProgress(out, rich=False)
    progress.phase_start("Building", None, 2)
    progress.phase_start("Tactics", "Building", 3)
    assert progress.step_complete("Tactics", 0)
    progress.phase_finish("Tactics")
    progress.cancel()
    assert progress.step_complete("Building", 0) is False  # TensorRT stops the build
    progress.phase_finish("Building")
    lines = out.getvalue().splitlines()
    assert lines[0] == "Building: 2 step(s)" and lines[1] == "  Tactics: 3 step(s)"
    assert lines[2].startswith("  Tactics: done in") and lines[3].startswith("Building: done in")


def test_progress_rich_bar_runs():
    out = io.StringIO()
    progress = BuildProgress(out, rich=True)
    progress.phase_start("Building", None, 2)
    for i in range(2):
        assert progress.step_complete("Building", i)
    progress.phase_finish("Building")
    progress.close()
    assert progress.phases["Building"]["done"] == 2


def test_missing_tensorrt_raises_install_hint(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails like on a machine without it
    from reparam.exporters.tensorrt import import_tensorrt

    with pytest.raises(ReparamError) as err:
        import_tensorrt()
    assert "pip install 'reparam[trt]'" in err.value.hint and "pypi.nvidia.com" in err.value.hint


def test_build_engine_without_tensorrt_writes_nothing(monkeypatch, tmp_path):
    pytest.importorskip("onnx")
    import torch

    from reparam.exporters.onnx import export_onnx
    from reparam.exporters.tensorrt import build_engine
    from tests.exporters._models import tiny_net

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    export_onnx(tiny_net(), torch.randn(1, 3, 8, 8), tmp_path / "m.onnx", dynamo=False, simplify=False)
    with pytest.raises(ReparamError, match="TensorRT is not installed"):
        build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", precision="fp16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_capabilities_dataclass_defaults():
    caps = Capabilities(version="garbage")
    assert caps.major == 0 and caps.always_strongly_typed
    with pytest.raises(ReparamError, match="neither an FP16 flag"):
        make_build_plan(
            BuildOptions(precision="fp16"), Capabilities(version="9.0", builder_flags=frozenset({"INT8"}))
        )


def test_qdq_onnx_builds_strongly_typed_int8_on_10_and_11():
    p10 = make_build_plan(BuildOptions(onnx_is_qdq=True), TRT10)
    assert p10.precision == "int8" and p10.network_flags == ["STRONGLY_TYPED"] and p10.builder_flags == []
    assert not p10.int8_calibrator and "strongly typed" in p10.notes[0]
    p11 = make_build_plan(BuildOptions(precision="int8", onnx_is_qdq=True), TRT11)
    assert p11.precision == "int8" and p11.network_flags == [] and p11.builder_flags == []
    assert not p11.int8_calibrator and "TensorRT 11" in p11.notes[0]
    weak = Capabilities(version="9.0", builder_flags=frozenset({"INT8", "FP16"}))
    assert make_build_plan(BuildOptions(onnx_is_qdq=True), weak).builder_flags == ["INT8"]


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (BuildOptions(precision="fp16", onnx_is_qdq=True), "explicitly quantized"),
        (BuildOptions(precision="fp32", onnx_is_qdq=True), "explicitly quantized"),
        (BuildOptions(precision="int8", calib="c.npz", onnx_is_qdq=True), "already quantized"),
    ],
)
def test_qdq_onnx_option_errors(options, match):
    with pytest.raises(ReparamError, match=match):
        options.validate()


def test_float_onnx_for_int8_points_to_reparam_quantize(tmp_path):
    with pytest.raises(ReparamError) as err:
        BuildOptions(precision="int8").validate()
    assert "reparam quantize" in err.value.hint
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=np.zeros((4, 3, 8, 8), np.float32))
    with pytest.raises(ReparamError) as err:
        make_build_plan(BuildOptions(precision="int8", calib=calib), TRT11)
    assert "reparam quantize" in err.value.hint


def test_qdq_file_is_detected_and_cli_rejects_calib_before_tensorrt(tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnxruntime")
    import torch

    from reparam.cli.main import main
    from reparam.exporters.onnx import export_onnx
    from reparam.exporters.tensorrt import onnx_is_qdq
    from reparam.quantize import quantize
    from tests.exporters._models import tiny_net

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    export_onnx(tiny_net(), torch.randn(1, 3, 8, 8), tmp_path / "m.onnx", dynamo=False, simplify=False)
    np.savez(
        tmp_path / "c.npz", input=np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32)
    )
    quantize(tmp_path / "m.onnx", tmp_path / "m.int8.onnx", tmp_path / "c.npz")
    assert onnx_is_qdq(tmp_path / "m.int8.onnx") and not onnx_is_qdq(tmp_path / "m.onnx")
    args = ["export", "trt", str(tmp_path / "m.int8.onnx"), "-o", str(tmp_path / "m.engine")]
    assert main([*args, "--int8", "--calib", str(tmp_path / "c.npz")]) == 2
    assert "already quantized" in capsys.readouterr().err
    assert main(["export", "trt", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "f.engine"), "--int8"]) == 2
    assert "reparam quantize" in capsys.readouterr().err
    assert main(args) == 2  # passes validation, then needs TensorRT
    assert "TensorRT is not installed" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.engine"))
