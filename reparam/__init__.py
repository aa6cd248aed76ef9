"""reparam: deploy re-parameterized CNNs exactly, and prove it."""

from __future__ import annotations

from reparam.errors import InternalError, MismatchError, ReparamError

__version__ = "0.1.0"

__all__ = [
    "DeployOptions",
    "InputSpec",
    "InternalError",
    "Judge",
    "MismatchError",
    "ModelSource",
    "ReparamError",
    "__version__",
    "convert",
    "deploy",
    "expand",
    "reparameterize",
    "verify",
]


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
