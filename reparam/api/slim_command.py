"""`slim`: ScaleNet's data-driven neuron allocation of a seed checkpoint under a MAC budget."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from reparam.api.requests import InputSpec, ModelSource
from reparam.slim import slim_checkpoint


def slim(
    source: ModelSource,
    output: str | os.PathLike,
    macs: float | str,
    *,
    structure: str | os.PathLike | None = None,
    report: str | os.PathLike | None = None,
    inputs: InputSpec = InputSpec(),
    reinit: bool = False,
) -> tuple[Any, dict[str, Path]]:
    """Slim ``source`` to the ``macs`` budget; the result and the paths of every file written."""
    return slim_checkpoint(
        source.checkpoint,
        output,
        macs,
        arch=source.arch,
        arch_kwargs=source.arch_kwargs,
        structure_path=None if structure is None else str(structure),
        report_path=None if report is None else str(report),
        input_shape=inputs.shape,
        reinit=reinit,
        trust_pickle=source.trust_pickle,
    )
