"""`reparam --help`, `--version` and a mistyped command answer without importing torch; a command
line is parsed the same by the parser of its command alone as by the parser of every command."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import pytest

import reparam.cli.commands as pkg
from reparam.cli.commands import SUMMARIES
from reparam.cli.main import build_parser, command_modules

_PROBE = (
    "import sys\n"
    "from reparam.cli.main import main\n"
    "try:\n"
    "    code = main(sys.argv[1:])\n"
    "except SystemExit as exit:\n"
    "    code = exit.code\n"
    "print('torch imported' if 'torch' in sys.modules else 'no torch', code)\n"
)


@pytest.mark.parametrize(
    ("argv", "code"), [(["--help"], 0), (["--version"], 0), ([], 2), (["--quiet", "covnert"], 2)]
)
def test_the_command_list_and_usage_errors_need_no_torch(argv, code):
    done = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines()[-1] == f"no torch {code}", done.stderr


def test_every_command_module_has_a_summary_and_registers_it():
    registering = {
        m.name
        for m in pkgutil.iter_modules(pkg.__path__)
        if hasattr(importlib.import_module(f"reparam.cli.commands.{m.name}"), "register")
    }
    assert set(command_modules()) == registering == set(SUMMARIES)
    full = build_parser()
    sub = next(a for a in full._actions if a.dest == "command")
    helps = {c.dest: c.help for c in sub._choices_actions}
    assert helps == SUMMARIES


@pytest.mark.parametrize(
    "argv",
    [
        ["deploy", "ckpt.pth", "--arch", "acb_resnet18", "-o", "out", "--to", "onnx", "--fp16"],
        ["--debug", "convert", "ckpt.pth", "--arch", "repvgg_a0", "--skip", "fold_bn", "-o", "m.pt2"],
        ["export", "onnx", "model.pt2", "-o", "model.onnx", "--opset", "17"],
        ["verify", "ckpt.pth", "--onnx", "model.onnx", "--arch", "acb_resnet18"],
    ],
)
def test_a_command_alone_parses_as_among_all(argv):
    alone, among_all = build_parser(argv).parse_args(argv), build_parser().parse_args(argv)
    strip = lambda ns: {k: v for k, v in vars(ns).items() if k not in ("func", "command_parser")}  # noqa: E731
    assert strip(alone) == strip(among_all)
    assert alone.func.__qualname__ == among_all.func.__qualname__
