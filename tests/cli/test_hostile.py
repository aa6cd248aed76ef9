"""Hostile and careless inputs to every subcommand: one clear error, the right exit code, nothing written.

Each case asserts: exit code 2 (1 only for a real numeric mismatch), stderr is exactly one
``error:`` line and at most one ``hint:`` line (no traceback, no log noise), no code from a file ran
(a marker file its payload would create stays absent), and the output directory - which holds
pre-existing outputs - is byte-for-byte as it was, with no temporary files left behind.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from reparam.checkpoint import save_checkpoint
from reparam.cli.main import main
from reparam.numerics import randomize_batchnorm
from reparam.zoo import create_model

ARCH, KW = "acb_resnet18", {"num_classes": 5, "width": 0.25}
PROGRESS = re.compile(r"^\[ *\d+\.\ds\] ")  # status lines of slow steps; not part of the error


class _Payload:
    """Unpickling this creates the file ``path`` (what a malicious checkpoint would do)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


@dataclass
class Workspace:
    root: Path
    ckpt: Path
    other_ckpt: Path
    pt2: Path
    onnx: Path
    out: Path
    marker: Path

    def file(self, name: str, data: bytes | str) -> Path:
        p = self.root / "in" / name
        p.write_bytes(data if isinstance(data, bytes) else data.encode())
        return p


