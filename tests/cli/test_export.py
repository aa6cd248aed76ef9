"""`reparam export onnx|trt` from the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from reparam.checkpoint import save_checkpoint
from reparam.cli.main import main
from reparam.numerics import calibrate_batchnorm, scale_relative_error
from reparam.zoo import create_model

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    kwargs = {"width": 0.125, "num_classes": 10}
    model = calibrate_batchnorm(create_model("acb_resnet18", **kwargs), 0)
    path = tmp_path_factory.mktemp("ckpt") / "acb.pt"
    save_checkpoint(model, path, "acb_resnet18", kwargs)
    return path, model


def _ops(path):
    counts = {}
    for n in onnx.load(str(path)).graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


def test_export_checkpoint_deploy_form(checkpoint, tmp_path, capsys):
    ckpt, model = checkpoint
    out = tmp_path / "m.onnx"
    assert (
        main(
            [
                "export",
                "onnx",
                str(ckpt),
                "-o",
                str(out),
                "--legacy-exporter",
                "--input-shape",
                "1x3x32x32",
                "--fp16",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert f"wrote {out}" in text and "form deploy" in text and "m.fp16.onnx" in text
    ops = _ops(out)
    assert ops["Conv"] == 20 and "BatchNormalization" not in ops
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert props["reparam.form"] == "deploy" and len(props["reparam.source_sha256"]) == 64
    from reparam.runners import OnnxRuntimeRunner

    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert scale_relative_error(ref, OnnxRuntimeRunner(out).run({"input": x})["output"]) <= 1e-5
    assert (
        scale_relative_error(ref, OnnxRuntimeRunner(tmp_path / "m.fp16.onnx").run({"input": x})["output"])
        < 5e-3
    )


def test_export_with_fp16_is_one_transaction(checkpoint, tmp_path, capsys, monkeypatch):
    """A failing fp16 conversion leaves the earlier files as they were; a success replaces both and
    removes a sidecar that belonged to the earlier, larger model."""
    import reparam.api.export_command

    ckpt, _ = checkpoint
    out = tmp_path / "m.onnx"
    out.write_bytes(b"earlier model")
    (tmp_path / "m.onnx.data").write_bytes(b"earlier sidecar")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    args = ["export", "onnx", str(ckpt), "-o", str(out), "--legacy-exporter", "--fp16"]

    def broken(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(reparam.api.export_command, "convert_onnx_to_fp16", broken)
    assert main(args) != 0
    capsys.readouterr()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing else, nothing changed
    monkeypatch.undo()
    assert main(args) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.fp16.onnx", "m.onnx"]
    assert onnx.load(str(out)).graph.node and onnx.load(str(tmp_path / "m.fp16.onnx")).graph.node


def test_export_training_form_static_json(checkpoint, tmp_path, capsys):
    ckpt, _ = checkpoint
    out = tmp_path / "train.onnx"
    assert (
        main(
            [
                "export",
                "onnx",
                str(ckpt),
                "-o",
                str(out),
                "--legacy-exporter",
                "--training-form",
                "--static",
                "--no-simplify",
                "--opset",
                "17",
                "--json",
            ]
        )
        == 0
    )
    info = json.loads(capsys.readouterr().out)
    assert info["opset"] == 17 and info["dynamic_axes"] == {} and not info["simplified"]
    assert info["metadata"]["reparam.form"] == "training"
    assert info["op_counts"]["Conv"] > 40  # the unfused ACB branches are all there


def test_export_pt2_artifact(checkpoint, tmp_path, capsys):
    ckpt, model = checkpoint
    pt2 = tmp_path / "m.pt2"
    assert main(["convert", str(ckpt), "-o", str(pt2), "--input-shape", "1x3x32x32"]) == 0
    out = tmp_path / "from_pt2.onnx"
    assert main(["export", "onnx", str(pt2), "-o", str(out)]) == 0  # dynamo exporter, shape from the artifact
    assert "dynamo exporter" in capsys.readouterr().out
    model_proto = onnx.load(str(out))
    assert model_proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    boundaries = json.loads({p.key: p.value for p in model_proto.metadata_props}["reparam.boundaries"])
    assert "layer1.0" in boundaries
    from reparam.runners import OnnxRuntimeRunner

    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert scale_relative_error(ref, OnnxRuntimeRunner(out).run({"input": x})["output"]) <= 1e-5


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--training-form"], "only the deploy form"),
        (["--arch", "resnet18"], "apply to checkpoints"),
    ],
)
def test_export_pt2_errors(checkpoint, tmp_path, capsys, extra, match):
    from reparam.artifact import save_artifact

    pt2 = tmp_path / "m.pt2"
    save_artifact(checkpoint[1], (torch.randn(1, 3, 32, 32),), pt2)
    assert main(["export", "onnx", str(pt2), "-o", str(tmp_path / "x.onnx"), *extra]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_export_missing_model(tmp_path, capsys):
    assert main(["export", "onnx", str(tmp_path / "nope.pt"), "-o", str(tmp_path / "x.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_export_trt_checks_options_before_tensorrt(checkpoint, tmp_path, capsys, monkeypatch):
    import sys

    ckpt, _ = checkpoint
    out = tmp_path / "m.onnx"
    assert main(["export", "onnx", str(ckpt), "-o", str(out), "--legacy-exporter"]) == 0
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert main(["export", "trt", str(out), "-o", str(tmp_path / "m.engine"), "--int8"]) == 2
    assert "int8 needs calibration data" in capsys.readouterr().err
    assert (
        main(["export", "trt", str(out), "-o", str(tmp_path / "m.engine"), "--opt-shape", "1x4x32x32"]) == 2
    )
    assert "fixes at 3" in capsys.readouterr().err
    assert (
        main(["export", "trt", str(out), "-o", str(tmp_path / "m.engine"), "--fp16", "--workspace", "64"])
        == 2
    )
    err = capsys.readouterr().err
    assert "TensorRT is not installed" in err and "pip install 'reparam[trt]'" in err
    assert not (tmp_path / "m.engine").exists()
    with pytest.raises(SystemExit) as exit_info:  # argparse: mutually exclusive
        main(["export", "trt", str(out), "-o", str(tmp_path / "m.engine"), "--fp16", "--int8"])
    assert exit_info.value.code == 2


def test_export_without_target_prints_help(capsys):
    assert main(["export"]) == 2
    assert "onnx" in capsys.readouterr().err
