"""reparam: deploy re-parameterized CNNs exactly, and prove it."""

from __future__ import annotations

from reparam.errors import InternalError, MismatchError, ReparamError

__version__ = "0.1.0"

__all__ = [
    "InternalError",
    "MismatchError",
    "ReparamError",
    "__version__",
    "deploy",
    "expand",
    "reparameterize",
]


def __getattr__(name: str):
    # Keep `import reparam` light: the engine (and torch.fx) load on first use.
    if name == "reparameterize":
        from reparam.engine import reparameterize

        return reparameterize
    if name == "deploy":
        from reparam.pipeline import deploy

        return deploy
    if name == "expand":
        from reparam.expansion import expand

        return expand
    raise AttributeError(f"module 'reparam' has no attribute {name!r}")
