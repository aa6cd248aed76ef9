"""Atomic file writes: every output is written to a temporary file next to it, then renamed.

Temporary names are ``.<name>.<pid>.<random>.tmp``: a run that was killed leaves such files behind,
and the next run writing the same output removes them once process ``<pid>`` is gone.
`atomic_files` publishes several outputs as one transaction.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from reparam.errors import ReparamError

_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_name(target: Path) -> Path:
    """A fresh temporary path next to ``target`` that names this process."""
    return target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to someone else
        return True
    return True


def clean_stale_temps(target: str | os.PathLike) -> list[Path]:
    """Remove temporary files/directories for ``target`` left by runs that no longer exist."""
    target = Path(target)
    removed: list[Path] = []
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _TEMP.match(p.name)
        if not m or m["name"] != target.name or _pid_alive(int(m["pid"])):
            continue
        with contextlib.suppress(OSError):
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            removed.append(p)
    return removed


def write_error(target: Path, exc: OSError) -> ReparamError:
    """A user-facing error for an output that cannot be written."""
    reason = exc.strerror or type(exc).__name__
    if exc.errno == errno.ENOSPC:
        hint = "free disk space or write somewhere else"
    else:
        hint = "choose an output path in a directory you can write to"
    return ReparamError(f"cannot write {str(target)!r}: {reason}", hint=hint)


def _prepare_target(target: Path) -> None:
    if target.is_dir():
        raise ReparamError(
            f"output {str(target)!r} is a directory", hint=f"give a file path, e.g. {target / 'out'}"
        )
    blocking = next((p for p in target.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ReparamError(
            f"cannot write {str(target)!r}: {str(blocking)!r} is a file, not a directory",
            hint="choose an output path inside a directory",
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(target, exc) from exc
    clean_stale_temps(target)


def _publish_mode(tmp: Path, target: Path) -> None:
    # Temporary files may be created 0600; give the result the mode a plain open() would have.
    mode = target.stat().st_mode & 0o777 if target.exists() else 0o666 & ~_umask()
    if tmp.exists():
        os.chmod(tmp, mode)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; rename it onto ``path`` only on success.

    On any exception the temporary file is removed and ``path`` is left as it was.
    """
    with atomic_files() as tx:
        yield tx.path(path)


class FileTransaction:
    """Outputs staged as temporary files and published together by `commit`.

    A target that existed is moved aside before its new version is renamed in, so a failure half-way
    through the renames puts every earlier target back as it was.
    """

    def __init__(self) -> None:
        self._staged: dict[Path, Path] = {}
        self._removals: set[Path] = set()

    def path(self, target: str | os.PathLike) -> Path:
        """A temporary path to write ``target``'s new content to (created empty, so writable)."""
        target = Path(target)
        if target in self._staged:
            return self._staged[target]
        _prepare_target(target)
        tmp = temp_name(target)
        try:
            tmp.touch(exist_ok=False)
        except OSError as exc:
            raise write_error(target, exc) from exc
        self._staged[target] = tmp
        return tmp

    def discard(self, target: str | os.PathLike) -> None:
        """Drop a staged target: it will not be written."""
        tmp = self._staged.pop(Path(target), None)
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)

    def adopt(self, written: str | os.PathLike, target: str | os.PathLike) -> None:
        """Stage a file already written elsewhere on the same filesystem as ``target``'s new content."""
        try:
            os.replace(written, self.path(target))
        except OSError as exc:
            raise write_error(Path(target), exc) from exc

    def remove(self, target: str | os.PathLike) -> None:
        """Remove ``target`` (when it exists) as part of the commit, e.g. a sidecar that no longer belongs."""
        self._removals.add(Path(target))

    def write_bytes(self, target: str | os.PathLike, data: bytes) -> None:
        tmp = self.path(target)
        try:
            tmp.write_bytes(data)
        except OSError as exc:
            raise write_error(Path(target), exc) from exc

    def write_text(self, target: str | os.PathLike, text: str) -> None:
        self.write_bytes(target, text.encode("utf-8"))

    def commit(self) -> None:
        """Rename every staged file onto its target; on failure restore the targets renamed so far."""
        done: list[tuple[Path, Path | None]] = []
        deleted: list[Path] = []
        target = Path()
        try:
            for target, tmp in self._staged.items():
                _publish_mode(tmp, target)
                backup = None
                if target.is_dir():  # appeared since staging; never move a directory aside
                    raise IsADirectoryError(errno.EISDIR, "is a directory", str(target))
                if target.exists():
                    backup = temp_name(target)
                    os.replace(target, backup)
                done.append((target, backup))
                os.replace(tmp, target)
            for target in self._removals - set(self._staged):
                if target.is_file():
                    backup = temp_name(target)
                    os.replace(target, backup)
                    done.append((target, backup))
                    deleted.append(target)
        except OSError as exc:
            for target, backup in reversed(done):
                with contextlib.suppress(OSError):
                    if target not in deleted:
                        target.unlink(missing_ok=True)
                    if backup:
                        os.replace(backup, target)
            self.abort()
            raise write_error(target, exc) from exc
        for _, backup in done:
            if backup:
                with contextlib.suppress(OSError):
                    backup.unlink()
        self._staged.clear()
        self._removals.clear()

    def abort(self) -> None:
        """Remove every staged temporary file; targets stay as they were."""
        for tmp in self._staged.values():
            with contextlib.suppress(OSError):
                shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        self._staged.clear()
        self._removals.clear()


@contextlib.contextmanager
def atomic_files() -> Iterator[FileTransaction]:
    """Stage outputs with ``tx.path(target)`` / ``tx.write_text``; all are published on success, none on error."""
    tx = FileTransaction()
    try:
        yield tx
        tx.commit()
    except BaseException:
        tx.abort()
        raise


@contextlib.contextmanager
def staging_directory(target: str | os.PathLike) -> Iterator[Path]:
    """A private directory next to ``target`` to write a group of files into; removed afterwards.

    Files written there keep their final names (an ONNX sidecar's relative location stays valid)
    and sit on the target's filesystem, so ``FileTransaction.adopt`` moves them without copying.
    """
    target = Path(target)
    _prepare_target(target)
    folder = temp_name(target)
    try:
        folder.mkdir()
    except OSError as exc:
        raise write_error(target, exc) from exc
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_files() as tx:
        tx.write_bytes(path, data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def check_writable(*paths: str | os.PathLike | None) -> None:
    """Fail now, before any slow work, when one of ``paths`` (None skipped) cannot be written."""
    tx = FileTransaction()
    try:
        for p in paths:
            if p is not None:
                tx.path(p)
    finally:
        tx.abort()


def check_input_file(path: str | os.PathLike, what: str, hint: str = "check the path") -> Path:
    """``path`` as a Path if it is a readable file; else a ReparamError that says what is wrong."""
    p = Path(path)
    if p.is_dir():
        raise ReparamError(f"{what} {str(p)!r} is a directory, not a file", hint=hint)
    if not p.exists():
        raise ReparamError(f"{what} {str(p)!r} does not exist", hint=hint)
    if not p.is_file():
        raise ReparamError(f"{what} {str(p)!r} is not a regular file", hint=hint)
    try:
        with open(p, "rb"):
            pass
    except OSError as exc:
        raise ReparamError(
            f"cannot read {what} {str(p)!r}: {exc.strerror or exc}", hint="check the file's permissions"
        ) from exc
    return p


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
