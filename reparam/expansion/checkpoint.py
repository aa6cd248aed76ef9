"""Self-describing checkpoints of expanded models.

An expanded checkpoint records ``arch = "expanded"`` (a zoo model) and, as its keyword arguments,
the plain zoo architecture, its keyword arguments and the scheme. ``reparam.checkpoint``'s
``load_model`` then rebuilds the plain model, expands it the same way (the structure depends only
on the plain graph and the scheme) and loads the weights strictly, so every command that takes a
checkpoint (convert, export, verify, deploy, expand) takes an expanded one as is. A file never
names code to import, so the expansion of a user's own class keeps
``reparam.expansion:expanded_model`` and its arguments under ``built_with``, for ``arch``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reparam.branching.expand import expand_structure
from reparam.checkpoint import _read, build_model, recorded_architecture, save_checkpoint
from reparam.errors import ReparamError
from reparam.io import atomic_path

EXPANDED_ARCH = "reparam.expansion:expanded_model"
ZOO_EXPANDED = "expanded"


def expanded_model(arch: str, arch_kwargs: Mapping[str, Any] | None = None, scheme: str = "acb") -> nn.Module:
    """The plain architecture ``arch`` expanded with ``scheme`` (fresh branches; weights come from a checkpoint)."""

    model = build_model(arch, arch_kwargs)
    expand_structure(model, scheme, "fresh")
    return model


def expanded_arch(
    arch: str, arch_kwargs: Mapping[str, Any] | None, scheme: str
) -> tuple[str, dict[str, Any]]:
    """``(arch, arch_kwargs)`` that rebuild the expansion of ``arch`` with ``scheme``.

    A zoo architecture becomes the zoo's ``expanded`` model, which a checkpoint may record; a
    user's ``package.module:factory`` needs this module's factory, which only the command line
    (``arch``) may name.
    """
    kwargs = {"arch": arch, "arch_kwargs": dict(arch_kwargs or {}), "scheme": scheme}
    return (EXPANDED_ARCH if ":" in arch else ZOO_EXPANDED), kwargs


def save_model(
    path: str | os.PathLike, model: nn.Module, arch: str, arch_kwargs: Mapping[str, Any] | None
) -> None:
    """Save ``model`` atomically, recording ``arch`` only where a checkpoint may name it.

    A zoo name goes into ``{"arch", "arch_kwargs", "state_dict"}``. Code to import
    (``package.module:factory``) is never what a file asks to build: it is kept under
    ``built_with`` for the reader, and loading needs ``arch`` again.
    """

    if ":" not in arch:
        save_checkpoint(model, path, arch, arch_kwargs)
        return
    payload = {
        "state_dict": model.state_dict(),
        "built_with": {"arch": arch, "arch_kwargs": dict(arch_kwargs or {})},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def save_expanded(
    path: str | os.PathLike,
    model: nn.Module,
    arch: str,
    arch_kwargs: Mapping[str, Any] | None,
    scheme: str,
) -> None:
    """Write ``model`` (expanded from ``arch`` with ``scheme``) as a checkpoint that records how to rebuild it."""
    save_model(path, model, *expanded_arch(arch, arch_kwargs, scheme))


def recorded_arch(path: str | os.PathLike, trust_pickle: bool = False) -> tuple[str | None, dict[str, Any]]:
    """The ``(arch, arch_kwargs)`` a checkpoint records (``(None, {})`` when it records none)."""

    arch, kwargs = recorded_architecture(_read(Path(path), trust_pickle))
    return (arch if isinstance(arch, str) and arch else None), (
        dict(kwargs) if isinstance(kwargs, Mapping) else {}
    )


def resolve_arch(
    path: str | os.PathLike,
    arch: str | None,
    arch_kwargs: Mapping[str, Any] | None,
    trust_pickle: bool = False,
) -> tuple[str, dict[str, Any]]:
    """The architecture ``load_model`` builds for these arguments (the file's only without ``arch``)."""
    if arch:
        return arch, dict(arch_kwargs or {})
    saved_arch, saved_kwargs = recorded_arch(path, trust_pickle)
    if not saved_arch:
        raise ReparamError(
            f"checkpoint {str(path)!r} does not record its architecture",
            hint="pass `arch` (a zoo name, see `reparam zoo`, or 'package.module:factory')",
        )
    return saved_arch, dict(arch_kwargs) if arch_kwargs is not None else saved_kwargs


def load_hint(arch: str, arch_kwargs: Mapping[str, Any] | None, scheme: str) -> str | None:
    """How to load an expanded checkpoint whose architecture a file may not name (None when it may)."""
    name, kwargs = expanded_arch(arch, arch_kwargs, scheme)
    if name == ZOO_EXPANDED:
        return None
    return f"load it with `arch` {name} `arch_kwargs` '{json.dumps(kwargs)}'"
