"""Error types.

`ReparamError` is the one user-facing error: bad input, unsupported patterns, missing optional
dependencies. It carries a hint saying how to fix the problem; the CLI prints it as one message and
exits non-zero without a traceback. Anything else that escapes is a bug in reparam (`InternalError`
or a plain Python exception) and is shown with its traceback.
"""

from __future__ import annotations


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
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ReparamError(
            f"{purpose} needs the Python package '{module}', which is not installed ({exc}).",
            hint=f"pip install 'reparam[{extra}]'",
        ) from exc
