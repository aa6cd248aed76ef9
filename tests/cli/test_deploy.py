import hashlib
import json

import pytest

from reparam.cli.main import main
from tests.verify._models import save_zoo_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "acb.pt"
    save_zoo_checkpoint(path, arch="acb_resnet18", width=0.125)
    return path


@pytest.mark.slow
def test_deploy_end_to_end_into_a_fresh_directory(ckpt, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc = main(
        [
            "deploy",
            str(ckpt),
            "--arch",
            "acb_resnet18",
            "--arch-kwargs",
            '{"num_classes": 10, "width": 0.125}',
            "--input-shape",
            "1x3x32x32",
            "-o",
            "out",
        ]
    )
    assert rc == 0, capsys.readouterr()
    out = tmp_path / "out"
    names = {p.name for p in out.iterdir()}
    assert {"model.pt2", "model.onnx", "report.json", "report.md", "errors.png", "manifest.json"} <= names
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary directory left behind
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["verification"]["passed"] is True
    listed = {f["name"]: f for f in manifest["files"]}
    assert set(listed) == names - {"manifest.json"}
    for name, entry in listed.items():
        data = (out / name).read_bytes()
        assert entry["bytes"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["checkpoint"]["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    report = json.loads((out / "report.json").read_text())
    kinds = {c["kind"] for c in report["candidates"]}
    assert {"torch", "pt2", "onnx"} <= kinds
    assert all(c["passed"] for c in report["candidates"])
    capsys.readouterr()
    # `reparam inspect` reads the directory: manifest, checksums, and every artifact in it
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "deploy-dir" in text and "verification: PASSED" in text and "model.onnx: ok" in text
    assert "(pt2," in text and "(onnx," in text
    (out / "report.md").write_text("edited")
    assert main(["inspect", str(out), "--json"]) == 0
    states = {f["name"]: f["state"] for f in json.loads(capsys.readouterr().out)["files"]}
    assert states["report.md"] == "changed since deploy" and states["model.pt2"] == "ok"


def test_trt_without_tensorrt_is_a_clear_error_and_writes_nothing(ckpt, tmp_path, capsys):
    try:
        import tensorrt  # noqa: F401
        import torch

        if torch.cuda.is_available():
            pytest.skip("TensorRT and a GPU are available here")
    except ImportError:
        pass
    rc = main(
        ["deploy", str(ckpt), "--input-shape", "1x3x32x32", "--to", "onnx,trt", "-o", str(tmp_path / "out")]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "TensorRT" in err or "tensorrt" in err
    assert "hint:" in err
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.iterdir())


def test_existing_output_directory_needs_force(ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["deploy", str(ckpt), "--input-shape", "1x3x32x32", "-o", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_unknown_target_is_a_usage_error(ckpt, tmp_path, capsys):
    assert main(["deploy", str(ckpt), "--to", "coreml", "-o", str(tmp_path / "out")]) == 2
    assert "unknown target(s) in --to: coreml" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_verification_failure_leaves_no_output_directory(ckpt, tmp_path, monkeypatch, capsys):
    import torch

    import reparam.api.deploy_command
    import reparam.engine

    real_convert = reparam.engine.convert

    def broken_convert(*args, **kwargs):  # a conversion bug: one fused weight scaled
        result = real_convert(*args, **kwargs)
        entry = result.record.entries[0]
        with torch.no_grad():
            result.model.get_submodule(entry.fused).weight.mul_(1.5)
        return result

    monkeypatch.setattr(reparam.api.deploy_command, "convert", broken_convert)
    rc = main(
        ["deploy", str(ckpt), "--input-shape", "1x3x32x32", "--to", "onnx", "-o", str(tmp_path / "out")]
    )
    assert rc == 1
    out = capsys.readouterr().out
    assert "first diverging block" in out and "nothing was written" in out
    assert not list(tmp_path.iterdir())  # neither OUTDIR nor the temporary build directory


def test_deploy_with_the_legacy_exporter_verifies_its_onnx_file(ckpt, tmp_path, capsys):
    import onnx

    out = tmp_path / "out"
    argv = ["deploy", str(ckpt), "--input-shape", "1x3x32x32", "-o", str(out), "--legacy-exporter"]
    assert main(argv) == 0, capsys.readouterr()
    meta = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    assert meta["reparam.exporter"] == "legacy"
    report = json.loads((out / "report.json").read_text())
    assert {c["name"]: c["passed"] for c in report["candidates"]}["model.onnx"] is True
