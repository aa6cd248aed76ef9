"""What a new user ran from the README, and what they should have seen: one rule for the input
shape, checkpoints torch accepts, hints that name what is there, local code found for every flag,
errors that never advise unsafe loading, progress while verifying, and inspect on every file kind."""

from __future__ import annotations

import json
import re
import sys
import textwrap

import pytest
import torch

import reparam
from reparam.checkpoint import load_model, save_checkpoint
from reparam.cli.main import main
from reparam.describe import describe
from reparam.engine import convert
from reparam.numerics import randomize_batchnorm
from reparam.zoo import create_model

ARCH, KW = "repvgg_a0", {"num_classes": 3, "width": 0.25}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return randomize_batchnorm(create_model(ARCH, **KW)).eval()


@pytest.fixture
def ckpt(tmp_path, model):
    path = tmp_path / "ckpt.pth"
    save_checkpoint(model, path, ARCH, KW)
    return path


def _error(capsys, argv: list[str], code: int = 2) -> str:
    """Run ``argv``; the exit code, one error line, one hint line and no traceback."""
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and err.count("hint:") == 1 and "Traceback" not in err, err
    return err


# -- 2: one default input shape, stated the same everywhere ---------------------------------------


@pytest.mark.parametrize("command", ["convert", "expand", "verify", "deploy"])
def test_help_states_the_default_input_shape_that_runs(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "1xCx224x224" in text and "32x32" not in text
    assert "224" in reparam.deploy.__doc__


def test_convert_without_input_shape_uses_and_names_the_default(tmp_path, ckpt, capsys):
    out = tmp_path / "m.pt2"
    assert main(["convert", str(ckpt), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "no --input-shape given: using 1x3x224x224" in err
    assert describe(out).example_shape() == (1, 3, 224, 224)


# -- 3: a checkpoint without BatchNorm's num_batches_tracked ---------------------------------------


def test_checkpoint_without_batch_counters_is_accepted(tmp_path, model, capsys):
    sd = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "no_counters.pth"
    torch.save({"arch": ARCH, "arch_kwargs": KW, "state_dict": sd}, path)
    assert main(["convert", str(path), "--input-shape", "1x3x32x32", "-o", str(tmp_path / "m.pt2")]) == 0
    del sd["stage0.rbr_dense.0.weight"]
    torch.save({"arch": ARCH, "arch_kwargs": KW, "state_dict": sd}, path)
    capsys.readouterr()
    err = _error(capsys, ["convert", str(path), "-o", str(tmp_path / "n.pt2")])
    assert "missing keys: stage0.rbr_dense.0.weight (1 in all)" in err
    assert not (tmp_path / "n.pt2").exists()


# -- 6: --state-dict-key that is not there --------------------------------------------------------


def test_state_dict_key_hint_lists_the_keys_present(tmp_path, model, capsys):
    path = tmp_path / "ema.pth"
    torch.save({"arch": ARCH, "arch_kwargs": KW, "ema": model.state_dict(), "epoch": 3}, path)
    err = _error(
        capsys, ["convert", str(path), "--state-dict-key", "model_ema", "-o", str(tmp_path / "m.pt2")]
    )
    assert "no entry 'model_ema'" in err and "'ema'" in err
    hint = err.split("hint:")[1]
    assert "--state-dict-key ema" in hint and "model_ema" not in hint


# -- 7: the current directory's code, for every flag that names or trusts code ---------------------

PLAIN_MODULE = """
    import torch
    from torch import nn

    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))
"""


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    """A working directory holding mynet.py, as the `reparam` script sees it (not on sys.path)."""
    (tmp_path / "mynet.py").write_text(textwrap.dedent(PLAIN_MODULE))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    yield tmp_path
    sys.modules.pop("mynet", None)


def _import_mynet(directory):
    sys.path.insert(0, str(directory))
    try:
        import mynet

        return mynet
    finally:
        sys.path.remove(str(directory))


def test_local_module_is_found_for_as_arch_and_trust_pickle(user_dir, capsys):
    mynet = _import_mynet(user_dir)
    torch.manual_seed(0)
    trained = randomize_batchnorm(mynet.Plain()).eval()
    torch.save(trained, user_dir / "whole.pt")
    torch.save(trained.state_dict(), user_dir / "sd.pth")
    sys.modules.pop("mynet")
    shape = ["--input-shape", "1x3x16x16"]
    assert main(["convert", "whole.pt", "--trust-pickle", *shape, "-o", "a.pt2"]) == 0
    sys.modules.pop("mynet")
    argv = ["convert", "sd.pth", "--arch", "mynet:Plain", "--as-arch", "mynet:Plain", *shape, "-o", "p.pth"]
    assert main(argv) == 0, capsys.readouterr().err
    capsys.readouterr()
    err = _error(
        capsys, ["convert", "sd.pth", "--arch", "mynet:Plain", "--as-arch", "nosuch:Plain", "-o", "q.pth"]
    )
    assert "for --as-arch 'nosuch:Plain'" in err and "--arch 'nosuch" not in err
    assert not (user_dir / "q.pth").exists()


# -- 8: a model torch.export cannot capture -------------------------------------------------------

DATA_DEPENDENT_MODULE = """
    import torch
    from torch import nn

    class Peeks(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)

        def forward(self, x):
            y = self.bn(self.conv(x))
            return y[:, : int(y.abs().max().item() * 3) % 3 + 1]  # channels chosen by the data
"""


@pytest.fixture
def peeks_checkpoint(user_dir):
    """sd.pth of peeks:Peeks, a model torch.export cannot capture, in the working directory."""
    (user_dir / "peeks.py").write_text(textwrap.dedent(DATA_DEPENDENT_MODULE))
    sys.path.insert(0, str(user_dir))
    try:
        import peeks

        torch.save(peeks.Peeks().eval().state_dict(), user_dir / "sd.pth")
    finally:
        sys.path.remove(str(user_dir))
    yield user_dir
    sys.modules.pop("peeks", None)


@pytest.mark.parametrize("command", ["convert", "deploy"])
def test_a_model_export_cannot_capture_is_one_error_without_torch_logging(peeks_checkpoint, capsys, command):
    user_dir = peeks_checkpoint
    out = "out.pt2" if command == "convert" else "out"
    argv = [command, "sd.pth", "--arch", "peeks:Peeks", "--input-shape", "1x3x16x16", "-o", out]
    err = _error(capsys, argv)
    assert "torch.export could not capture the deploy model" in err
    # progress lines, the error and its hint: nothing of torch's partial graph
    assert all(line.startswith(("[", "error:", "  hint:", "note:")) for line in err.splitlines()), err
    assert "def forward" not in err and not (user_dir / out).exists()


def test_onnx_export_that_torch_retries_shows_no_partial_graph(peeks_checkpoint, capsys):
    """The dynamo exporter retries a capture torch.export refuses; its first try prints nothing."""
    pytest.importorskip("onnx")
    argv = ["export", "onnx", "sd.pth", "--arch", "peeks:Peeks", "--input-shape", "1x3x16x16", "-o", "p.onnx"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "def forward" not in err and all(line.startswith(("[", "note:")) for line in err.splitlines()), err
    assert (peeks_checkpoint / "p.onnx").is_file()


# -- 10: a corrupt checkpoint -----------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"vm-host\n", b"\x80\x04\x95garbage", b"PK\x03\x04broken zip"])
def test_corrupt_checkpoint_error_never_suggests_unsafe_loading(tmp_path, capsys, content):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    err = _error(capsys, ["convert", str(path), "--arch", ARCH, "-o", str(tmp_path / "m.pt2")])
    assert "truncated, corrupt" in err
    assert "weights_only" not in err and "--trust-pickle" not in err and "warning:" not in err


# -- 9: progress while verifying ---------------------------------------------------------------------


def test_verify_shows_progress_with_counts_on_stderr_and_quiet_silences_it(tmp_path, ckpt, capsys):
    argv = ["verify", str(ckpt), "--input-shape", "2x3x32x32", "--batches", "3"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if "verifying:" in line]
    assert any("reference" in line and "(0/" in line for line in lines)
    assert any("candidate 1/1" in line for line in lines)
    # the reference and the candidate on 3 batches each (the float64 reference only when needed)
    done, total = re.search(r"\((\d+)/(\d+) batch runs\)$", lines[-1]).groups()
    assert done == total and int(total) in (6, 9)
    assert "verifying:" not in captured.out and "PASS" in captured.out
    assert main([*argv, "--quiet"]) == 0
    assert "verifying:" not in capsys.readouterr().err


# -- 11: manifest, ONNX metadata, inspect of golden directories and checkpoints ----------------------


def test_manifest_records_the_model_input_shape_and_per_sample_report(tmp_path, ckpt):
    pytest.importorskip("onnxruntime")
    result = reparam.deploy(
        reparam.ModelSource(ckpt), tmp_path / "out", inputs=reparam.InputSpec(input_shape=(4, 3, 32, 32))
    )
    assert result.passed
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["input_shape"] == "1x3x32x32" and manifest["verify_inputs"]["shape"] == "4x3x32x32"
    report = json.loads((tmp_path / "out" / "model.pt2.report.json").read_text())
    single = convert(load_model(ckpt), input_shape=(1, 3, 32, 32), check=False)
    assert report["before"]["macs"] == single.report.before.macs  # per sample, not per verify batch
    from reparam.exporters.onnx import onnx_summary

    meta = onnx_summary(tmp_path / "out" / "model.onnx")["metadata"]
    assert "reparam.input_shapes" in meta and "reparam.input_shape" not in meta


def test_inspect_describes_checkpoints_and_golden_directories(tmp_path, ckpt, capsys):
    assert main(["inspect", str(ckpt)]) == 0
    text = capsys.readouterr().out
    assert "(checkpoint," in text and f"architecture: {ARCH}" in text and "state dict:" in text
    assert main(["inspect", str(ckpt), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "checkpoint" and info["tensors"] > 0 and "state_dict" in info["entries"]
    golden = tmp_path / "G"
    assert main(["verify", str(ckpt), "--input-shape", "2x3x16x16", "--save-golden", str(golden)]) == 0
    capsys.readouterr()
    assert main(["inspect", str(golden)]) == 0
    text = capsys.readouterr().out
    assert "(golden," in text and "2 batch(es) of 2x3x16x16, 2x3x16x16" in text and "arrays.npz: ok" in text


def test_inspect_refuses_pickled_code_without_running_it(tmp_path, model, capsys):
    torch.save(model, tmp_path / "whole.pt")
    err = _error(capsys, ["inspect", str(tmp_path / "whole.pt")])
    assert "pickled code" in err
    # inspect has no flag to trust a file: the hint says which commands do
    hint = err.split("hint:")[1]
    assert "save a state_dict" in hint and "deploy load a file you trust with --trust-pickle" in hint
    assert "`" not in err


# -- the README's commands on a training-form ONNX file -----------------------------------------------


def test_deploy_of_an_onnx_file_names_every_file_it_wrote(tmp_path, ckpt, capsys):
    pytest.importorskip("onnxruntime")
    model = tmp_path / "model.onnx"
    argv = ["export", "onnx", str(ckpt), "--training-form", "--legacy-exporter", "--input-shape", "1x3x32x32"]
    assert main([*argv, "-o", str(model)]) == 0
    capsys.readouterr()
    assert main(["deploy", str(model), "-o", str(tmp_path / "out"), "--fp16"]) == 0
    written = capsys.readouterr().out.splitlines()[-1]
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert "model.fp16.onnx" in files and written == f"wrote {tmp_path / 'out'}/ ({', '.join(files)})"
