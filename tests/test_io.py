"""Atomic writes: all or nothing, and the file mode a plain open() would give."""

from __future__ import annotations

import os
import stat

import pytest

from reparam.errors import ReparamError
from reparam.io import (
    FileTransaction,
    atomic_files,
    atomic_path,
    atomic_write_text,
    check_input_file,
    check_writable,
)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_new_file_gets_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").read_text() == "x"
    assert _mode(tmp_path / "a.txt") == 0o644


def test_existing_file_keeps_its_mode_and_failure_leaves_it(tmp_path):
    target = tmp_path / "b.txt"
    target.write_text("old")
    os.chmod(target, 0o640)
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and _mode(target) == 0o640
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("interrupted")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.txt"]


def test_transaction_publishes_all_or_nothing(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("old a")
    with pytest.raises(RuntimeError), atomic_files() as tx:
        tx.write_text(a, "new a")
        tx.write_text(b, "new b")
        raise RuntimeError("a later step failed")
    assert a.read_text() == "old a" and not b.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
    with atomic_files() as tx:
        tx.write_text(a, "new a")
        tx.write_text(b, "new b")
    assert a.read_text() == "new a" and b.read_text() == "new b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]


def test_failed_rename_restores_the_targets_published_before_it(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b"
    a.write_text("old a")
    tx = FileTransaction()
    tx.write_text(a, "new a")
    tx.write_text(b, "new b")
    b.mkdir()  # appears after staging: renaming onto a non-empty directory fails
    (b / "x").write_text("x")
    with pytest.raises(ReparamError, match="cannot write"):
        tx.commit()
    assert a.read_text() == "old a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b"]


def test_stale_temps_of_dead_processes_are_removed(tmp_path):
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    target = tmp_path / "m.pt2"
    stale = tmp_path / f".m.pt2.{dead.pid}.0123abcd.tmp"
    live = tmp_path / f".m.pt2.{os.getpid()}.0123abcd.tmp"  # a run still in progress
    other = tmp_path / f".other.pt2.{dead.pid}.0123abcd.tmp"  # another output's
    stale_dir = tmp_path / f".m.pt2.{dead.pid}.89abcdef.tmp"
    for p in (stale, live, other):
        p.write_text("partial")
    stale_dir.mkdir()
    (stale_dir / "model.onnx").write_text("partial")
    atomic_write_text(target, "done")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.pt2", live.name, other.name])


def test_check_writable_and_check_input_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ReparamError, match="is a file, not a directory"):
        check_writable(tmp_path / "f" / "out.json")
    check_writable(tmp_path / "new" / "out.json", None)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["f", "new"]
    with pytest.raises(ReparamError, match="is a directory"):
        check_input_file(tmp_path, "checkpoint")
    with pytest.raises(ReparamError, match="does not exist"):
        check_input_file(tmp_path / "nope.pth", "checkpoint")


def test_a_transaction_adopts_written_files_and_removes_stale_ones(tmp_path):
    from reparam.io import atomic_files, staging_directory

    (tmp_path / "m.onnx").write_text("old model")
    (tmp_path / "m.onnx.data").write_text("old sidecar")
    with pytest.raises(RuntimeError), atomic_files() as tx, staging_directory(tmp_path / "m.onnx") as stage:
        (stage / "m.onnx").write_text("new model")
        tx.adopt(stage / "m.onnx", tmp_path / "m.onnx")
        tx.remove(tmp_path / "m.onnx.data")
        raise RuntimeError("fails before the commit")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    assert (tmp_path / "m.onnx").read_text() == "old model"
    with atomic_files() as tx, staging_directory(tmp_path / "m.onnx") as stage:
        (stage / "m.onnx").write_text("new model")
        tx.adopt(stage / "m.onnx", tmp_path / "m.onnx")
        tx.remove(tmp_path / "m.onnx.data")
        tx.remove(tmp_path / "never-there")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    assert (tmp_path / "m.onnx").read_text() == "new model"
