"""The README's Quickstart runs as written: its Python block and every command of its shell block.

The commands run in a fresh directory holding what the README assumes the user has: ``ckpt.pth``
(a plain state dict of ``acb_resnet18`` with 10 classes, the harder of the two checkpoint forms the
README allows) and ``val.npz`` (two images: the README does not fix the sample count).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from reparam.numerics import randomize_batchnorm
from reparam.zoo import create_model

README = Path(__file__).resolve().parents[1] / "README.md"
SKIPPED = {
    ("export", "trt"): "TensorRT needs an NVIDIA GPU (covered by tests/exporters/test_tensorrt_gpu.py)"
}


def quickstart_blocks(language: str) -> list[str]:
    """The ``language`` code blocks of the README's Quickstart section."""
    text = README.read_text()
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


def shell_commands(block: str) -> list[list[str]]:
    """Each command of a shell block as argv, continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", block)
    return [argv for line in joined.splitlines() if (argv := shlex.split(line, comments=True))]


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=900)


def test_quickstart_blocks_are_found():
    assert len(quickstart_blocks("python")) == 1 and len(quickstart_blocks("bash")) == 1
    commands = shell_commands(quickstart_blocks("bash")[0])
    assert [c[0] for c in commands] == ["reparam"] * len(commands)
    assert {c[1] for c in commands} >= {"zoo", "convert", "export", "verify", "deploy", "inspect"}


@pytest.mark.slow
def test_quickstart_python_block_prints_what_it_says(tmp_path):
    code = quickstart_blocks("python")[0]
    proc = _run([sys.executable, "-c", code], tmp_path)
    assert proc.returncode == 0, proc.stderr
    # The comment under print(summary_line()) is the expected output; the check's relative error
    # depends on the machine's float summation order, everything else must match exactly.
    comment = code.split("summary_line())", 1)[1].split("print(", 1)[0]
    expected = " ".join(line.strip().lstrip("#").strip() for line in comment.strip().splitlines())
    number = r"[0-9.]+e-[0-9]+"
    printed = proc.stdout.splitlines()[0]
    assert re.fullmatch(re.escape(expected).replace(re.escape("5.8e-07"), number), printed), printed


@pytest.fixture(scope="module")
def user_files(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("readme")
    torch.manual_seed(0)
    model = randomize_batchnorm(create_model("acb_resnet18", num_classes=10)).eval()
    torch.save(model.state_dict(), root / "ckpt.pth")
    rng = np.random.default_rng(0)
    np.savez(root / "val.npz", input=rng.standard_normal((2, 3, 224, 224)).astype(np.float32))
    return root


@pytest.mark.slow
def test_quickstart_commands_run_as_written(user_files):
    ran = []
    for argv in shell_commands(quickstart_blocks("bash")[0]):
        reason = SKIPPED.get(tuple(argv[1:3]))
        if reason:
            continue
        proc = _run([sys.executable, "-m", "reparam", *argv[1:]], user_files)
        assert proc.returncode == 0, f"{shlex.join(argv)}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        assert "Traceback" not in proc.stderr
        ran.append(argv[1])
    assert ran == ["zoo", "convert", "export", "verify", "deploy", "inspect", "inspect"]
    for name in ("model.pt2", "model.pt2.report.json", "model.onnx", "report.json", "report.md"):
        assert (user_files / name).is_file(), name
    assert (user_files / "out" / "manifest.json").is_file()


def test_install_configuration_has_no_deprecation_warnings(recwarn):
    """`pip install .` reads pyproject.toml without setuptools' "license as a table" deprecation."""
    apply = pytest.importorskip("setuptools.config.pyprojecttoml").apply_configuration
    from setuptools.dist import Distribution

    dist = apply(Distribution(), str(README.parent / "pyproject.toml"))
    assert dist.metadata.license_expression == "Apache-2.0"
    assert not [w for w in recwarn if "license" in str(w.message).lower()]
