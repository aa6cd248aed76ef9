"""reparam: deploy re-parameterized CNNs exactly, and prove it."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import sys

from reparam.errors import InternalError, MismatchError, ReparamError

__version__ = "0.1.0"

# The torch releases the test suite passed on: the floor is enforced here (older releases were
# measured to fuse less), the whole range is what the hint installs. pyproject.toml declares the same.
TORCH_REQUIREMENT = "torch>=2.13,<2.16"

__all__ = [
    "DeployOptions",
    "InputSpec",
    "InternalError",
    "Judge",
    "MismatchError",
    "ModelSource",
    "ReparamError",
    "TORCH_REQUIREMENT",
    "__version__",
    "check_torch",
    "convert",
    "deploy",
    "expand",
    "reparameterize",
    "verify",
]


def release(version: str) -> tuple[int, int]:
    """``(major, minor)`` of a version string such as ``2.13.0+cpu`` (``(0, 0)`` if unreadable)."""
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


MIN_TORCH = release(TORCH_REQUIREMENT.split(">=", 1)[1])


def check_torch(version: str | None) -> None:
    """Raise a ReparamError unless ``version`` (None: no torch installed) is at least the floor."""
    hint = f"pip install '{TORCH_REQUIREMENT}'"
    if version is None:
        raise ReparamError("reparam needs torch, which is not installed", hint=hint)
    if release(version) < MIN_TORCH:
        floor = ".".join(map(str, MIN_TORCH))
        raise ReparamError(f"reparam needs torch >= {floor}; this is torch {version}", hint=hint)


def _installed_torch() -> str | None:
    """The torch version, read without importing torch when it is not loaded yet ("" when unknown)."""
    loaded = sys.modules.get("torch")
    if loaded is not None:
        return str(getattr(loaded, "__version__", ""))
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        # importable without package metadata (a source build on the path): torch_compat checks
        # `torch.__version__` when it loads
        return "" if importlib.util.find_spec("torch") is not None else None


def refuse_at_import(error: ReparamError) -> None:
    """Raise ``error`` from an import; left uncaught, it reads as the CLI's errors do.

    An import that fails runs before any ``main`` can catch it (the ``reparam`` script imports
    the package first), so a hook shows it as one ``error:`` line and a hint and exits 2.
    """
    previous = sys.excepthook

    def hook(kind, value, traceback) -> None:
        if value is not error:
            previous(kind, value, traceback)
            return
        sys.stderr.write(f"error: {error.message}\n  hint: {error.hint}\n")
        if not (sys.flags.interactive or hasattr(sys, "ps1")):
            # an uncaught exception exits 1 whatever the hook does; a usage or environment error is 2
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(error.exit_code)

    sys.excepthook = hook
    raise error


def torch_refusal(version: str | None) -> ReparamError | None:
    """The error `check_torch` raises for ``version``, or None when it is supported."""
    try:
        check_torch(version)
    except ReparamError as error:
        return error
    return None


def _check_installed_torch() -> None:
    version = _installed_torch()
    error = torch_refusal(version) if version != "" else None
    if error is not None:
        refuse_at_import(error)


_check_installed_torch()


def __getattr__(name: str):
    # Keep `import reparam` light: the engine (and torch.fx) load on first use.
    if name == "reparameterize":
        from reparam.engine import reparameterize

        return reparameterize
    if name in ("deploy", "verify", "convert", "ModelSource", "InputSpec", "Judge", "DeployOptions"):
        import reparam.api

        return getattr(reparam.api, name)
    if name == "expand":
        from reparam.expansion import expand

        return expand
    raise AttributeError(f"module 'reparam' has no attribute {name!r}")
