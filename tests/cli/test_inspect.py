"""`reparam inspect` on ONNX files, engine files (header + sidecar, no GPU) and .pt2 artifacts."""

from __future__ import annotations

import json
import re

import pytest
import torch

from reparam.cli.main import main
from reparam.exporters.tensorrt.header import MAJOR_OFFSET
from tests.exporters._models import tiny_net


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    pytest.importorskip("onnx")
    from reparam.exporters.onnx import export_onnx

    path = tmp_path_factory.mktemp("i") / "m.onnx"
    export_onnx(
        tiny_net(), torch.randn(1, 3, 16, 16), path, dynamo=False, metadata={"source_sha256": "cd" * 32}
    )
    return path


def test_inspect_onnx_text_and_json(onnx_file, capsys):
    assert main(["inspect", str(onnx_file)]) == 0
    text = capsys.readouterr().out
    assert "input: float32 [batchx3x16x16]" in text and "output: float32 [batchx5]" in text
    assert "Conv 4, Add 3" in text and "reparam.source_sha256: " + "cd" * 32 in text
    assert main(["inspect", str(onnx_file), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (
        info["kind"] == "onnx"
        and info["op_counts"]["Conv"] == 4
        and "BatchNormalization" not in info["op_counts"]
    )
    assert (
        info["inputs"][0]["shape"] == ["batch", 3, 16, 16] and info["metadata"]["reparam.form"] == "training"
    )


def test_inspect_engine_without_gpu(tmp_path, capsys):
    data = bytearray(128)
    data[MAJOR_OFFSET] = 10
    engine = tmp_path / "m.engine"
    engine.write_bytes(bytes(data))
    assert main(["inspect", str(engine)]) == 0
    text = capsys.readouterr().out
    assert "TensorRT major 10" in text and "no build sidecar" in text
    (tmp_path / "m.engine.json").write_text(
        json.dumps({"tensorrt": "10.13.0", "gpu": "NVIDIA H100", "precision": "fp16"})
    )
    assert main(["inspect", str(engine), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["header"]["tensorrt_major"] == 10 and info["build"]["gpu"] == "NVIDIA H100"


def test_inspect_pt2(tmp_path, capsys):
    from reparam.artifact import save_artifact

    save_artifact(tiny_net(), (torch.randn(1, 3, 16, 16),), tmp_path / "m.pt2", metadata={"arch": "tiny"})
    assert main(["inspect", str(tmp_path / "m.pt2"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "pt2" and info["inputs"][0]["name"] == "input"
    # a fully convolutional net with a global pool: batch, height and width stay free
    assert info["inputs"][0]["shape"] == ["batch", 3, "height", "width"]
    # the output's batch is the input's, named as in an ONNX file
    assert info["outputs"] == [{"name": "output", "shape": ["batch", 5], "dtype": "float32"}]
    assert info["metadata"]["metadata"] == {"arch": "tiny"}
    assert main(["inspect", str(tmp_path / "m.pt2")]) == 0
    text = capsys.readouterr().out
    assert "input: float32 [batchx3xheightxwidth]" in text and "output: float32 [batchx5]" in text


def test_inspect_pt2_names_output_sizes_computed_from_input_sizes(tmp_path, capsys):
    from reparam.artifact import save_artifact

    torch.manual_seed(0)
    strided = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2, padding=1), torch.nn.ReLU()).eval()
    save_artifact(strided, (torch.randn(1, 3, 16, 20),), tmp_path / "s.pt2")
    assert main(["inspect", str(tmp_path / "s.pt2"), "--json"]) == 0
    batch, channels, height, width = json.loads(capsys.readouterr().out)["outputs"][0]["shape"]
    assert (batch, channels) == ("batch", 4)
    # torch.export writes each as an expression of the input's size: evaluate it at a size
    for expr, size in ((height, 16), (width, 20)):
        assert "s" not in expr.replace("height", "").replace("width", ""), expr
        assert eval(expr, {}, {"height": size, "width": size}) == (size + 1) // 2, expr
    assert main(["inspect", str(tmp_path / "s.pt2")]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("output:"))
    assert line.strip().startswith("output: float32 [batchx4x[") and "height" in line and "width" in line
    assert not re.search(r"\bs\d+\b", line), line


def test_inspect_errors(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "none.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "x.bin").write_bytes(b"1")
    assert main(["inspect", str(tmp_path / "x.bin")]) == 2
    assert "from its suffix" in capsys.readouterr().err
    (tmp_path / "short.engine").write_bytes(b"12")
    assert main(["inspect", str(tmp_path / "short.engine")]) == 2
    assert "too short" in capsys.readouterr().err
    (tmp_path / "bad.onnx").write_bytes(b"garbage")
    assert main(["inspect", str(tmp_path / "bad.onnx")]) == 2
    assert "cannot read bad.onnx" in capsys.readouterr().err
