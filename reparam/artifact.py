"""The deploy artifact: a ``torch.export`` program (``.pt2``) plus the conversion report as JSON.

Loading it needs neither the training code nor unpickling of user objects: ``torch.export.load``
reads a serialized graph and its weights. reparam's metadata (report, rewrite record, anything the
caller adds) travels inside the file as ``reparam.json`` and the report is also written next to it
as ``<path>.report.json``. All files are written atomically.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reparam import __version__
from reparam.dynamic_shapes import FixedAxis, export_with_free_axes, fixed_note, fixed_reason
from reparam.engine.core import ConversionResult
from reparam.engine.record import RewriteRecord
from reparam.errors import ReparamError
from reparam.io import FileTransaction, atomic_files, check_input_file
from reparam.tensors import as_args
from reparam.torch_compat import export_graphs_unprinted, program_serde_memoized

METADATA_FILE = "reparam.json"


def report_path(path: str | os.PathLike) -> Path:
    """Where the report JSON of the artifact at ``path`` is written."""
    p = Path(path)
    return p.with_name(p.name + ".report.json")


@dataclass
class ExportedDeploy:
    """The deploy model as a torch.export program, and the input axes it holds at one size."""

    program: torch.export.ExportedProgram
    fixed: list[FixedAxis]
    static_reason: str = ""

    @property
    def dynamic_batch(self) -> bool:
        return not any(f.axis == 0 for f in self.fixed)


def export_program(model: nn.Module, example_inputs: Any) -> ExportedDeploy:
    """``torch.export`` the model with batch and spatial axes free wherever the model allows."""
    args = as_args(example_inputs)
    model = model.eval()
    try:
        with export_graphs_unprinted():
            program, _, fixed, static_reason = export_with_free_axes(
                lambda example, shapes: torch.export.export(model, example, dynamic_shapes=shapes),
                args,
                reference=model,
            )
    except Exception as exc:
        raise ReparamError(
            f"torch.export could not capture the deploy model: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}",
            hint="the model's forward must be exportable (no data-dependent Python control flow)",
        ) from exc
    return ExportedDeploy(program, fixed, static_reason)


@dataclass
class DeployArtifact:
    """A loaded ``.pt2``: the callable module, the rewrite record (None if not recorded), the embedded JSON."""

    module: nn.Module
    record: RewriteRecord | None
    metadata: dict[str, Any]


def serialize_artifact(
    model: nn.Module | ConversionResult,
    example_inputs: Any,
    *,
    report: Any = None,
    record: RewriteRecord | None = None,
    metadata: dict[str, Any] | None = None,
) -> tuple[bytes, dict[str, Any] | None]:
    """The ``.pt2`` bytes of ``model`` and the report as a dict (see `save_artifact`), which also
    names the input axes the artifact holds at one size (``fixed_axes``)."""

    if isinstance(model, ConversionResult):
        report = model.report if report is None else report
        record = model.record if record is None else record
        model = model.model

    exported = export_program(model, example_inputs)
    report_dict = report.to_dict() if hasattr(report, "to_dict") else report
    if isinstance(report_dict, dict) and exported.fixed:
        # the deploy program's own capture can hold more axes than the conversion's did
        note = fixed_note(exported.fixed, exported.static_reason).replace("deploy model", "deploy artifact")
        report_dict = {
            **report_dict,
            "fixed_axes": [f.to_dict() for f in exported.fixed],
            "notes": [*report_dict.get("notes", []), note],
        }
    embedded = {
        "reparam_version": __version__,
        "dynamic_batch": exported.dynamic_batch,
        "fixed_axes": [f.to_dict() for f in exported.fixed],
        "fixed_axes_reason": fixed_reason(exported.static_reason) if exported.fixed else "",
        "metadata": dict(metadata or {}),
        "report": report_dict,
        "record": record.to_dict() if record is not None else None,
    }
    buf = io.BytesIO()
    with program_serde_memoized():
        torch.export.save(
            exported.program, buf, extra_files={METADATA_FILE: json.dumps(embedded, default=str)}
        )
    return buf.getvalue(), report_dict


def stage_artifact(
    tx: FileTransaction,
    model: nn.Module | ConversionResult,
    example_inputs: Any,
    path: str | os.PathLike,
    *,
    report: Any = None,
    record: RewriteRecord | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Stage ``path`` and ``<path>.report.json`` in the transaction ``tx``; returns the path."""
    target = Path(path)
    data, report_dict = serialize_artifact(
        model, example_inputs, report=report, record=record, metadata=metadata
    )
    tx.write_bytes(target, data)
    if report_dict is not None:
        tx.write_text(report_path(target), json.dumps(report_dict, indent=2, default=str))
    return target


