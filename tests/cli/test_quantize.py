"""`reparam quantize`: exit codes, what is written, the summary lines."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from reparam.cli.main import main

pytest.importorskip("onnxruntime")

from tests.quantize._models import export_deploy, synthetic_data, tiny_repvgg  # noqa: E402

ARCH = {"num_classes": 10, "width": 0.25, "num_blocks": [1, 2, 2, 1]}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("q")
    x, _ = synthetic_data(128, 1)
    held, labels = synthetic_data(256, 2)
    np.savez(root / "calib.npz", input=x)
    np.savez(root / "eval.npz", input=held, label=labels)
    model = tiny_repvgg(wide=True)
    torch.save({"arch": "repvgg_a0", "arch_kwargs": ARCH, "state_dict": model.state_dict()}, root / "m.pth")
    export_deploy(model, root / "m.onnx", x[:2])
    return root


def _args(files, out, *extra):
    return [
        "quantize",
        str(files / "m.onnx"),
        "--calib",
        str(files / "calib.npz"),
        "-o",
        str(out),
        "--reference",
        str(files / "m.pth"),
        "--eval",
        str(files / "eval.npz"),
        *extra,
    ]


def test_mismatch_exits_1_and_writes_nothing_but_the_report(files, tmp_path, capsys):
    out = tmp_path / "m.int8.onnx"
    assert main(_args(files, out, "--report", str(tmp_path / "r.json"))) == 1
    text = capsys.readouterr().out
    assert "nothing was written" in text and "widened by stage2.1.rbr_identity" in text
    assert "first diverging block: stage3.0" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["quantization"]["path"] is None and report["verification"]["report"]["passed"] is False
    assert (
        report["verification"]["accuracy"]["int8 Q/DQ ONNX"]
        < report["verification"]["accuracy"]["training model"]
    )


def test_target_repairs_and_writes(files, tmp_path, capsys):
    out = tmp_path / "m.int8.onnx"
    assert main(_args(files, out, "--target", "0.98")) == 0
    text = capsys.readouterr().out
    assert "kept float: stage3.0.rbr_dense (/rbr_dense_4/Conv)" in text
    assert "1 of 8 quantizable layers kept float" in text and "-> PASS" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.int8.onnx"]


def test_target_met_on_calibration_but_not_held_out_says_so(files, tmp_path, capsys):
    """Eight calibration samples all agree; the held-out data shows the int8 error they hide."""
    out = tmp_path / "m.int8.onnx"
    assert main(_args(files, out, "--target", "0.998", "--max-samples", "8")) == 1
    captured = capsys.readouterr()
    assert "nothing was written" in captured.out and "-> FAIL" in captured.out
    err = captured.err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert "met on the 8 calibration samples but not on the held-out data" in err
    assert "hint: calibrate on more" in err and "--target 0.999" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--max-float", "2"], "--max-float only applies with --target"),
        (["--target", "1.5"], "not in (0, 1]"),
        (["--exclude", "nope"], "no quantizable layer named 'nope'"),
    ],
)
def test_input_errors_exit_2_without_traceback(files, tmp_path, capsys, extra, match):
    assert main(_args(files, tmp_path / "m.int8.onnx", *extra)) == 2
    err = capsys.readouterr().err
    assert match in err and "hint:" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_unknown_method_is_a_usage_error(files, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(_args(files, tmp_path / "m.int8.onnx", "--method", "kl"))
    assert exit_.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_wrong_calibration_file_exits_2(files, tmp_path, capsys):
    np.savez(tmp_path / "bad.npz", input=np.zeros((8, 1, 16, 16), np.float32))
    rc = main(
        [
            "quantize",
            str(files / "m.onnx"),
            "--calib",
            str(tmp_path / "bad.npz"),
            "-o",
            str(tmp_path / "o.onnx"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "does not fit the input input float32[?x3x16x16]" in err and "hint:" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npz"]


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--int8"], "--int8 needs calibration data"),
        (["--calib", "c.npz"], "--calib only applies with --int8"),
        (["--int8", "--calib", "missing.npz"], "does not exist"),
    ],
)
def test_deploy_int8_argument_errors(files, tmp_path, capsys, extra, match):
    assert main(["deploy", str(files / "m.pth"), "-o", str(tmp_path / "out"), *extra]) == 2
    err = capsys.readouterr().err
    assert match in err and "hint:" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_deploy_int8_writes_and_verifies_the_qdq_model(tmp_path, capsys):
    x, _ = synthetic_data(128, 1)
    held, _ = synthetic_data(128, 2)
    np.savez(tmp_path / "calib.npz", input=x)
    np.savez(tmp_path / "held.npz", input=held)
    model = tiny_repvgg(wide=False)
    ckpt = tmp_path / "m.pth"
    torch.save({"arch": "repvgg_a0", "arch_kwargs": ARCH, "state_dict": model.state_dict()}, ckpt)
    argv = [
        "deploy",
        str(ckpt),
        "-o",
        str(tmp_path / "out"),
        "--int8",
        "--calib",
        str(tmp_path / "calib.npz"),
    ]
    assert main([*argv, "--inputs", str(tmp_path / "held.npz"), "--batch-size", "64"]) == 0, (
        capsys.readouterr()
    )
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert "onnx-int8" in manifest["targets"] and "model.int8.onnx" in {f["name"] for f in manifest["files"]}
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    int8 = next(c for c in report["candidates"] if c["name"] == "model.int8.onnx")
    assert int8["passed"] and int8["tolerance"] == "int8" and int8["outputs"][0]["top1"] >= 0.99


@pytest.mark.slow
def test_deploy_int8_failure_keeps_the_fp32_artifacts_and_says_what_next(files, tmp_path, capsys):
    """The int8 model misses its profile; the fp32 .pt2 / .onnx that passed are still written (exit 1)."""
    out = tmp_path / "out"
    argv = ["deploy", str(files / "m.pth"), "-o", str(out), "--int8", "--calib", str(files / "calib.npz")]
    assert main([*argv, "--inputs", str(files / "eval.npz"), "--batch-size", "64"]) == 1
    captured = capsys.readouterr()
    assert "int8 quantization risk: low" not in captured.out
    err = captured.err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert "model.int8.onnx failed verification with the int8 profile and was not written" in err
    assert "hint: keep the most int8-sensitive layers float: reparam quantize" in err and "--target" in err
    written = sorted(p.name for p in out.iterdir())
    assert "model.int8.onnx" not in written and {"model.pt2", "model.onnx", "manifest.json"} <= set(written)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["verification"]["passed"] is True and "onnx-int8" not in manifest["targets"]
    assert manifest["not_written"] == {"model.int8.onnx": "failed verification"}
    assert manifest["verification"]["candidates"]["model.int8.onnx"] is False
