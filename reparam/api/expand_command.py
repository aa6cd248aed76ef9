"""`expand`: a plain checkpoint -> its training form with parallel branches (ACB, RepVGG, DBB)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reparam.api.requests import InputSpec, ModelSource
from reparam.errors import ReparamError
from reparam.expansion import INITS, SCHEMES, expand
from reparam.expansion.checkpoint import load_hint, resolve_arch, save_expanded
from reparam.io import atomic_files


@dataclass
class ExpandOutcome:
    """What `expand_checkpoint` wrote: the expansion report, the architecture, how to load it."""

    report: Any  # ExpansionReport
    output: Path
    arch: str
    load_hint: str | None
    notes: list[str] = field(default_factory=list)


def expand_checkpoint(
    source: ModelSource,
    output: str | os.PathLike,
    *,
    scheme: str = "acb",
    init: str = "zero",
    inputs: InputSpec = InputSpec(),
    report: str | os.PathLike | None = None,
) -> ExpandOutcome:
    """Expand every eligible conv of ``source`` by ``scheme`` and save the training-form checkpoint."""
    out = Path(output)
    if out.is_dir():
        raise ReparamError(f"output {str(out)!r} is a directory", hint="give a file path, e.g. train.pth")
    if scheme not in SCHEMES:
        raise ReparamError(
            f"unknown expansion scheme {scheme!r}", hint=f"choose one of: {', '.join(SCHEMES)}"
        )
    if init not in INITS:
        raise ReparamError(f"unknown init {init!r}", hint=f"choose one of: {', '.join(INITS)}")
    arch, arch_kwargs = resolve_arch(source.checkpoint, source.arch, source.arch_kwargs, source.trust_pickle)
    loaded = source.load()
    shape, note = inputs.resolve_shape(loaded.model)
    expanded, expansion = expand(loaded.model, scheme, init=init, input_shape=shape)
    with atomic_files() as tx:
        save_expanded(tx.path(out), expanded, arch, arch_kwargs, scheme)
        if report:
            tx.write_text(report, json.dumps(expansion.to_dict(), indent=2))
    notes = loaded.notes + ([note] if note else [])
    return ExpandOutcome(expansion, out, arch, load_hint(arch, arch_kwargs, scheme), notes)
