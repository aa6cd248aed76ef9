"""`export`: a deploy artifact or checkpoint -> ONNX; an ONNX file -> TensorRT engine."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from reparam.api.requests import InputSpec, ModelSource
from reparam.artifact import read_artifact
from reparam.checkpoint import file_sha256
from reparam.describe import describe
from reparam.engine import convert
from reparam.engine.inputs import make_inputs
from reparam.errors import ReparamError
from reparam.exporters.onnx import convert_onnx_to_fp16, export_onnx, publish_onnx_files
from reparam.exporters.tensorrt import (
    BuildOptions,
    build_engine,
    derive_profiles,
    onnx_input_dims,
    onnx_is_fp16,
    onnx_is_qdq,
)
from reparam.io import atomic_files, check_input_file, staging_directory

Progress = Callable[[str], None]
DIM_NAMES = {"batch": 0, "channels": 1, "height": 2, "width": 3}


def dynamic_axes(names: str | Sequence[str] | None, static: bool = False) -> dict[int, str]:
    """Input axes left dynamic (names or axis numbers) as ``{axis: dim name}``; default: batch."""
    if static:
        return {}
    items = names.split(",") if isinstance(names, str) else list(names or ["batch"])
    axes: dict[int, str] = {}
    for item in items:
        item = str(item).strip().lower()
        if item in DIM_NAMES:
            axes[DIM_NAMES[item]] = item
        elif item.isdigit():
            axes[int(item)] = next((n for n, a in DIM_NAMES.items() if a == int(item)), f"dim{item}")
        elif item:
            raise ReparamError(
                f"`dynamic`: unknown axis {item!r}",
                hint="name axes of the NxCxHxW input: batch, height, width (or axis numbers)",
            )
    return axes


@dataclass(frozen=True)
class OnnxOptions:
    """How to export: axes left dynamic, opset, onnxsim, exporter, an fp16 copy, the training form."""

    dynamic: Sequence[str] | str | None = None  # None: batch only
    static: bool = False
    opset: int | None = None
    simplify: bool = True
    dynamo: bool = True
    fp16: bool = False
    training_form: bool = False


@dataclass
class _Source:
    model: torch.nn.Module
    example: tuple[torch.Tensor, ...]
    metadata: dict[str, Any]
    record: Any  # RewriteRecord | None


def _from_artifact(path: Path, source: ModelSource, inputs: InputSpec, options: OnnxOptions) -> _Source:
    if options.training_form:
        raise ReparamError(
            "a .pt2 artifact holds only the deploy form",
            hint="give the training checkpoint (with `arch` if needed) for `training_form`",
        )
    if source.arch or source.arch_kwargs or source.trust_pickle:
        raise ReparamError(
            "`arch` / `arch_kwargs` / `trust_pickle` apply to checkpoints, not .pt2 artifacts",
            hint="drop them; the artifact carries its own graph",
        )
    desc = describe(path)
    artifact = read_artifact(path)
    if inputs.shape is None and desc.example_shape() is None:
        raise ReparamError(f"{path.name} records no input shape", hint="give `input_shape` NxCxHxW")
    shape, note = inputs.resolve_shape(artifact.module, desc)
    desc.refuse_fixed(shape, set(dynamic_axes(options.dynamic, options.static)) if options.dynamic else set())
    described = {"arch": desc.arch, "arch_kwargs": desc.arch_kwargs, "input_names": desc.input_names}
    if desc.fixed_axes:
        described["fixed_axes"] = desc.fixed_axes
    described |= {"form": "deploy", "notes": [note] if note else []}
    return _Source(artifact.module, (torch.randn(shape),), described, artifact.record)


def _from_checkpoint(source: ModelSource, inputs: InputSpec, options: OnnxOptions, say: Progress) -> _Source:
    say(f"loading {source.checkpoint}")
    loaded = source.load()
    shape, note = inputs.resolve_shape(loaded.model)
    example, _ = make_inputs(loaded.model, None, shape)
    meta = {"arch": loaded.arch, "arch_kwargs": loaded.arch_kwargs, "input_names": ["input"]}
    notes = loaded.notes + ([note] if note else [])
    if options.training_form:
        return _Source(loaded.model, example, meta | {"form": "training", "notes": notes}, None)
    say("converting")
    result = convert(loaded.model, example, check=True)
    return _Source(result.model, example, meta | {"form": "deploy", "notes": notes}, result.record)


@dataclass
class OnnxOutcome:
    """What `export_onnx_file` wrote: the exporter's result (paths final), the fp16 copy, notes."""

    result: Any  # OnnxExportResult
    form: str
    fp16: Path | None
    notes: list[str]


