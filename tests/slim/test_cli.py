"""`reparam slim`: outputs of a good run; bad input gives one error (exit 2) and writes nothing."""

from __future__ import annotations

import json
import re

import pytest
import torch

from reparam.blocks import SABlock
from reparam.checkpoint import load_model, save_checkpoint
from reparam.cli.main import main
from reparam.numerics import randomize_batchnorm
from reparam.zoo import create_model
from reparam.zoo.scalenet import load_structure
from tests.slim.conftest import PUBLISHED_KW, make_seed

OUTPUTS = ["slim.pth", "slim.structure.json", "r.json", "r.md", "r.png"]


@pytest.fixture(scope="module")
def seed_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("seed") / "seed.pth"
    save_checkpoint(make_seed(PUBLISHED_KW), path, "scalenet50", PUBLISHED_KW)
    return path


def _run(ckpt, out_dir, *extra: str) -> int:
    return main(
        ["slim", str(ckpt), "-o", str(out_dir / "slim.pth"), "--report", str(out_dir / "r.json")]
        + ["--input-shape", "1x3x32x32", *extra]
    )


def _written(out_dir) -> list[str]:
    return sorted(p.name for p in out_dir.iterdir()) if out_dir.exists() else []


def test_slim_writes_checkpoint_structure_and_report(seed_ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(seed_ckpt, out, "--macs", "0.6") == 0
    assert _written(out) == sorted(OUTPUTS)
    assert "wrote" in capsys.readouterr().out
    report = json.loads((out / "r.json").read_text())
    assert report["macs"] <= report["budget_macs"] and report["within_2_percent"]
    structure = load_structure(out / "slim.structure.json")
    assert [b["after"] + [b["side"]] for b in report["blocks"]] == structure
    model = load_model(out / "slim.pth")  # self-describing: arch and kwargs come from the file
    assert [list(m.allocation) for m in model.modules() if isinstance(m, SABlock)] == [
        e[:4] for e in structure
    ]
    assert (out / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| block |" in (out / "r.md").read_text()
    # The slim checkpoint records its architecture, so it can be slimmed again without --arch.
    again = tmp_path / "again"
    assert _run(out / "slim.pth", again, "--macs", "0.9", "--reinit") == 0
    assert _written(again) == sorted(OUTPUTS)


def _no_bn_stats(tmp_path):
    sd = make_seed(PUBLISHED_KW).state_dict()
    sd = {k: v for k, v in sd.items() if "running_" not in k and "num_batches" not in k}
    path = tmp_path / "nostats.pth"
    torch.save({"arch": "scalenet50", "arch_kwargs": PUBLISHED_KW, "state_dict": sd}, path)
    return path


def _foreign_arch(tmp_path):
    path = tmp_path / "foreign.pth"
    torch.save({"arch": "os:getcwd", "arch_kwargs": {}, "state_dict": {"w": torch.zeros(1)}}, path)
    return path


def _resnet(tmp_path):
    path = tmp_path / "resnet.pth"
    save_checkpoint(
        randomize_batchnorm(create_model("resnet18", width=0.125)), path, "resnet18", {"width": 0.125}
    )
    return path


@pytest.mark.parametrize(
    "make,macs,match",
    [
        (None, "0", "not in \\(0, 1\\]"),
        (None, "-0.2", "not in \\(0, 1\\]"),
        (None, "1.5", "not in \\(0, 1\\]"),
        (None, "5G", "seed's MACs"),
        (_resnet, "0.5", "no SA"),
        (_no_bn_stats, "0.5", "no BatchNorm statistics"),
        (_foreign_arch, "0.5", "code outside the zoo"),
    ],
)
def test_bad_input_is_one_error_and_writes_nothing(seed_ckpt, tmp_path, capsys, make, macs, match):
    ckpt = make(tmp_path) if make else seed_ckpt
    out = tmp_path / "out"
    assert _run(ckpt, out, "--macs", macs) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "hint:" in err and "Traceback" not in err
    assert re.search(match, err)
    assert _written(out) == []


@pytest.mark.slow
def test_scalenet50_full_size_meets_0_6(tmp_path):
    """The issue's run: scalenet50, width 1, 224×224, random BN γ, --macs 0.6 (speed is measured, not asserted)."""
    ckpt = tmp_path / "seed.pth"
    save_checkpoint(randomize_batchnorm(create_model("scalenet50"), 0), ckpt, "scalenet50", {})
    out = tmp_path / "out"
    rc = main(
        ["slim", str(ckpt), "--arch", "scalenet50", "--macs", "0.6", "-o", str(out / "slim.pth")]
        + ["--report", str(out / "r.json")]
    )
    assert rc == 0
    report = json.loads((out / "r.json").read_text())
    assert report["input_shape"] == [1, 3, 224, 224]
    assert report["macs"] <= report["budget_macs"] and report["within_2_percent"]
    assert _written(out) == sorted(OUTPUTS)


@pytest.mark.slow
def test_slim_checkpoint_deploys(seed_ckpt, tmp_path):
    """The slim checkpoint records its architecture, so `reparam deploy` needs nothing else."""
    out = tmp_path / "out"
    assert _run(seed_ckpt, out, "--macs", "0.6") == 0
    rc = main(
        ["deploy", str(out / "slim.pth"), "-o", str(tmp_path / "deploy"), "--to", "onnx"]
        + ["--input-shape", "2x3x32x32"]
    )
    assert rc == 0
    assert json.loads((tmp_path / "deploy" / "report.json").read_text())["passed"] is True
