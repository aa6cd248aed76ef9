"""Golden results: saved where the training code is, checked where it is not.

One process saves golden results from a user model class; the checkpoint and the class's module are
then deleted, and fresh processes verify ONNX files against the golden directory alone: the exported
file passes, a copy with one fused conv perturbed fails with exit 1 naming that block, and a changed
golden file is refused with exit 2.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

USER_MODULE = """
    import torch
    from torch import nn


    class Branchy(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.sq = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
            self.hor = nn.Sequential(nn.Conv2d(c, c, (1, 3), padding=(0, 1), bias=False), nn.BatchNorm2d(c))

        def forward(self, x):
            return torch.relu(self.sq(x) + self.hor(x))


    class GoldNet(nn.Module):
        def __init__(self, classes=4):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
            self.b1 = Branchy(8)
            self.b2 = Branchy(8)
            self.fc = nn.Linear(8, classes)

        def forward(self, x):
            return self.fc(self.b2(self.b1(self.stem(x))).mean((2, 3)))
"""

SAVE_CHECKPOINT = """
import torch
from goldnet import GoldNet
from reparam.numerics import randomize_batchnorm

torch.manual_seed(0)
torch.save(randomize_batchnorm(GoldNet(classes=4)).eval().state_dict(), "gold.pth")
"""


def _reparam(cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cmd = [sys.executable, "-m", "reparam", *argv]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


def _perturb_conv(src: Path, dst: Path, index: int) -> None:
    """Copy an ONNX file with output channel 0 of its ``index``-th Conv's weight changed."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    conv = [n for n in model.graph.node if n.op_type == "Conv"][index]
    init = next(i for i in model.graph.initializer if i.name == conv.input[1])
    w = numpy_helper.to_array(init).copy()
    w[0] += np.float32(0.5) * np.abs(w).max()
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(model, str(dst))


@pytest.fixture(scope="module")
def golden_setup(tmp_path_factory):
    work = tmp_path_factory.mktemp("golden")
    (work / "goldnet.py").write_text(textwrap.dedent(USER_MODULE))
    _ok(subprocess.run([sys.executable, "-c", SAVE_CHECKPOINT], cwd=work, capture_output=True, text=True))
    arch = ["--arch", "goldnet:GoldNet", "--arch-kwargs", '{"classes": 4}']
    _ok(_reparam(work, "convert", "gold.pth", *arch, "--input-shape", "1x3x16x16", "-o", "gold.pt2"))
    _ok(_reparam(work, "export", "onnx", "gold.pt2", "-o", "gold.onnx"))
    saved = _ok(
        _reparam(work, "verify", "gold.pth", *arch, "--input-shape", "2x3x16x16", "--save-golden", "G")
    )
    assert "wrote golden results to G" in saved.stdout
    # The other machine has neither the checkpoint nor the training code.
    for p in ("gold.pth", "goldnet.py", "__pycache__"):
        target = work / p
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    return work


def test_golden_directory_is_versioned_with_checksums(golden_setup):
    manifest = json.loads((golden_setup / "G" / "golden.json").read_text())
    assert manifest["format"] == "reparam-golden" and manifest["version"] == 2
    assert manifest["provenance"]["arch"] == "goldnet:GoldNet" and manifest["provenance"]["reference_sha256"]
    assert {"b1", "b2"} <= set(manifest["blocks"]) and len(manifest["files"]["arrays.npz"]["sha256"]) == 64
    assert sorted(p.name for p in (golden_setup / "G").iterdir()) == ["arrays.npz", "golden.json"]


def test_exported_onnx_passes_against_golden_results(golden_setup):
    proc = _ok(
        _reparam(golden_setup, "verify", "--golden", "G", "--onnx", "gold.onnx", "--report", "ok.json")
    )
    assert "PASS" in proc.stdout
    assert json.loads((golden_setup / "ok.json").read_text())["passed"] is True


def test_perturbed_onnx_fails_and_names_the_block(golden_setup):
    _perturb_conv(golden_setup / "gold.onnx", golden_setup / "bad.onnx", index=2)  # stem, b1, b2
    proc = _reparam(golden_setup, "verify", "--golden", "G", "--onnx", "bad.onnx", "--report", "bad.json")
    assert proc.returncode == 1, proc.stderr
    report = json.loads((golden_setup / "bad.json").read_text())
    divergence = report["candidates"][0]["divergence"]
    assert divergence["first_diverging_block"].split(".")[0] == "b2", divergence
    blocks = {b["name"]: b["passed"] for b in divergence["blocks"]}
    assert blocks["b1"] is True and blocks["b2"] is False
    assert "b2" in proc.stdout


def test_changed_golden_file_is_refused(golden_setup, tmp_path):
    copy = tmp_path / "G"
    shutil.copytree(golden_setup / "G", copy)
    data = bytearray((copy / "arrays.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "arrays.npz").write_bytes(bytes(data))
    proc = _reparam(golden_setup, "verify", "--golden", str(copy), "--onnx", "gold.onnx")
    assert proc.returncode == 2 and "does not match the checksum" in proc.stderr
    assert "Traceback" not in proc.stderr
