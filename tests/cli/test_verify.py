import json

import numpy as np
import pytest
import torch

from reparam.cli.main import main
from tests.verify._models import expected_block, save_zoo_checkpoint

SHAPE = "2x3x32x32"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "repvgg.pt"
    save_zoo_checkpoint(path)
    return path


def _perturbed_artifact(ckpt, path):
    """A .pt2 deploy artifact with one fused layer's weights scaled; returns the block it lives in."""
    from reparam.artifact import save_artifact
    from reparam.checkpoint import load_model
    from reparam.engine import convert

    example = (torch.randn(1, 3, 32, 32),)
    result = convert(load_model(ckpt), example, check=False)
    entry = result.record.entries[len(result.record.entries) // 2]
    with torch.no_grad():
        result.model.get_submodule(entry.fused).weight.mul_(1.5)
    save_artifact(result, example, path)
    return expected_block(result.record, entry.sources[0])


def test_on_the_fly_conversion_passes_and_writes_reports(ckpt, tmp_path, capsys):
    rc = main(
        [
            "verify",
            "--reference",
            str(ckpt),
            "--input-shape",
            SHAPE,
            "--report",
            str(tmp_path / "r.json"),
            "--markdown",
            str(tmp_path / "r.md"),
            "--plot",
            str(tmp_path / "e.png"),
        ]
    )
    assert rc == 0
    assert "PASS" in capsys.readouterr().out
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["passed"] is True
    [cand] = data["candidates"]
    assert cand["outputs"][0]["scale_rel"] < 1e-5 and cand["outputs"][0]["top1"] == 1.0
    assert len(cand["divergence"]["blocks"]) > 3  # per-block errors for the plot
    assert data["quantization_risk"] and {r["risk"] for r in data["quantization_risk"]} <= {
        "low",
        "elevated",
        "high",
    }
    md = (tmp_path / "r.md").read_text()
    assert "| candidate | output | status |" in md and "| PASS |" in md
    assert (tmp_path / "e.png").read_bytes()[:4] == b"\x89PNG"


def test_perturbed_artifact_fails_with_exit_1_and_names_the_block(ckpt, tmp_path, capsys):
    block = _perturbed_artifact(ckpt, tmp_path / "bad.pt2")
    rc = main(
        [
            "verify",
            "--reference",
            str(ckpt),
            "--deploy",
            str(tmp_path / "bad.pt2"),
            "--input-shape",
            SHAPE,
            "--report",
            str(tmp_path / "r.json"),
        ]
    )
    assert rc == 1  # the default localizes a failing candidate
    assert f"first diverging block: {block}" in capsys.readouterr().out
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["passed"] is False
    assert data["candidates"][0]["divergence"]["first_diverging_block"] == block
    assert (
        len(data["quantization_risk"]) == len({e["fused"] for e in data["quantization_risk"]}) > 0
    )  # from the .pt2


def test_perturbed_onnx_fails_and_names_the_block_clean_onnx_passes(ckpt, tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    from reparam.checkpoint import load_model
    from reparam.engine import convert
    from reparam.exporters.onnx import export_onnx

    example = (torch.randn(2, 3, 32, 32),)
    result = convert(load_model(ckpt), example, check=False)
    export_onnx(result, example, tmp_path / "good.onnx")
    entry = result.record.entries[len(result.record.entries) // 2]
    model = onnx.load(str(tmp_path / "good.onnx"))
    weight = next(i for i in model.graph.initializer if i.name == f"{entry.fused}.weight")
    arr = onnx.numpy_helper.to_array(weight).copy()
    arr[0] *= 1.05  # one output channel of one fused conv off by 5 %
    weight.CopyFrom(onnx.numpy_helper.from_array(arr, weight.name))
    onnx.save(model, str(tmp_path / "bad.onnx"))

    args = [
        "verify",
        "--reference",
        str(ckpt),
        "--onnx",
        str(tmp_path / "good.onnx"),
        "--onnx",
        str(tmp_path / "bad.onnx"),
        "--input-shape",
        SHAPE,
        "--report",
        str(tmp_path / "r.json"),
        "--localize",
        "always",
    ]
    rc = main(args)
    assert rc == 1
    block = expected_block(result.record, entry.sources[0])
    assert f"bad.onnx: first diverging block: {block}" in capsys.readouterr().out
    good, bad = json.loads((tmp_path / "r.json").read_text())["candidates"]
    assert good["passed"] and good["divergence"]["first_diverging_block"] is None
    assert len(good["divergence"]["blocks"]) >= len(set(result.record.boundaries.values()))
    assert not bad["passed"] and bad["divergence"]["first_diverging_block"] == block
    rc = main([a for a in args if a not in ("--localize", "always")])  # the default: the failing one only
    good, bad = json.loads((tmp_path / "r.json").read_text())["candidates"]
    assert rc == 1 and good["passed"] and good["divergence"] is None
    assert bad["divergence"]["first_diverging_block"] == block


def test_real_data_from_npz(ckpt, tmp_path):
    data = np.random.default_rng(0).uniform(-1, 1, (10, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "val.npz", images=data)  # the single array is used whatever its name
    rc = main(
        [
            "verify",
            "--reference",
            str(ckpt),
            "--inputs",
            str(tmp_path / "val.npz"),
            "--batch-size",
            "4",
            "--report",
            str(tmp_path / "r.json"),
        ]
    )
    assert rc == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["inputs"]["samples"] == 10 and report["inputs"]["batches"] == 3
    assert report["candidates"][0]["outputs"][0]["shape"] == [10, 10]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--deploy", "missing.pt2"], "does not exist"),
        (["--inputs", "missing.npz"], "does not exist"),
        (["--input-shape", "1x3xfoo"], "invalid input shape"),
        (["--input-shape", "1x5x32x32"], "5 channels"),
        (["--atol", "abc"], "invalid --atol"),
    ],
)
def test_usage_errors_exit_2(ckpt, tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    rc = main(["verify", "--reference", str(ckpt), *extra])
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err and "hint:" in err
    assert not list(tmp_path.iterdir())


def test_bad_npz_and_unknown_profile_exit_2(ckpt, tmp_path, capsys):
    np.savez(tmp_path / "two.npz", a=np.zeros((2, 3, 32, 32)), b=np.zeros(3))
    assert main(["verify", "--reference", str(ckpt), "--inputs", str(tmp_path / "two.npz")]) == 2
    assert "none is named 'input'" in capsys.readouterr().err
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    assert main(["verify", "--reference", str(ckpt), "--inputs", str(tmp_path / "junk.npz")]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["verify", "--reference", str(ckpt), "--tolerance", "bf16"])
    assert exc.value.code == 2
