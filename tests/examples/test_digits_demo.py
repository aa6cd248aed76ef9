"""examples/digits_demo.py: data split, checkpoint format, and the accuracy it reaches."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from reparam.zoo import create_model

pytest.importorskip("sklearn")

_PATH = Path(__file__).resolve().parents[2] / "examples" / "digits_demo.py"


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module


demo = _load(_PATH, "digits_demo")


def test_split_is_fixed_stratified_and_normalised():
    x_train, y_train, x_test, y_test = demo.load_digits_split(seed=0)
    assert x_train.shape[1:] == (1, 16, 16) and x_test.shape == (360, 1, 16, 16)
    assert x_train.dtype == torch.float32 and y_test.dtype == torch.int64
    assert len(x_train) + len(x_test) == 1797
    assert float(x_train.min()) >= 0.0 and float(x_train.max()) <= 1.0
    assert torch.bincount(y_test, minlength=10).min() >= 35  # stratified: every class present
    again = demo.load_digits_split(seed=0)
    assert torch.equal(again[2], x_test) and torch.equal(again[3], y_test)


def _check_outputs(out: Path, names: list[str]) -> dict[str, float]:
    with np.load(out / "digits_test.npz") as npz:
        x, y = npz["input"], npz["label"]
    assert x.dtype == np.float32 and x.shape == (360, 1, 16, 16) and y.shape == (360,)
    accuracies = {}
    for name in names:
        ckpt = torch.load(out / f"{name}.pth", weights_only=True)
        assert set(ckpt) == {"arch", "arch_kwargs", "state_dict"}
        model = create_model(ckpt["arch"], **ckpt["arch_kwargs"])
        model.load_state_dict(ckpt["state_dict"])
        accuracies[name] = demo.evaluate(model, torch.from_numpy(x), torch.from_numpy(y))
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    return accuracies


def test_checkpoint_format_and_reload(tmp_path, capsys):
    assert demo.main(["--out", str(tmp_path), "--models", "se", "--epochs", "1", "--threads", "1"]) == 0
    accuracies = _check_outputs(tmp_path, ["se"])
    printed = capsys.readouterr().out
    assert f"test accuracy {accuracies['se']:.4f}" in printed  # the reloaded model scores what was printed


def test_unknown_demo_model_is_rejected(tmp_path, capsys):
    assert demo.main(["--out", str(tmp_path / "o"), "--models", "resnet"]) == 2
    assert "unknown demo model" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_demo_reaches_90_percent_and_deploys_without_losing_accuracy(tmp_path, capsys):
    """What `make demo` runs: train, `reparam deploy`, then accuracy of every artifact."""
    from reparam.cli.main import main as reparam_main

    assert demo.main(["--out", str(tmp_path), "--seed", "0", "--threads", str(torch.get_num_threads())]) == 0
    accuracies = _check_outputs(tmp_path, ["acb", "se"])
    assert accuracies["acb"] >= 0.9 and accuracies["se"] >= 0.9, accuracies
    data = str(tmp_path / "digits_test.npz")
    deploy_dir = tmp_path / "acb-deploy"
    argv = ["deploy", str(tmp_path / "acb.pth"), "-o", str(deploy_dir), "--to", "onnx"]
    assert reparam_main([*argv, "--inputs", data, "--batch-size", "64"]) == 0
    capsys.readouterr()
    accuracy_script = _load(_PATH.with_name("digits_accuracy.py"), "digits_accuracy")
    assert accuracy_script.main([str(tmp_path / "acb.pth"), str(deploy_dir), "--data", data]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "(" in line and "images" not in line]
    assert len(rows) == 3  # training model, model.pt2, model.onnx
    assert all(f"{accuracies['acb']:.4f}" in row for row in rows), rows
    # the int8 step of `make demo`: Q/DQ model calibrated on training images, checked on the test split
    int8 = tmp_path / "acb.int8.onnx"
    argv = ["quantize", str(deploy_dir / "model.onnx"), "--calib", str(tmp_path / "digits_calib.npz")]
    argv += ["-o", str(int8), "--reference", str(tmp_path / "acb.pth"), "--eval", data]
    assert reparam_main(argv) == 0 and int8.is_file()
    line = next(x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("accuracy:"))
    int8_accuracy = float(line.split("int8 Q/DQ ONNX ")[1].split()[0])
    assert abs(int8_accuracy - accuracies["acb"]) <= 0.01, line
