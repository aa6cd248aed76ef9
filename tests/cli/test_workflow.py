"""The user's workflow: self-describing artifacts, one shape rule, checkpoint selection, own model classes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from reparam.cli.main import main
from reparam.describe import describe
from reparam.numerics import randomize_batchnorm
from reparam.zoo import create_model

ARCH, KW = "acb_resnet18", {"num_classes": 5, "width": 0.25}
KW_JSON = json.dumps(KW)


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return randomize_batchnorm(create_model(ARCH, **KW), seed=seed).eval()


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """A plain state dict (records no architecture) converted at 40x40, and its ONNX export."""
    root = tmp_path_factory.mktemp("workflow")
    torch.save(_model().state_dict(), root / "ckpt.pth")
    args = ["--arch", ARCH, "--arch-kwargs", KW_JSON, "--input-shape", "1x3x40x40"]
    assert main(["convert", str(root / "ckpt.pth"), *args, "-o", str(root / "m.pt2")]) == 0
    assert main(["export", "onnx", str(root / "m.pt2"), "-o", str(root / "m.onnx"), "--fp16"]) == 0
    return root


def test_artifacts_describe_themselves(plain):
    for name in ("m.pt2", "m.onnx"):
        d = describe(plain / name)
        assert (d.arch, d.arch_kwargs, d.input_names) == (ARCH, KW, ["input"]), name
        # a fully convolutional model with a global pool: height and width stay free in the .pt2
        free = ["batch", 3, "height", "width"] if name == "m.pt2" else ["batch", 3, 40, 40]
        assert d.input_shape == free and d.precision == "fp32", name
    assert describe(plain / "m.fp16.onnx").precision == "fp16"


def test_verify_reads_architecture_and_shape_from_the_artifact(plain, capfd):
    rc = main(
        ["verify", str(plain / "ckpt.pth"), "--deploy", str(plain / "m.pt2"), "--onnx", str(plain / "m.onnx")]
    )
    out, err = capfd.readouterr()
    assert rc == 0, err
    assert "input shape 1x3x40x40 as recorded in m.pt2" in err and "PASS" in out


def test_verify_judges_an_fp16_onnx_as_fp16_beside_fp32_files(plain, capfd):
    report = plain / "mixed.json"
    argv = ["verify", str(plain / "ckpt.pth"), "--deploy", str(plain / "m.pt2")]
    argv += ["--onnx", str(plain / "m.onnx"), "--onnx", str(plain / "m.fp16.onnx"), "--report", str(report)]
    assert main(argv) == 0, capfd.readouterr().err
    data = json.loads(report.read_text())
    profiles = {c["name"]: c["tolerance"] for c in data["candidates"]}
    assert profiles == {"m.pt2": "fp32", "m.onnx": "fp32", "m.fp16.onnx": "fp16"}
    # the same files with an explicit --tolerance: that profile for every candidate
    assert main([*argv, "--tolerance", "fp32"]) == 1


def test_input_shape_mismatch_names_artifact_shape_and_flag(plain, capfd):
    npz = plain / "val64.npz"
    np.savez(npz, input=np.zeros((2, 3, 64, 64), np.float32))
    rc = main(["verify", str(plain / "ckpt.pth"), "--onnx", str(plain / "m.onnx"), "--inputs", str(npz)])
    err = capfd.readouterr().err
    assert rc == 2
    assert "m.onnx expects input 'input' of shape batchx3x40x40" in err and "2x3x64x64" in err
    assert "--input-shape 2x3x40x40" in err and "--dynamic" in err


def test_dynamic_spatial_axes(plain, capfd):
    out = plain / "dyn.onnx"
    args = [
        "--arch",
        ARCH,
        "--arch-kwargs",
        KW_JSON,
        "--input-shape",
        "1x3x32x32",
        "--dynamic",
        "batch,height,width",
    ]
    assert main(["export", "onnx", str(plain / "ckpt.pth"), *args, "-o", str(out)]) == 0, (
        capfd.readouterr().err
    )
    assert describe(out).input_shape == ["batch", 3, "height", "width"]
    rc = main(["verify", str(plain / "ckpt.pth"), "--onnx", str(out), "--input-shape", "2x3x48x40"])
    assert rc == 0, capfd.readouterr().err


def test_convert_refuses_an_onnx_output_name(plain, capfd):
    rc = main(["convert", str(plain / "ckpt.pth"), "--arch", ARCH, "-o", str(plain / "x.onnx")])
    err = capfd.readouterr().err
    assert rc == 2 and "must end in .pt2" in err and "reparam export onnx" in err
    assert not (plain / "x.onnx").exists()


def _ema_checkpoint(path, prefix: str = "") -> tuple[torch.nn.Module, torch.nn.Module]:
    model, ema = _model(0), _model(1)
    sd = {prefix + k: v for k, v in model.state_dict().items()}
    ema_sd = {prefix + k: v for k, v in ema.state_dict().items()}
    torch.save({"arch": ARCH, "arch_kwargs": KW, "state_dict": sd, "state_dict_ema": ema_sd}, path)
    return model, ema


def _deploy_output(pt2, x: torch.Tensor) -> torch.Tensor:
    from reparam.artifact import load_artifact

    with torch.no_grad():
        return load_artifact(pt2)(x)


@pytest.mark.parametrize("prefix", ["", "model."])
def test_state_dict_selection(tmp_path, capfd, prefix):
    ckpt = tmp_path / "ema.pth"
    model, ema = _ema_checkpoint(ckpt, prefix)
    strip = ["--strip-prefix", prefix] if prefix else []
    shape = ["--input-shape", "1x3x32x32"]
    if prefix:  # without --strip-prefix the error says which flag fixes it
        assert main(["convert", str(ckpt), *shape, "-o", str(tmp_path / "a.pt2")]) == 2
        assert f"--strip-prefix {prefix}" in capfd.readouterr().err
    assert main(["convert", str(ckpt), *shape, *strip, "-o", str(tmp_path / "a.pt2")]) == 0
    err = capfd.readouterr().err
    assert "holds 2 state dicts (state_dict, state_dict_ema); using 'state_dict'" in err
    assert "--state-dict-key state_dict_ema" in err
    argv = [
        "convert",
        str(ckpt),
        *shape,
        *strip,
        "--state-dict-key",
        "state_dict_ema",
        "-o",
        str(tmp_path / "b.pt2"),
    ]
    assert main(argv) == 0
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref, ref_ema = model(x), ema(x)
    for pt2, expected, other in (("a.pt2", ref, ref_ema), ("b.pt2", ref_ema, ref)):
        got = _deploy_output(tmp_path / pt2, x)
        assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()
        assert (got - other).abs().max() > 1e-2 * other.abs().max()
    assert (
        main(["convert", str(ckpt), *shape, "--state-dict-key", "nope", "-o", str(tmp_path / "c.pt2")]) == 2
    )
    assert "no entry 'nope'" in capfd.readouterr().err


USER_MODULE = """
    import torch
    from torch import nn

    class MyNet(nn.Module):
        def __init__(self, classes=3):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.fc = nn.Linear(8, classes)

        def forward(self, x):
            return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))
"""


def test_user_class_from_the_current_directory(tmp_path):
    """`--arch mynet:MyNet` finds mynet.py in the working directory with no PYTHONPATH set."""
    (tmp_path / "mynet.py").write_text(textwrap.dedent(USER_MODULE))
    sys.path.insert(0, str(tmp_path))
    try:
        import mynet

        model = randomize_batchnorm(mynet.MyNet(classes=3)).eval()
        torch.save(model.state_dict(), tmp_path / "my.pth")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("mynet", None)
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    argv = [sys.executable, "-m", "reparam", "convert", "my.pth", "--arch", "mynet:MyNet"]
    argv += ["--arch-kwargs", '{"classes": 3}', "--input-shape", "1x3x16x16", "-o", "my.pt2"]
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert describe(tmp_path / "my.pt2").arch == "mynet:MyNet"
    # The .pt2 names code; verify never imports it on the file's word, and says what to do.
    argv = [sys.executable, "-m", "reparam", "verify", "my.pth", "--deploy", "my.pt2"]
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "names code to import" in proc.stderr and "--arch" in proc.stderr