def export_onnx_file(
    source: ModelSource,
    output: str | os.PathLike,
    *,
    inputs: InputSpec = InputSpec(),
    options: OnnxOptions = OnnxOptions(),
    progress: Progress | None = None,
) -> OnnxOutcome:
    """Export a .pt2 deploy artifact, or a checkpoint (converted and checked on the way), to ONNX.

    The model, its fp16 copy and their external-data sidecars appear together or not at all.
    """

    say = progress or (lambda _text: None)
    out = Path(output)
    if out.is_dir():
        raise ReparamError(f"output {str(out)!r} is a directory", hint="give a file path, e.g. model.onnx")
    axes = dynamic_axes(options.dynamic, options.static)
    src = check_input_file(source.checkpoint, "model file", hint="give a .pt2 artifact or a checkpoint")
    if src.suffix.lower() == ".pt2":
        loaded = _from_artifact(src, source, inputs, options)
    else:
        loaded = _from_checkpoint(source, inputs, options, say)
    meta = {"source": src.name, "source_sha256": file_sha256(src)} | loaded.metadata
    notes = meta.pop("notes", [])
    if options.dynamic is None and any(int(f["axis"]) == 0 for f in meta.get("fixed_axes", [])):
        axes.pop(0, None)  # the default dynamic batch, where the model holds the batch at one size
    say(f"exporting {out}")
    fp16 = out.with_name(out.stem + ".fp16.onnx") if options.fp16 else None
    record = loaded.record
    with atomic_files() as tx, staging_directory(out) as stage:
        result = export_onnx(
            loaded.model,
            loaded.example,
            stage / out.name,
            opset=options.opset,
            dynamic_batch=0 in axes,
            dynamic_axes={"input": {a: n for a, n in axes.items() if a != 0}}
            if len(axes) > (0 in axes)
            else None,
            simplify=options.simplify,
            dynamo=options.dynamo,
            metadata=meta,
            boundaries=record.boundaries if record is not None else None,
            passes=record.pass_names() if record is not None else (),
        )
        if fp16 is not None:
            convert_onnx_to_fp16(stage / out.name, stage / fp16.name)
        publish_onnx_files(tx, stage, [out, *([fp16] if fp16 else [])])
    result.path = out
    result.sidecar = out.parent / result.sidecar.name if result.sidecar else None
    return OnnxOutcome(result, meta["form"], fp16, notes)


@dataclass(frozen=True)
class EngineOptions:
    """A TensorRT build: precision, profile shapes (None: derived), limits, cache, calibration."""

    precision: str | None = None  # None (fp32), "fp16" or "int8"
    input_shape: Sequence[int] | None = None
    min_shape: Sequence[int] | None = None
    opt_shape: Sequence[int] | None = None
    max_shape: Sequence[int] | None = None
    max_batch: int | None = None
    workspace_mb: int | None = None
    timing_cache: str | os.PathLike | None = None
    calib: str | os.PathLike | None = None
    progress: bool = True

    def shapes(self) -> dict[str, tuple[int, ...] | None]:
        named = ("input_shape", "min_shape", "opt_shape", "max_shape")
        return {k: tuple(getattr(self, k)) if getattr(self, k) else None for k in named}


def build_engine_file(onnx: str | os.PathLike, output: str | os.PathLike, options: EngineOptions) -> Any:
    """Build a TensorRT engine from ``onnx``; everything that needs no GPU is checked first."""

    src = check_input_file(onnx, "ONNX file", hint="export one with `reparam export onnx`")
    BuildOptions(
        precision=options.precision,
        workspace_mb=options.workspace_mb,
        calib=options.calib,
        onnx_is_fp16=onnx_is_fp16(src),
        onnx_is_qdq=onnx_is_qdq(src),
    ).validate()
    derive_profiles(onnx_input_dims(src), max_batch=options.max_batch, **options.shapes())
    return build_engine(
        src,
        output,
        precision=options.precision,
        max_batch=options.max_batch,
        workspace_mb=options.workspace_mb,
        timing_cache=options.timing_cache,
        calib=options.calib,
        progress=options.progress,
        **options.shapes(),
    )
