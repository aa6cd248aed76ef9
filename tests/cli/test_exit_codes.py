"""Exit codes of the `reparam` command: 0 pass, 1 mismatch, 2 usage or input error, 3 a bug in reparam."""

from __future__ import annotations

import errno

import pytest

import reparam.cli.commands.zoo as zoo_command
from reparam.cli.main import EXIT_BUG, main
from reparam.errors import MismatchError, ReparamError


def _raising(exc: BaseException):
    def run(args):
        raise exc

    return run


@pytest.mark.parametrize(
    ("exc", "code", "needle"),
    [
        (MismatchError("outputs differ", hint="see the report"), 1, "outputs differ"),
        (ReparamError("bad input", hint="fix it"), 2, "bad input"),
        (MemoryError(), 2, "not enough memory"),
        (RuntimeError("DefaultCPUAllocator: can't allocate memory: 1 TB"), 2, "not enough memory"),
        (PermissionError(errno.EACCES, "Permission denied", "/x/y.pt2"), 2, "Permission denied"),
        (OSError(errno.ENOSPC, "No space left on device", "/x/y.pt2"), 2, "No space left"),
        (ValueError("an invariant broke"), EXIT_BUG, "bug in reparam"),
        (KeyError("k"), EXIT_BUG, "bug in reparam"),
    ],
)
def test_exception_becomes_one_line_and_an_exit_code(monkeypatch, capsys, exc, code, needle):
    monkeypatch.setattr(zoo_command, "run", _raising(exc))
    assert main(["zoo"]) == code
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert lines[0].startswith("error: ") and needle in lines[0], err
    assert len(lines) <= 2 and all(line.startswith("  hint: ") for line in lines[1:]), err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv", [["--debug", "zoo"], ["zoo", "--debug"]])
def test_debug_shows_the_traceback(monkeypatch, capsys, argv):
    monkeypatch.setattr(zoo_command, "run", _raising(ValueError("an invariant broke")))
    assert main(argv) == EXIT_BUG
    err = capsys.readouterr().err
    assert "Traceback" in err and "ValueError: an invariant broke" in err and "bug in reparam" in err


def test_usage_error_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["convert"])
    assert info.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("error: ") and len(lines) == 2 and lines[1].startswith("  hint: ")