def save_artifact(
    model: nn.Module | ConversionResult,
    example_inputs: Any,
    path: str | os.PathLike,
    *,
    report: Any = None,
    record: RewriteRecord | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Export ``model`` to ``path`` (``.pt2``) and write ``<path>.report.json``; returns the path.

    ``model`` is a module or the result of ``reparam.convert`` (which brings its report and record).
    ``report`` is a ConversionReport (or anything with ``to_dict()``, or a dict); ``record`` the
    rewrite record, whose block boundaries let a divergence in the artifact be localized. The
    program embeds ``{"metadata", "report", "record", "dynamic_batch", "fixed_axes",
    "fixed_axes_reason"}`` as ``reparam.json``: batch and spatial axes stay free wherever the model
    allows, and the axes it holds at one size are named with the reason. Both files are published
    together.
    """
    with atomic_files() as tx:
        return stage_artifact(
            tx, model, example_inputs, path, report=report, record=record, metadata=metadata
        )


def refuse_pickled_payloads(path: Path) -> None:
    """Refuse archives whose payloads would be unpickled (torch.export.load unpickles those)."""
    unsafe = []
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            if not any(n.endswith("/archive_format") for n in names):
                raise ReparamError(
                    f"{str(path)!r} is a zip archive but not a torch.export program (no archive_format entry)",
                    hint="give a .pt2 written by `reparam convert` / torch.export.save",
                )
            for name in names:
                if name.endswith("_config.json"):
                    config = json.loads(z.read(name)).get("config", {})
                    unsafe += [
                        f"{name}:{k}"
                        for k, v in config.items()
                        if isinstance(v, dict) and v.get("use_pickle")
                    ]
                elif name.endswith(".pt"):
                    try:
                        torch.load(io.BytesIO(z.read(name)), map_location="cpu", weights_only=True)
                    except Exception:
                        unsafe.append(name)
    except (zipfile.BadZipFile, OSError, ValueError, KeyError) as exc:
        raise ReparamError(
            f"cannot read deploy artifact {str(path)!r}: {type(exc).__name__}: {exc}",
            hint="the file must be a .pt2 written by `reparam convert`; it may be truncated",
        ) from exc
    if unsafe:
        raise ReparamError(
            f"deploy artifact {str(path)!r} holds pickled payloads ({', '.join(unsafe[:3])}); loading it would "
            "execute code from the file",
            hint="re-export the model with `reparam convert`, which stores plain tensors only",
        )


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def read_artifact(path: str | os.PathLike) -> DeployArtifact:
    """Load a ``.pt2`` deploy artifact: module, rewrite record and metadata (no pickled user code)."""
    p = check_input_file(path, "deploy artifact")
    refuse_pickled_payloads(p)
    extra = {METADATA_FILE: ""}
    try:
        # it logs a traceback before raising; ours is one line
        with _quiet_logger("torch.export"), program_serde_memoized():
            program = torch.export.load(p, extra_files=extra)
    except Exception as exc:
        raise ReparamError(
            f"cannot load deploy artifact {str(p)!r}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}",
            hint="the file must be a .pt2 written by `reparam convert` / torch.export.save; "
            "it may be truncated",
        ) from exc
    meta: dict[str, Any] = {}
    if extra.get(METADATA_FILE):
        try:
            meta = json.loads(extra[METADATA_FILE])
        except json.JSONDecodeError:
            meta = {}
    record = RewriteRecord.from_dict(meta["record"]) if isinstance(meta.get("record"), dict) else None
    return DeployArtifact(program.module(), record, meta)


def load_artifact(path: str | os.PathLike) -> nn.Module:
    """The callable module of a ``.pt2`` deploy artifact (see :func:`read_artifact`)."""
    return read_artifact(path).module
