"""Slim a checkpoint and write its outputs (checkpoint, structure, report JSON/markdown/PNG) together."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from reparam.checkpoint import load_model, save_checkpoint
from reparam.errors import ReparamError
from reparam.io import atomic_path
from reparam.slim.core import SlimResult, slim_model
from reparam.slim.report import to_markdown, to_png
from reparam.zoo.scalenet import dump_structure


def output_paths(output: str | os.PathLike, structure: str | None, report: str | None) -> dict[str, Path]:
    """Where each output goes: the checkpoint, its structure file and the report's JSON/markdown/PNG."""
    out = Path(output)
    rep = Path(report) if report else out.with_name(f"{out.stem}.report.json")
    paths = {
        "checkpoint": out,
        "structure": Path(structure) if structure else out.with_name(f"{out.stem}.structure.json"),
        "report": rep,
        "markdown": rep.with_suffix(".md"),
        "figure": rep.with_suffix(".png"),
    }
    if len(set(paths.values())) != len(paths):
        raise ReparamError(
            f"two slim outputs would share a path: {sorted(map(str, paths.values()))}",
            hint="give -o, `structure` and `report` distinct names",
        )
    for p in paths.values():
        if p.is_dir():
            raise ReparamError(f"output {str(p)!r} is a directory", hint="give a file path")
    return paths


def _recorded_arch(path: Path) -> tuple[str | None, dict | None]:
    """The arch / arch_kwargs a reparam checkpoint records (tensors-only read; None if unreadable)."""
    if path.suffix == ".safetensors":
        return None, None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # load_model reports an unreadable file properly
        return None, None
    if not isinstance(obj, Mapping):
        return None, None
    arch = obj.get("arch") if isinstance(obj.get("arch"), str) else None
    kwargs = dict(obj["arch_kwargs"]) if isinstance(obj.get("arch_kwargs"), Mapping) else None
    return arch, kwargs


def load_seed(
    checkpoint: str | os.PathLike,
    arch: str | None,
    arch_kwargs: Mapping[str, Any] | None,
    trust_pickle: bool = False,
) -> tuple[torch.nn.Module, str, dict[str, Any]]:
    """The seed model with the arch and kwargs that rebuild it; a checkpoint without BN statistics is refused."""
    rec_arch, rec_kwargs = _recorded_arch(Path(checkpoint))
    # As in load_model: an architecture the caller names does not take the file's kwargs.
    recorded = rec_kwargs if arch is None else None
    if arch is None and rec_arch and ":" in rec_arch:
        raise ReparamError(
            f"checkpoint {str(checkpoint)!r} names the architecture {rec_arch!r}, code outside the zoo",
            hint="pass `arch` yourself if you trust that code; slim does not import a module a file names",
        )
    arch = arch or rec_arch
    if not arch:
        raise ReparamError(
            f"checkpoint {str(checkpoint)!r} does not record its architecture",
            hint="pass `arch` (a zoo model name such as scalenet50)",
        )
    kwargs = dict(arch_kwargs) if arch_kwargs is not None else dict(recorded or {})
    try:
        model = load_model(checkpoint, arch, kwargs, trust_pickle=trust_pickle)
    except ReparamError as exc:
        if "running_mean" in exc.message or "running_var" in exc.message:
            raise ReparamError(
                f"checkpoint {str(checkpoint)!r} has no BatchNorm statistics (running_mean/running_var)",
                hint="slim needs a trained seed saved with model.state_dict(), buffers included",
            ) from exc
        raise
    return model, arch, kwargs


def write_outputs(result: SlimResult, paths: Mapping[str, Path]) -> None:
    """Write every output to a temporary file first; rename them into place only when all are written."""
    figure = to_png(result.report)  # before any file exists: a missing matplotlib writes nothing
    payloads = {
        "structure": dump_structure(result.structure).encode(),
        "report": (json.dumps(result.report, indent=2) + "\n").encode(),
        "markdown": to_markdown(result.report).encode(),
        "figure": figure,
    }
    with contextlib.ExitStack() as stack:
        tmp = {k: stack.enter_context(atomic_path(p)) for k, p in paths.items()}
        save_checkpoint(result.model, tmp["checkpoint"], result.arch, result.arch_kwargs)
        for key, data in payloads.items():
            tmp[key].write_bytes(data)


def slim_checkpoint(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    budget: float | str,
    *,
    arch: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    structure_path: str | None = None,
    report_path: str | None = None,
    input_shape: tuple[int, ...] | None = None,
    reinit: bool = False,
    trust_pickle: bool = False,
) -> tuple[SlimResult, dict[str, Path]]:
    """Slim a seed checkpoint to ``budget`` MACs and write all outputs (or, on any error, none)."""
    paths = output_paths(output, structure_path, report_path)
    model, arch, kwargs = load_seed(checkpoint, arch, arch_kwargs, trust_pickle)
    result = slim_model(model, arch, kwargs, budget, input_shape=input_shape, reinit=reinit)
    result.report["checkpoint"] = str(checkpoint)
    write_outputs(result, paths)
    return result, paths
