"""Self-describing checkpoints of expanded models.

An expanded checkpoint records ``arch = "reparam.expansion:expanded_model"`` and, as its keyword
arguments, the plain architecture, its keyword arguments and the scheme. ``reparam.checkpoint``'s
``load_model`` then rebuilds the plain model, expands it the same way (the structure depends only
on the plain graph and the scheme) and loads the weights strictly, so every command that takes a
checkpoint (convert, export, verify, deploy, expand) takes an expanded one as is.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from reparam.errors import ReparamError

EXPANDED_ARCH = "reparam.expansion:expanded_model"


def expanded_model(arch: str, arch_kwargs: Mapping[str, Any] | None = None, scheme: str = "acb") -> nn.Module:
    """The plain architecture ``arch`` expanded with ``scheme`` (fresh branches; weights come from a checkpoint)."""
    from reparam.checkpoint import build_model
    from reparam.expansion.core import expand_structure

    model = build_model(arch, arch_kwargs)
    expand_structure(model, scheme, "fresh")
    return model


def expanded_arch_kwargs(arch: str, arch_kwargs: Mapping[str, Any] | None, scheme: str) -> dict[str, Any]:
    """The ``arch_kwargs`` entry of an expanded checkpoint."""
    return {"arch": arch, "arch_kwargs": dict(arch_kwargs or {}), "scheme": scheme}


def save_expanded(
    path: str | os.PathLike,
    model: nn.Module,
    arch: str,
    arch_kwargs: Mapping[str, Any] | None,
    scheme: str,
) -> None:
    """Write ``model`` (expanded from ``arch`` with ``scheme``) as a self-describing checkpoint, atomically."""
    from reparam.checkpoint import save_checkpoint

    save_checkpoint(path, model, EXPANDED_ARCH, expanded_arch_kwargs(arch, arch_kwargs, scheme))


def recorded_arch(path: str | os.PathLike, trust_pickle: bool = False) -> tuple[str | None, dict[str, Any]]:
    """The ``(arch, arch_kwargs)`` a checkpoint records (``(None, {})`` when it records none)."""
    from reparam.checkpoint import _read

    obj = _read(Path(path), trust_pickle)
    if not isinstance(obj, Mapping):
        return None, {}
    arch, kwargs = obj.get("arch"), obj.get("arch_kwargs")
    return (arch if isinstance(arch, str) and arch else None), (
        dict(kwargs) if isinstance(kwargs, Mapping) else {}
    )


def resolve_arch(
    path: str | os.PathLike,
    arch: str | None,
    arch_kwargs: Mapping[str, Any] | None,
    trust_pickle: bool = False,
) -> tuple[str, dict[str, Any]]:
    """The architecture ``load_model`` builds for these arguments: given values win over recorded ones."""
    saved_arch, saved_kwargs = recorded_arch(path, trust_pickle)
    arch = arch or saved_arch
    if not arch:
        raise ReparamError(
            f"checkpoint {str(path)!r} does not record its architecture",
            hint="pass --arch (a zoo name, see `reparam zoo`, or 'package.module:factory')",
        )
    return arch, dict(arch_kwargs) if arch_kwargs is not None else saved_kwargs
