"""The installed package layout: ``exporters/`` installs as ``reparam.exporters``, nothing as a bare name."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["reparam", "exporters", "tests", "examples", "benchmarks"]


def _packages(top: str) -> list[str]:
    """Dotted names of the folders under ``top`` that hold an ``__init__.py`` (what setuptools finds)."""
    return [
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / top).rglob("__init__.py")
        if "__pycache__" not in init.parts
    ]


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_is_listed_for_installation():
    config = _pyproject()["tool"]["setuptools"]
    found = _packages("reparam")
    mapped = ["reparam." + p for p in _packages("exporters")]
    assert sorted(config["packages"]) == sorted(found + mapped)
    assert config["package-dir"] == {"reparam.exporters": "exporters"}


def _bare_exporters_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    bad = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        bad += [f"{path.relative_to(ROOT)}:{node.lineno}" for n in names if n.split(".")[0] == "exporters"]
    return bad


def test_nothing_imports_the_bare_exporters_name():
    files = [p for d in SOURCES for p in (ROOT / d).rglob("*.py")]
    assert len(files) > 100
    assert [hit for f in files for hit in _bare_exporters_imports(f)] == []


def test_installed_name_resolves_outside_the_checkout(tmp_path):
    code = (
        "import importlib.util, reparam.exporters.onnx as m; "
        "print(m.__file__); print(importlib.util.find_spec('exporters'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert Path(out[0]).resolve() == (ROOT / "exporters" / "onnx" / "__init__.py").resolve()
    assert out[1] == "None"  # no top-level `exporters` package is installed
