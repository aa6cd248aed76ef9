"""convert / verify / deploy / inspect take a training-form ONNX file."""

from __future__ import annotations

import json

import numpy as np
import onnx

from reparam.blocks.acb import ACB
from reparam.cli.main import main
from tests.onnx_reparam._helpers import export, ops


def test_convert_verify_deploy_inspect(tmp_path, capsys):
    src = export(ACB(4, 4, 3, padding=1), tmp_path / "train.onnx")
    out = tmp_path / "deploy.onnx"
    assert main(["convert", str(src), "-o", str(out)]) == 0
    assert ops(out) == {"Conv": 1}
    assert (tmp_path / "deploy.onnx.report.json").is_file()
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["reparam.fused_summary"].startswith("1 fused nodes from")

    assert main(["verify", str(out), "--reference", str(src)]) == 0
    np.savez(
        tmp_path / "x.npz", input=np.random.default_rng(0).standard_normal((3, 4, 9, 7)).astype(np.float32)
    )
    assert main(["verify", str(out), "--reference", str(src), "--inputs", str(tmp_path / "x.npz")]) == 0
    assert "[3, 4, 9, 7]" in capsys.readouterr().out
    assert main(["convert", str(src), "-o", str(tmp_path / "d2.onnx"), "--input-shape", "1x4x5x6"]) == 0

    assert main(["inspect", str(out)]) == 0
    assert "reparam.fused_summary" in capsys.readouterr().out

    deploy_dir = tmp_path / "out"
    assert main(["deploy", str(src), "-o", str(deploy_dir), "--fp16"]) == 0
    manifest = json.loads((deploy_dir / "manifest.json").read_text())
    assert manifest["verification"]["passed"]
    assert {f["name"] for f in manifest["files"]} >= {"model.onnx", "model.fp16.onnx", "report.json"}


def test_verify_mismatch_exits_1_and_names_the_tensor(tmp_path, capsys):
    a = export(ACB(4, 4, 3, padding=1), tmp_path / "a.onnx", seed=0)
    b = export(ACB(4, 4, 3, padding=1), tmp_path / "b.onnx", seed=1)
    assert main(["verify", str(b), "--reference", str(a)]) == 1
    assert "first diverging tensor" in capsys.readouterr().out


def test_a_wrong_rewrite_writes_nothing_and_exits_1(tmp_path, monkeypatch, capsys):
    from reparam.onnx_reparam import terms

    src = export(ACB(4, 4, 3, padding=1), tmp_path / "train.onnx")
    original = terms._scale_shift_after
    monkeypatch.setattr(
        terms,
        "_scale_shift_after",
        lambda a, b: terms.replace(original(a, b), bias=original(a, b).bias + 0.5),
    )
    assert main(["convert", str(src), "-o", str(tmp_path / "deploy.onnx")]) == 1
    assert "first diverging tensor" in capsys.readouterr().out
    assert main(["deploy", str(src), "-o", str(tmp_path / "out")]) == 1
    assert not (tmp_path / "deploy.onnx").exists() and not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["train.onnx"]


def test_deploy_options_that_build_from_pytorch_are_refused_for_an_onnx_input(tmp_path, capsys):
    src = export(ACB(4, 4, 3, padding=1), tmp_path / "train.onnx")
    for extra, named in [(["--legacy-exporter"], "--legacy-exporter"), (["--to", "onnx,trt"], "--to trt")]:
        assert main(["deploy", str(src), "-o", str(tmp_path / "out"), *extra]) == 2
        err = capsys.readouterr().err
        assert named in err and "ONNX file" in err and "hint:" in err
        assert not (tmp_path / "out").exists()
