"""`convert`: training checkpoint -> deploy artifact (.pt2) or a plain-architecture checkpoint."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reparam.api.requests import InputSpec, ModelSource
from reparam.artifact import report_path, stage_artifact
from reparam.checkpoint import build_model, file_sha256
from reparam.describe import Description, describe
from reparam.engine import convert as convert_model
from reparam.engine.base import select_passes
from reparam.engine.inputs import make_inputs
from reparam.errors import ReparamError
from reparam.expansion.plain import write_plain_checkpoint
from reparam.io import atomic_files, check_writable

Progress = Callable[[str], None]


@dataclass(frozen=True)
class PlainTarget:
    """Write the fused weights as a checkpoint of this plain architecture instead of a .pt2."""

    arch: str
    arch_kwargs: Mapping[str, Any] | None = None


@dataclass
class ConvertOutcome:
    """What `convert` did: the conversion, the files written, and notes for the user."""

    result: Any  # ConversionResult
    output: Path
    files: list[Path]
    notes: list[str] = field(default_factory=list)
    weights: Any = None  # PlainWeights, when written as a plain checkpoint
    description: Description | None = None  # of the written .pt2


def check_convert_output(out: Path, plain: PlainTarget | None) -> None:
    """The output is a file path whose suffix matches what will be written."""
    if out.is_dir():
        raise ReparamError(f"output {str(out)!r} is a directory", hint="give a file path, e.g. model.pt2")
    if plain is not None:
        if out.suffix.lower() in (".pt2", ".onnx"):
            raise ReparamError(
                f"with `as_arch` the output is a {plain.arch} checkpoint, not a {out.suffix} file",
                hint=f"name it {out.with_suffix('.pth')}",
            )
        return
    if out.suffix.lower() != ".pt2":
        hint = (
            f"convert writes a .pt2; for ONNX export {out.with_suffix('.pt2')} afterwards "
            "(`reparam export onnx`) or deploy"
            if out.suffix.lower() == ".onnx"
            else f"name the output {out.with_suffix('.pt2')}, or give `as_arch` to write a checkpoint"
        )
        raise ReparamError(
            f"output {str(out)!r} must end in .pt2 (a torch.export deploy artifact)", hint=hint
        )


def artifact_metadata(model: Any, source: ModelSource, shape: tuple[int, ...]) -> dict[str, Any]:
    """What a deploy artifact records about itself (read back by `reparam.describe`)."""
    recorded = getattr(model, "reparam_source", None) or {}
    return {
        "arch": recorded.get("arch", source.arch),
        "arch_kwargs": recorded.get("arch_kwargs"),
        "checkpoint": str(source.checkpoint),
        "checkpoint_sha256": file_sha256(source.checkpoint),
        "input_names": ["input"],
        "input_shape": list(shape),
        "precision": "fp32",
    }


def convert(
    source: ModelSource,
    output: str | os.PathLike,
    *,
    inputs: InputSpec = InputSpec(),
    passes: Sequence[str] | str | None = None,
    skip: Sequence[str] = (),
    check: bool = True,
    as_arch: PlainTarget | None = None,
    report: str | os.PathLike | None = None,
    progress: Progress | None = None,
) -> ConvertOutcome:
    """Convert ``source`` and write ``output`` (a .pt2 with its report, or a plain checkpoint).

    Everything is validated before the model loads; the output, its report and ``report`` are
    written together or not at all.
    """
    say = progress or (lambda _text: None)
    out = Path(output)
    check_convert_output(out, as_arch)
    check_writable(out, None if as_arch else report_path(out), report)
    select_passes(passes, skip)  # bad names fail before the (slower) model loading
    plain = build_model(as_arch.arch, as_arch.arch_kwargs, param="as_arch") if as_arch else None
    say(f"loading {source.checkpoint}")
    loaded = source.load()
    shape, note = inputs.resolve_shape(loaded.model)
    notes = loaded.notes + ([note] if note else [])
    say("converting")
    result = convert_model(loaded.model, passes=passes, skip=list(skip), check=check, input_shape=shape)
    example, _ = make_inputs(loaded.model, None, shape)
    say(f"writing {out}")
    weights = None
    with atomic_files() as tx:
        if as_arch:
            weights = write_plain_checkpoint(
                tx.path(out), loaded.model, result, plain, as_arch.arch, as_arch.arch_kwargs, example
            )
        else:
            metadata = artifact_metadata(loaded.model, source, shape)
            stage_artifact(
                tx, result.model, example, out, report=result.report, record=result.record, metadata=metadata
            )
        if report:
            tx.write_text(report, result.report.to_json())
    files = [out] if as_arch else [out, report_path(out)]
    files += [Path(report)] if report else []
    described = None if as_arch else describe(out)
    return ConvertOutcome(result, out, files, notes, weights, described)
