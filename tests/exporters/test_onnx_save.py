"""Atomic ONNX writes: interrupted writes leave nothing, the external-data sidecar path, fp16 conversion."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from reparam.errors import ReparamError
from reparam.numerics import scale_relative_error
from tests.exporters._models import tiny_net

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import reparam.exporters.onnx.save as save_mod  # noqa: E402
from reparam.exporters.onnx import convert_onnx_to_fp16, export_onnx, save_onnx  # noqa: E402


def _files(d):
    return sorted(p.name for p in d.iterdir())


def _run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


@pytest.fixture(scope="module")
def small_proto(tmp_path_factory):
    path = tmp_path_factory.mktemp("src") / "m.onnx"
    export_onnx(tiny_net(), torch.randn(1, 3, 16, 16), path, dynamo=False)
    return onnx.load(str(path))


def test_sidecar_above_threshold(tmp_path, small_proto, monkeypatch):
    monkeypatch.setattr(save_mod, "EXTERNAL_DATA_THRESHOLD", 1000)  # stands in for protobuf's 2 GB limit
    sidecar = save_onnx(small_proto, tmp_path / "big.onnx")
    assert sidecar == tmp_path / "big.onnx.data"
    assert _files(tmp_path) == ["big.onnx", "big.onnx.data"]  # no temporary directory left behind
    tensors = [
        *small_proto.graph.initializer,
        *(a.t for n in small_proto.graph.node for a in n.attribute if a.HasField("t")),
    ]  # onnxsim keeps weights as Constants
    large = [len(t.raw_data) for t in tensors if len(t.raw_data) >= 1024]
    assert large and sidecar.stat().st_size >= sum(large)
    model = onnx.load(str(tmp_path / "big.onnx"), load_external_data=False)
    stored = [
        *model.graph.initializer,
        *(a.t for n in model.graph.node for a in n.attribute if a.HasField("t")),
    ]
    locations = {e.value for t in stored for e in t.external_data if e.key == "location"}
    assert locations == {"big.onnx.data"}  # relative, so the pair can be moved together
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    assert (
        scale_relative_error(tiny_net()(torch.from_numpy(x)).detach().numpy(), _run(tmp_path / "big.onnx", x))
        <= 1e-5
    )


def test_single_file_below_threshold(tmp_path, small_proto):
    assert save_onnx(small_proto, tmp_path / "m.onnx") is None
    assert _files(tmp_path) == ["m.onnx"]


@pytest.mark.parametrize("external", [False, True])
def test_interrupted_write_leaves_nothing(tmp_path, small_proto, monkeypatch, external):
    if external:
        monkeypatch.setattr(save_mod, "EXTERNAL_DATA_THRESHOLD", 1000)
    real_replace = os.replace
    calls = []

    def failing_replace(src, dst):
        calls.append(str(dst))
        if str(dst).endswith("m.onnx"):  # the model rename: after the sidecar was moved into place
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(save_mod.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        save_onnx(small_proto, tmp_path / "m.onnx")
    assert _files(tmp_path) == []
    assert any(c.endswith("m.onnx.data") for c in calls) == external


def test_interrupted_write_keeps_previous_files(tmp_path, small_proto, monkeypatch):
    monkeypatch.setattr(save_mod, "EXTERNAL_DATA_THRESHOLD", 1000)
    save_onnx(small_proto, tmp_path / "m.onnx")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def broken_save(*args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(onnx, "save_model", broken_save)
    with pytest.raises(RuntimeError):
        save_onnx(small_proto, tmp_path / "m.onnx")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_checker_failure_writes_nothing(tmp_path, small_proto):
    bad = onnx.ModelProto()
    bad.CopyFrom(small_proto)
    bad.graph.node[0].input[0] = "does_not_exist"
    with pytest.raises(ReparamError, match="onnx.checker"):
        save_onnx(bad, tmp_path / "bad.onnx")
    assert _files(tmp_path) == []


def test_export_failure_midway_leaves_no_file(tmp_path, monkeypatch):
    import reparam.exporters.onnx.export as export_mod

    def boom(*args, **kwargs):
        raise RuntimeError("killed during save")

    monkeypatch.setattr(export_mod, "save_onnx", boom)
    with pytest.raises(RuntimeError):
        export_onnx(tiny_net(), torch.randn(1, 3, 16, 16), tmp_path / "m.onnx", dynamo=False)
    assert _files(tmp_path) == []


def test_fp16_copy_runs_in_onnxruntime_with_small_error(tmp_path):
    model = tiny_net(2)
    export_onnx(model, torch.randn(1, 3, 16, 16), tmp_path / "m.onnx", dynamo=False)
    out = convert_onnx_to_fp16(tmp_path / "m.onnx", tmp_path / "m.fp16.onnx")
    fp16 = onnx.load(str(out))
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float32 I/O kept
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in fp16.graph.initializer)
    props = {p.key: p.value for p in fp16.metadata_props}
    assert props["reparam.precision"] == "fp16" and props["reparam.form"] == "training"
    dim = fp16.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param == "batch"
    x = np.random.default_rng(1).standard_normal((3, 3, 16, 16)).astype(np.float32)
    ref = model(torch.from_numpy(x)).detach().numpy()
    err = scale_relative_error(ref, _run(out, x))
    assert 1e-6 < err < 5e-3  # fp16 rounding shows, but stays small
    with pytest.raises(ReparamError, match="already holds float16"):
        convert_onnx_to_fp16(out, tmp_path / "again.onnx")
    with pytest.raises(ReparamError, match="overwrite"):
        convert_onnx_to_fp16(tmp_path / "m.onnx", tmp_path / "m.onnx")


def _matmul_model(weight: np.ndarray) -> onnx.ModelProto:
    """y = x @ w with a weight large enough to be checked apart from the graph's light view."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", weight.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", weight.shape[1]])],
        initializer=[
            numpy_helper.from_array(weight, "w"),
            numpy_helper.from_array(np.ones(3, np.float32), "b"),
        ],
        doc_string="a graph",
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="test")
    helper.set_model_props(model, {"k": "v"})
    return model


