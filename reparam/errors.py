"""Error types.

`ReparamError` is the one user-facing error: bad input, unsupported patterns, missing optional
dependencies. It carries a hint saying how to fix the problem; the CLI prints it as one message and
exits non-zero without a traceback. Anything else that escapes is a bug in reparam (`InternalError`
or a plain Python exception) and is shown with its traceback.
"""

from __future__ import annotations

import importlib


class ReparamError(Exception):
    """A problem with the user's input or environment, with a hint on how to fix it."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class MismatchError(ReparamError):
    """A converted or exported artifact does not compute what the reference computes."""

    exit_code = 1


class InternalError(RuntimeError):
    """A bug in reparam itself (an invariant that should always hold did not)."""


def require(module: str, extra: str, purpose: str):
    """Import an optional dependency, or raise a ReparamError saying how to install it."""

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ReparamError(
            f"{purpose} needs the Python package '{module}', which is not installed ({exc}).",
            hint=f"pip install 'reparam[{extra}]'",
        ) from exc


_OOM_MARKERS = ("can't allocate memory", "out of memory", "cannot allocate memory", "bad_alloc")


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _OOM_MARKERS)


def user_error_from(exc: BaseException) -> ReparamError | None:
    """The user-facing error an environment failure stands for, or None when ``exc`` is a bug.

    Running out of memory and file-system refusals (permissions, full disk, a directory where a
    file was expected) are problems with the input or the machine, not with reparam.
    """
    if isinstance(exc, ReparamError):
        return exc
    if _is_out_of_memory(exc):
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        return ReparamError(
            f"not enough memory ({first})",
            hint="use a smaller `input_shape` / `batch_size`, or a machine with more memory",
        )
    if isinstance(exc, OSError) and exc.errno is not None:
        where = f" {str(exc.filename)!r}" if exc.filename else ""
        return ReparamError(
            f"cannot access{where}: {exc.strerror or exc}",
            hint="check the path, its permissions and the free disk space",
        )
    return None
