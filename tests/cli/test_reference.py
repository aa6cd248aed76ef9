"""docs/cli.md is the parser's own help, regenerated: it may not drift from the code."""

from __future__ import annotations

from pathlib import Path

from reparam.cli.reference import render

PAGE = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def test_cli_reference_is_up_to_date():
    assert PAGE.read_text() == render(), "regenerate: python -m reparam.cli.reference > docs/cli.md"


def test_cli_reference_covers_every_command():
    text = PAGE.read_text()
    for command in ("zoo", "convert", "export onnx", "export trt", "inspect", "verify", "deploy", "bench"):
        assert f"## `reparam {command}`" in text
