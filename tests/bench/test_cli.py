import json
import shlex

import numpy as np
import pytest

from reparam.cli.commands.bench import _options
from reparam.cli.main import build_parser, main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--backend", "tensorrt"], "unknown backend 'tensorrt'"),
        (["--batch", "0,8"], "invalid batch '0,8'"),
        (["--input-shape", "3x32x32"], "must be NxCxHxW"),
        (["resnet18"], "'resnet18' has no plain counterpart"),
        (["acb_resnet19"], "unknown model 'acb_resnet19'"),
        (["--repeats", "0"], "--repeats must be at least 1"),
        (["--width", "-1"], "--width must be positive"),
        (["--conversion", "--conversion-input-shape", "3x224x224"], "must be NxCxHxW"),
    ],
)
def test_bad_options_are_one_error_with_a_hint(argv, message, tmp_path, capsys):
    out = tmp_path / "r.md"
    assert main(["bench", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "hint:" in err
    assert not out.exists()


def test_quick_defaults_and_explicit_flags_win():
    args = build_parser().parse_args(["bench", "--quick", "--repeats", "7", "--backend", "ort"])
    opts = _options(args)
    assert opts.repeats == 7 and opts.warmup == 1 and opts.width == 0.25 and opts.batches == [1]
    assert opts.backends == ["ort-all", "ort-disable"]
    assert opts.input_chw == (3, 32, 32)
    full = _options(build_parser().parse_args(["bench"]))
    assert full.models == ["acb_resnet18", "repvgg_a0", "acb_resnet56_cifar"]
    assert full.backends == ["torch", "ort-all", "ort-disable"] and full.batches == [1, 8]
    assert full.conversion_models == ["acb_resnet50", "sknet50", "se_resnet50", "scalenet50"]
    assert full.conversion_input == (1, 3, 224, 224) and full.latency and full.conversion


@pytest.mark.parametrize(
    "argv", [["bench", "--quick"], ["bench", "repvgg_a0", "--latency", "--input-shape", "2x3x64x64"]]
)
def test_recorded_command_reproduces_the_options(argv):
    opts = _options(build_parser().parse_args(argv))
    again = _options(build_parser().parse_args(shlex.split(opts.command())[1:]))
    assert again == opts


def test_torch_latency_run_writes_markdown_and_json(tmp_path, capsys):
    md, js = tmp_path / "r.md", tmp_path / "r.json"
    argv = [
        "bench",
        "acb_resnet56_cifar",
        "--latency",
        "--backend",
        "torch",
        "--width",
        "0.25",
        "--input-shape",
        "1x3x16x16",
        "--batch",
        "1,2",
        "--repeats",
        "4",
        "--warmup",
        "1",
        "--out",
        str(md),
        "--report",
        str(js),
        "--json",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr()
    data = json.loads(js.read_text())
    assert json.loads(printed.out) == data  # --json: stdout is the JSON and nothing else
    assert f"wrote {js}" in printed.err
    assert [(c["backend"], c["batch"]) for c in data["latency"]] == [("torch", 1), ("torch", 2)]
    for cell in data["latency"]:
        samples = cell["samples"]
        assert set(samples) == {"train", "deploy", "plain"} and all(len(v) == 4 for v in samples.values())
        ratios = [t / d for t, d in zip(samples["train"], samples["deploy"])]
        assert cell["ratios"]["train/deploy"]["median"] == pytest.approx(float(np.median(ratios)))
        assert cell["input_shape"][0] == cell["batch"]
    assert data["conversion"] == []
    text = md.read_text()
    assert "## Latency" in text and "## Conversion cost" not in text
    assert "reparam bench acb_resnet56_cifar --backend torch --batch 1,2 --repeats 4" in text
    assert "same engine" in text  # how the plain counterpart was deployed is stated


@pytest.mark.slow
def test_quick_run_of_everything(tmp_path):
    md, js = tmp_path / "r.md", tmp_path / "r.json"
    assert main(["bench", "--quick", "--out", str(md), "--report", str(js)]) == 0
    data = json.loads(js.read_text())
    cells = {(c["model"], c["backend"]) for c in data["latency"]}
    assert cells == {
        (m, b)
        for m in ("acb_resnet18", "repvgg_a0", "acb_resnet56_cifar")
        for b in ("torch", "ort-all", "ort-disable")
    }
    assert [c["model"] for c in data["conversion"]] == ["acb_resnet50"]
    conv = data["conversion"][0]
    assert conv["check_passed"] is True and conv["export_s"] is not None and conv["peak_rss_delta_bytes"] > 0
    text = md.read_text()
    assert "## Targets" in text and "timm" in text
    # quick sizes: targets are labelled, never met or missed
    assert data["targets_judged"] is False and "Not judged" in text and "MISSED" not in text