def test_written_file_is_byte_for_byte_onnx_save_model(tmp_path):
    """The file is written one initializer at a time, yet it is exactly what onnx.save_model writes."""
    model = _matmul_model(np.random.default_rng(0).standard_normal((200, 150)).astype(np.float32))
    save_onnx(model, tmp_path / "m.onnx")
    onnx.save_model(model, str(tmp_path / "ref.onnx"))
    assert (tmp_path / "m.onnx").read_bytes() == (tmp_path / "ref.onnx").read_bytes()


def test_fields_unknown_to_this_onnx_are_kept(tmp_path):
    """A model carrying a field this onnx does not know (a newer writer's) is written whole."""
    raw = _matmul_model(np.ones((200, 150), np.float32)).SerializeToString() + b"\x98\x06\x01"  # field 99 = 1
    model = onnx.ModelProto.FromString(raw)
    save_onnx(model, tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx").read_bytes() == model.SerializeToString()
    assert (tmp_path / "m.onnx").read_bytes().endswith(b"\x98\x06\x01")


def test_checker_failure_in_a_large_weight_writes_nothing(tmp_path):
    model = _matmul_model(np.ones((200, 150), np.float32))
    model.graph.initializer[0].raw_data = model.graph.initializer[0].raw_data[:-4]
    with pytest.raises(ReparamError, match="raw_data size"):
        save_onnx(model, tmp_path / "m.onnx")
    assert _files(tmp_path) == []


def test_checker_failure_in_the_graph_of_a_large_model_writes_nothing(tmp_path):
    model = _matmul_model(np.ones((200, 150), np.float32))
    model.graph.node[0].input[1] = "missing"
    with pytest.raises(ReparamError, match="onnx.checker"):
        save_onnx(model, tmp_path / "m.onnx")
    assert _files(tmp_path) == []
