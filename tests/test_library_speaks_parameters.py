"""Library code speaks of parameters; only the CLI knows flags, and shows them in place of parameters."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch

import reparam
from reparam.checkpoint import save_checkpoint
from reparam.cli.console import speak
from reparam.cli.main import main
from reparam.errors import ReparamError
from reparam.zoo import create_model

ROOT = Path(__file__).resolve().parents[1]
FLAG = re.compile(r"(?<![\w`-])--[a-z][a-z0-9-]*")
QUOTED_COMMAND = re.compile(r"`+[^`]*`+")  # a command line quoted for the user keeps its flags
ARGV_ELEMENT = re.compile(r"--[a-z][a-z0-9-]*")  # a whole literal: an argument list being built


def _library_files() -> list[Path]:
    files = [*(ROOT / "reparam").rglob("*.py"), *(ROOT / "exporters").rglob("*.py")]
    return [p for p in files if "cli" not in p.relative_to(ROOT).parts]


def flag_mentions(source: str) -> list[str]:
    """CLI flags named in the string literals of ``source`` (argv elements and quoted commands aside)."""
    tree = ast.parse(source)
    in_fstrings = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):  # read as one text, so a quoted command stays whole
            text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in in_fstrings:
            text = node.value
        else:
            continue
        if not ARGV_ELEMENT.fullmatch(text):
            found += FLAG.findall(QUOTED_COMMAND.sub("", text))
    return found


def test_no_library_module_mentions_a_cli_flag():
    offenders = {
        str(p.relative_to(ROOT)): hits for p in _library_files() if (hits := flag_mentions(p.read_text()))
    }
    assert not offenders, f"library modules name CLI flags (write the parameter in backticks): {offenders}"


def test_the_scan_finds_a_flag_in_a_message():
    assert flag_mentions('raise ReparamError("bad", hint="pass --input-shape 1x3x8x8")') == ["--input-shape"]
    assert flag_mentions('hint = "pass `input_shape`; see `reparam export onnx --dynamic batch`"') == []
    assert flag_mentions('args += ["--threads", "2"]') == []
    assert flag_mentions('f"run `reparam deploy --arch {arch} --to onnx`, then --seed {s}"') == ["--seed"]


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "r.pth"
    save_checkpoint(create_model("repvgg_a0", num_classes=3, width=0.25).eval(), path, "repvgg_a0", {})
    return path


def test_a_library_error_names_the_parameter_and_the_cli_the_flag(tmp_path, ckpt, capsys):
    with pytest.raises(ReparamError) as info:
        reparam.deploy(reparam.ModelSource(ckpt, state_dict_key="ema"), tmp_path / "a")
    assert "`state_dict_key`" in str(info.value) and "--" not in str(info.value)
    assert main(["deploy", str(ckpt), "--state-dict-key", "ema", "-o", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "--state-dict-key" in err and "`" not in err.replace("`reparam", "")


def test_the_cli_shows_a_flag_for_a_parameter_and_for_a_parameter_value():
    flags = {"opset": "--opset", "dynamo=False": "--legacy-exporter", "dynamic_batch": "--dynamic batch"}
    assert speak("try `dynamo=False`, or another opset (`opset`)", flags) == (
        "try --legacy-exporter, or another opset (--opset)"
    )
    assert speak("alone dynamic (`dynamic_batch`)", flags) == "alone dynamic (--dynamic batch)"
    assert speak("set `opset=17`", flags) == "set --opset 17"
    assert speak("unknown `other` and `other=1` stay", flags) == "unknown `other` and `other=1` stay"
