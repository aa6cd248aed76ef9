"""Atomic writes: all or nothing, and the file mode a plain open() would give."""

from __future__ import annotations

import os
import stat

import pytest

from reparam.io import atomic_path, atomic_write_text


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
