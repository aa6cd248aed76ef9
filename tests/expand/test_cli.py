"""`reparam expand` and `reparam convert --as-arch`: checkpoints in, checkpoints out, one error on bad input."""

from __future__ import annotations

import json

import pytest
import torch

from reparam.checkpoint import load_model, save_checkpoint
from reparam.cli.main import main
from reparam.expansion import EXPANDED_ARCH, ExpandedConv
from reparam.numerics import FP32_SCALE_REL, randomize_batchnorm, scale_relative_error
from reparam.zoo import create_model
from tests.expand._models import FanOut, FanOutRenamed, Pointwise

KW = {"width": 0.125, "num_classes": 10}
MODELS = "tests.expand._models"


def _files(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


@pytest.fixture
def plain_ckpt(tmp_path):
    torch.manual_seed(0)
    model = randomize_batchnorm(create_model("resnet18", **KW)).eval()
    path = tmp_path / "in" / "plain.pth"
    save_checkpoint(model, path, "resnet18", KW)
    return path, model


def _rel(a, b) -> float:
    with torch.no_grad():
        a, b = a.eval()(X), b.eval()(X)
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    return scale_relative_error(a, b)


X = torch.randn(2, 3, 32, 32)


def test_expand_then_convert_as_arch_round_trip(tmp_path, plain_ckpt, capsys):
    path, plain = plain_ckpt
    out = tmp_path / "out"
    rc = main(
        [
            "expand",
            str(path),
            "--scheme",
            "dbb",
            "-o",
            str(out / "train.pth"),
            "--report",
            str(out / "r.json"),
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "17 conv(s) expanded" in captured.out and "function preserved" in captured.out
    report = json.loads((out / "r.json").read_text())
    assert len(report["expanded"]) == 17 and report["roundtrip_layout"] is True
    saved = torch.load(out / "train.pth", weights_only=True)
    assert saved["arch"] == "expanded" and saved["arch_kwargs"]["arch"] == "resnet18"  # a zoo model
    trained = load_model(out / "train.pth")
    assert sum(isinstance(m, ExpandedConv) for m in trained.modules()) == 17
    assert _rel(plain, trained) <= FP32_SCALE_REL
    # "train": move every weight, save, then hand back resnet18 weights
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    randomize_batchnorm(trained, seed=9)
    save_checkpoint(trained, out / "trained.pth", saved["arch"], saved["arch_kwargs"])
    rc = main(
        [
            "convert",
            str(out / "trained.pth"),
            "-o",
            str(out / "plain18.pth"),
            "--as-arch",
            "resnet18",
            "--as-arch-kwargs",
            json.dumps(KW),
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "21 layers matched by graph structure" in captured.out
    handed_back = load_model(out / "plain18.pth")  # strict load into the zoo's plain resnet18
    assert type(handed_back) is type(plain)
    assert _rel(trained, handed_back) <= FP32_SCALE_REL
    # what the README promises: a state dict of the plain class, loadable by torch alone
    fresh = create_model("resnet18", **KW)
    fresh.load_state_dict(torch.load(out / "plain18.pth", weights_only=True))
    assert _rel(handed_back, fresh) == 0.0


def test_user_classes_on_the_command_line(tmp_path, capsys):
    """Own classes are named on the command line only; a checkpoint never names code to import."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 20, 20)
    torch.save(randomize_batchnorm(FanOut()).eval().state_dict(), tmp_path / "fan.pth")
    shape = ["--input-shape", "1x3x20x20"]
    argv = ["expand", str(tmp_path / "fan.pth"), "--arch", f"{MODELS}:FanOut", "-o", str(tmp_path / "t.pth")]
    assert main(argv + shape) == 0
    note = capsys.readouterr().out.splitlines()[-1]
    expanded_kwargs = {"arch": f"{MODELS}:FanOut", "arch_kwargs": {}, "scheme": "acb"}
    assert note.endswith(f"--arch {EXPANDED_ARCH} --arch-kwargs '{json.dumps(expanded_kwargs)}'")
    again = ["--arch", EXPANDED_ARCH, "--arch-kwargs", json.dumps(expanded_kwargs)]
    argv = [
        "convert",
        str(tmp_path / "t.pth"),
        "-o",
        str(tmp_path / "p.pth"),
        "--as-arch",
        f"{MODELS}:FanOutRenamed",
    ]
    assert main(argv + shape + again) == 0
    assert torch.load(tmp_path / "t.pth", weights_only=True)["built_with"]["arch"] == EXPANDED_ARCH
    trained = load_model(tmp_path / "t.pth", EXPANDED_ARCH, expanded_kwargs)
    renamed = load_model(tmp_path / "p.pth", f"{MODELS}:FanOutRenamed")
    with torch.no_grad():
        assert scale_relative_error(trained(x), renamed(x)) <= FP32_SCALE_REL
    plain = FanOutRenamed().eval()
    plain.load_state_dict(torch.load(tmp_path / "p.pth", weights_only=True))  # strict, torch alone
    with torch.no_grad():
        assert torch.equal(plain(x), renamed(x))
    # the file names its class for the reader, but reparam imports code only when told to
    assert main(["convert", str(tmp_path / "p.pth"), "-o", str(tmp_path / "q.pt2"), *shape]) == 2
    err = capsys.readouterr().err
    assert "names code to import" in err and f"--arch '{MODELS}:FanOutRenamed'" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["expand", "{ckpt}", "--scheme", "acnet", "-o", "{out}/t.pth"], "unknown expansion scheme 'acnet'"),
        (["expand", "{ckpt}", "--init", "zeros", "-o", "{out}/t.pth"], "unknown init 'zeros'"),
        (
            ["expand", "{point}", "--arch", f"{MODELS}:Pointwise", "-o", "{out}/t.pth"],
            "no conv in Pointwise can take",
        ),
        (["expand", "{ckpt}", "--arch", "resnet50", "-o", "{out}/t.pth"], "does not match the architecture"),
        (
            [
                "convert",
                "{ckpt}",
                "-o",
                "{out}/p.pth",
                "--as-arch",
                "resnet50",
                "--as-arch-kwargs",
                json.dumps(KW),
            ],
            "conv/linear layer #2",
        ),
        (["convert", "{ckpt}", "-o", "{out}/p.pth", "--as-arch", "resnet_18"], "unknown model 'resnet_18'"),
        (
            ["convert", "{ckpt}", "-o", "{out}/p.pth", "--as-arch", "resnet18", "--as-arch-kwargs", "{"],
            "not valid JSON",
        ),
    ],
)
def test_bad_input_is_one_error_and_nothing_is_written(tmp_path, plain_ckpt, capsys, argv, message):
    (tmp_path / "in").mkdir(exist_ok=True)
    torch.save(Pointwise().state_dict(), tmp_path / "in" / "point.pth")
    subs = {"ckpt": plain_ckpt[0], "point": tmp_path / "in" / "point.pth", "out": tmp_path / "out"}
    for key, value in subs.items():
        argv = [a.replace("{" + key + "}", str(value)) for a in argv]
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err and "hint:" in err and "Traceback" not in err
    assert _files(tmp_path / "out") == []