def _truncated(path: Path, name: str, ws: Workspace) -> Path:
    return ws.file(name, path.read_bytes()[: path.stat().st_size // 2])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny checkpoint, a second one with other weights, and the .pt2 / .onnx of the first."""
    root = tmp_path_factory.mktemp("hostile")
    (root / "in").mkdir()
    torch.manual_seed(0)
    model = randomize_batchnorm(create_model(ARCH, **KW)).eval()
    save_checkpoint(model, root / "in" / "ckpt.pth", ARCH, KW)
    randomize_batchnorm(model, seed=1)
    save_checkpoint(model, root / "in" / "other.pth", ARCH, KW)
    pt2, onnx = root / "in" / "model.pt2", root / "in" / "model.onnx"
    shape = ["--input-shape", "1x3x32x32"]
    assert main(["convert", str(root / "in" / "ckpt.pth"), "-o", str(pt2), *shape]) == 0
    assert main(["export", "onnx", str(pt2), "-o", str(onnx), "--no-simplify"]) == 0
    return root


@pytest.fixture
def ws(files, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("model.pt2", "model.pt2.report.json", "model.onnx", "report.json"):
        (out / name).write_bytes(f"pre-existing {name}\n".encode())
    (out / "deploy").mkdir()
    (out / "deploy" / "manifest.json").write_text("{}\n")
    root = files
    (tmp_path / "in").mkdir()
    return Workspace(
        root=tmp_path,
        ckpt=root / "in" / "ckpt.pth",
        other_ckpt=root / "in" / "other.pth",
        pt2=root / "in" / "model.pt2",
        onnx=root / "in" / "model.onnx",
        out=out,
        marker=tmp_path / "MARKER",
    )


def _snapshot(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(directory.rglob("*"))
    }


def _assert_one_error(err: str) -> None:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip() and not PROGRESS.match(line)]
    assert lines and lines[0].startswith("error: "), err
    assert len(lines) <= 2, err
    if len(lines) == 2:
        assert lines[1].startswith("  hint: "), err


def _run_hostile(ws: Workspace, capfd, argv: list[str], code: int = 2) -> str:
    before = _snapshot(ws.out)
    capfd.readouterr()
    rc = main([str(a) for a in argv])
    _, err = capfd.readouterr()
    assert rc == code, err
    _assert_one_error(err)
    assert not ws.marker.exists(), "a file made reparam execute its code"
    assert _snapshot(ws.out) == before, "outputs were created, modified or left behind"
    return err


def _convert(ws: Workspace, ckpt: Path, *extra) -> list:
    return ["convert", ckpt, "-o", ws.out / "model.pt2", "--input-shape", "1x3x32x32", *extra]


# -- files that would run code ----------------------------------------------------------------------
def _pickled(ws: Workspace, name: str = "evil.pth") -> Path:
    p = ws.root / "in" / name
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": _Payload(ws.marker)}, p)
    return p


@pytest.mark.parametrize(
    "command",
    [
        lambda ws, p: _convert(ws, p),
        lambda ws, p: ["verify", "--reference", p, "--report", ws.out / "report.json"],
        lambda ws, p: ["export", "onnx", p, "-o", ws.out / "model.onnx"],
        lambda ws, p: ["deploy", p, "-o", ws.out / "deploy", "--force", "--input-shape", "1x3x32x32"],
    ],
    ids=["convert", "verify", "export", "deploy"],
)
def test_pickled_payload_is_refused(ws, capfd, command):
    err = _run_hostile(ws, capfd, command(ws, _pickled(ws)))
    assert "pickled code" in err and "--trust-pickle" in err


def test_pickled_payload_named_pt2_is_refused(ws, capfd):
    evil = _pickled(ws, "evil.pt2")
    _run_hostile(ws, capfd, ["inspect", evil])
    _run_hostile(ws, capfd, ["verify", "--reference", ws.ckpt, "--deploy", evil])
    _run_hostile(ws, capfd, ["export", "onnx", evil, "-o", ws.out / "model.onnx"])


def test_pickled_object_array_in_npz_is_refused(ws, capfd):
    evil = ws.root / "in" / "evil.npz"
    np.savez(evil, input=np.array([_Payload(ws.marker)], dtype=object))
    _run_hostile(ws, capfd, ["verify", "--reference", ws.ckpt, "--inputs", evil])


def test_pickled_payload_through_python_m_reparam(ws):
    """The same refusal in a fresh interpreter: one line on stderr, exit 2, no marker."""
    evil = _pickled(ws)
    before = _snapshot(ws.out)
    proc = subprocess.run(
        [sys.executable, "-m", "reparam", "convert", str(evil), "-o", str(ws.out / "model.pt2")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    _assert_one_error(proc.stderr)
    assert not ws.marker.exists() and _snapshot(ws.out) == before


# -- code named in a file's metadata ---------------------------------------------------------------
def _code_arch(ws: Workspace) -> dict:
    return {"arch": "subprocess:check_call", "arch_kwargs": {"args": ["touch", str(ws.marker)]}}


def test_arch_naming_code_in_pth_is_refused(ws, capfd):
    p = ws.root / "in" / "code.pth"
    torch.save({**_code_arch(ws), "state_dict": torch.load(ws.ckpt)["state_dict"]}, p)
    _run_hostile(ws, capfd, _convert(ws, p))
    _run_hostile(ws, capfd, ["verify", "--reference", p, "--report", ws.out / "report.json"])


def test_arch_naming_code_in_safetensors_metadata_is_refused(ws, capfd):
    from safetensors.torch import save_file

    code = _code_arch(ws)
    p = ws.root / "in" / "code.safetensors"
    state = {k: v.contiguous() for k, v in torch.load(ws.ckpt)["state_dict"].items()}
    save_file(state, str(p), metadata={"arch": code["arch"], "arch_kwargs": json.dumps(code["arch_kwargs"])})
    _run_hostile(ws, capfd, _convert(ws, p))


# -- damaged files -----------------------------------------------------------------------------------
def test_truncated_files(ws, capfd):
    _run_hostile(ws, capfd, _convert(ws, _truncated(ws.ckpt, "t.pth", ws)))
    _run_hostile(ws, capfd, ["export", "onnx", _truncated(ws.pt2, "t.pt2", ws), "-o", ws.out / "model.onnx"])
    t_onnx = _truncated(ws.onnx, "t.onnx", ws)
    _run_hostile(ws, capfd, ["inspect", t_onnx])
    _run_hostile(
        ws, capfd, ["verify", "--reference", ws.ckpt, "--onnx", t_onnx, "--input-shape", "1x3x32x32"]
    )
    npz = ws.root / "in" / "val.npz"
    np.savez(npz, input=np.zeros((64, 3, 32, 32), np.float32))
    _run_hostile(ws, capfd, ["verify", "--reference", ws.ckpt, "--inputs", _truncated(npz, "t.npz", ws)])


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_zero_byte_checkpoint(ws, capfd, suffix):
    _run_hostile(ws, capfd, _convert(ws, ws.file(f"empty{suffix}", b"")))


def test_zero_byte_artifacts_and_inputs(ws, capfd):
    _run_hostile(ws, capfd, ["inspect", ws.file("empty.pt2", b"")])
    _run_hostile(ws, capfd, ["inspect", ws.file("empty.onnx", b"")])
    _run_hostile(ws, capfd, ["export", "trt", ws.file("empty2.onnx", b""), "-o", ws.out / "m.engine"])
    err = _run_hostile(ws, capfd, ["verify", "--reference", ws.ckpt, "--inputs", ws.file("e.npz", b"")])
    assert "empty" in err


def test_directories_where_files_are_expected(ws, capfd):
    d = ws.root / "in" / "dir.pth"
    d.mkdir()
    err = _run_hostile(ws, capfd, _convert(ws, d))
    assert "is a directory" in err and "does not exist" not in err
    err = _run_hostile(ws, capfd, ["verify", "--reference", ws.ckpt, "--onnx", d])
    assert "is a directory" in err
    err = _run_hostile(ws, capfd, ["verify", "--reference", ws.ckpt, "--inputs", d])
    assert "is a directory" in err
    assert "is a directory" in _run_hostile(ws, capfd, ["inspect", d])
    assert "is a directory" in _run_hostile(ws, capfd, ["export", "onnx", d, "-o", ws.out / "model.onnx"])


def test_text_file_named_npz(ws, capfd):
    text = ws.file("val.npz", "0.1, 0.2, 0.3\n")
    err = _run_hostile(ws, capfd, ["verify", "--reference", ws.ckpt, "--inputs", text])
    assert "not an .npz file" in err and "pickled" not in err


def test_npy_given_as_inputs(ws, capfd):
    npy = ws.root / "in" / "val.npy"
    np.save(npy, np.zeros((2, 3, 32, 32), np.float32))
    err = _run_hostile(ws, capfd, ["verify", "--reference", ws.ckpt, "--inputs", npy])
    assert ".npy" in err and "savez" in err


def test_huge_input_shape(ws, capfd):
    huge = "1x3x100000x100000"
    _run_hostile(ws, capfd, ["convert", ws.ckpt, "-o", ws.out / "model.pt2", "--input-shape", huge])
    _run_hostile(ws, capfd, ["verify", "--reference", ws.ckpt, "--input-shape", huge])


# -- outputs that cannot be written ------------------------------------------------------------------
def test_output_below_a_regular_file(ws, capfd):
    blocker = ws.out / "report.json"  # a pre-existing file used as if it were a directory
    err = _run_hostile(ws, capfd, ["convert", ws.ckpt, "-o", blocker / "model.pt2"])
    assert "not a directory" in err
    # the .pt2 could be written, the --report cannot: neither is
    _run_hostile(ws, capfd, [*_convert(ws, ws.ckpt), "--report", blocker / "r.json"])
    _run_hostile(ws, capfd, ["verify", "--reference", ws.ckpt, "--report", blocker / "r.json"])


@pytest.fixture
def read_only_dir(ws):
    d = ws.out / "ro"
    d.mkdir()
    d.chmod(0o555)
    if os.access(d, os.W_OK):  # root ignores directory permissions
        d.chmod(0o755)
        pytest.skip("directory permissions are not enforced for this user (root)")
    yield d
    d.chmod(0o755)


def test_read_only_output_directory(ws, capfd, read_only_dir):
    ro = read_only_dir
    _run_hostile(ws, capfd, ["convert", ws.ckpt, "-o", ro / "model.pt2"])
    _run_hostile(ws, capfd, [*_convert(ws, ws.ckpt), "--report", ro / "r.json"])
    _run_hostile(ws, capfd, ["verify", "--reference", ws.ckpt, "--report", ro / "r.json"])
    _run_hostile(ws, capfd, ["export", "onnx", ws.pt2, "-o", ro / "model.onnx"])
    _run_hostile(ws, capfd, ["deploy", ws.ckpt, "-o", ro / "deploy", "--input-shape", "1x3x32x32"])


# -- a real mismatch is exit 1, with the report written ----------------------------------------------
def test_real_mismatch_exits_1(ws, capfd):
    capfd.readouterr()
    report = ws.root / "mismatch.json"
    argv = ["verify", "--reference", ws.other_ckpt, "--deploy", ws.pt2, "--report", report]
    assert main([str(a) for a in argv]) == 1
    out, err = capfd.readouterr()
    assert "Traceback" not in err and "FAIL" in out
    assert json.loads(report.read_text())["passed"] is False
