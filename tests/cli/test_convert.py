"""`reparam convert`: a good checkpoint becomes a .pt2 + report; bad input gives one error and no output."""

from __future__ import annotations

import json

import pytest
import torch

from reparam.artifact import read_artifact
from reparam.checkpoint import save_checkpoint
from reparam.cli.main import main
from reparam.engine.passes import DEFAULT_ORDER
from reparam.numerics import randomize_batchnorm
from reparam.zoo import create_model

ARCH, KW = "acb_resnet18", {"num_classes": 5, "width": 0.25}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return randomize_batchnorm(create_model(ARCH, **KW)).eval()


@pytest.fixture
def ckpt(tmp_path, model):
    path = tmp_path / "in" / "acb.pth"
    save_checkpoint(model, path, ARCH, KW)
    return path


def _outputs(tmp_path):
    return sorted(p.name for p in (tmp_path / "out").iterdir()) if (tmp_path / "out").exists() else []


def test_convert_good_checkpoint(tmp_path, ckpt, model, capsys):
    out = tmp_path / "out" / "acb.pt2"
    rc = main(
        [
            "convert",
            str(ckpt),
            "-o",
            str(out),
            "--input-shape",
            "1x3x32x32",
            "--report",
            str(tmp_path / "out" / "extra.json"),
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "merge_branches" in captured.out and "PASSED" in captured.out
    assert _outputs(tmp_path) == ["acb.pt2", "acb.pt2.report.json", "extra.json"]
    report = json.loads((tmp_path / "out" / "extra.json").read_text())
    # 17 branch merges (each folding its branches' 3 BatchNorms) and 3 shortcut BN folds: 20 fusions,
    # within the printed report's limit, so each has its row
    assert len(report["fused"]["fold_bn"]) == 3 and len(report["fused"]["merge_branches"]) == 17
    assert "layer4.1.conv2.ver_conv" in captured.out and "17 modules" not in captured.out
    assert report["after"]["modules"]["Conv2d"] == 20 and "BatchNorm2d" not in report["after"]["modules"]
    artifact = read_artifact(out)
    loaded = artifact.module
    assert artifact.metadata["metadata"]["checkpoint_sha256"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref, got = model(x), loaded(x)
    assert (ref - got).abs().max() <= 1e-5 * ref.abs().max()


def test_convert_with_pass_selection(tmp_path, ckpt, capsys):
    out = tmp_path / "out" / "m.pt2"
    assert main(["convert", str(ckpt), "-o", str(out), "--skip", "merge_branches", "--no-check"]) == 0
    report = json.loads((tmp_path / "out" / "m.pt2.report.json").read_text())
    assert report["passes"] == [p for p in DEFAULT_ORDER if p != "merge_branches"] and report["check"] is None
    assert report["after"]["modules"]["Conv2d"] == 54
    assert main(["convert", str(ckpt), "-o", str(out), "--passes", "fold_bn,nope"]) == 2
    assert "unknown pass 'nope'" in capsys.readouterr().err


def _expect_error(tmp_path, capsys, argv, *needles):
    out = tmp_path / "out" / "m.pt2"
    rc = main(["convert", *argv, "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("error:") == 1 and "Traceback" not in err
    for needle in needles:
        assert needle in err
    assert _outputs(tmp_path) == []  # nothing written, not even a temp file
    return err


def test_truncated_checkpoint(tmp_path, ckpt, capsys):
    ckpt.write_bytes(ckpt.read_bytes()[:4096])
    _expect_error(tmp_path, capsys, [str(ckpt)], "truncated, corrupt", "hint:")


def test_wrong_architecture(tmp_path, ckpt, capsys):
    _expect_error(
        tmp_path, capsys, [str(ckpt), "--arch", "resnet18"], "missing keys", "unexpected keys", "--arch"
    )


def test_missing_keys(tmp_path, model, capsys):
    sd = model.state_dict()
    del sd["fc.weight"], sd["fc.bias"]
    path = tmp_path / "in" / "partial.pth"
    path.parent.mkdir()
    torch.save({"arch": ARCH, "arch_kwargs": KW, "state_dict": sd}, path)
    _expect_error(tmp_path, capsys, [str(path)], "missing keys: fc.weight, fc.bias (2 in all)")


def test_pickled_module_needs_trust_pickle(tmp_path, model, capsys):
    path = tmp_path / "in" / "whole.pt"
    path.parent.mkdir()
    torch.save(model, path)
    _expect_error(tmp_path, capsys, [str(path)], "pickled code", "--trust-pickle")
    out = tmp_path / "out" / "m.pt2"
    assert main(["convert", str(path), "--trust-pickle", "-o", str(out), "--input-shape", "1x3x32x32"]) == 0
    assert out.exists()


def test_unknown_arch_and_bad_shape(tmp_path, ckpt, capsys):
    _expect_error(tmp_path, capsys, [str(ckpt), "--arch", "acb_resnet81"], "unknown model")
    _expect_error(tmp_path, capsys, [str(ckpt), "--input-shape", "1x3xx-2"], "invalid input shape")


def test_verbose_lists_every_fusion(tmp_path, ckpt, capsys):
    out = tmp_path / "out" / "acb.pt2"
    assert main(["convert", str(ckpt), "-o", str(out), "--input-shape", "1x3x32x32", "--verbose"]) == 0
    printed = capsys.readouterr().out
    assert "layer4.1.conv2.ver_conv" in printed and "54 modules" not in printed
