"""Library entry points: convert, verify and deploy a training-form ONNX file."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reparam.engine.report import CheckSummary, ConversionReport
from reparam.errors import ReparamError
from reparam.onnx_reparam.check import OnnxCheck, check_onnx
from reparam.onnx_reparam.graph import _onnx
from reparam.onnx_reparam.rewrite import rewrite_graph
from reparam.profile import ModelStats

Inputs = Sequence[Mapping[str, np.ndarray]] | None
MIN_OPSET = 13


@dataclass
class OnnxConversion:
    """The outcome of :func:`convert_onnx`: where the file went (None when not written) and the report."""

    output: Path | None
    report: ConversionReport
    check: OnnxCheck | None

    @property
    def passed(self) -> bool:
        return self.check is None or self.check.passed


def load_onnx(path: str | os.PathLike) -> Any:
    """The model at ``path`` with its external data, or a ReparamError saying why not."""
    onnx = _onnx()
    p = Path(path)
    if not p.is_file():
        raise ReparamError(f"ONNX file {str(p)!r} does not exist", hint="check the path")
    try:
        model = onnx.load(str(p))
    except Exception as exc:
        raise ReparamError(
            f"cannot read {p.name} as ONNX: {type(exc).__name__}: {str(exc)[:200]}",
            hint="the file may be truncated, or its external data file missing",
        ) from exc
    if model.ir_version == 0 or not model.graph.output:
        raise ReparamError(f"{p.name} is not an ONNX model", hint="the file may be empty or truncated")
    return model


def onnx_stats(model: Any) -> ModelStats:
    """Parameters held in initializers and node counts by op type."""
    params = sum(int(np.prod(i.dims)) for i in model.graph.initializer)
    return ModelStats(params, None, dict(Counter(n.op_type for n in model.graph.node)))


def _opset(model: Any) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _input_shapes(model: Any) -> list[list[int | str]]:
    """Each graph input's dims, free ones by name ("?" when unnamed)."""
    inits = {i.name for i in model.graph.initializer}
    return [
        [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in i.type.tensor_type.shape.dim
        ]
        for i in model.graph.input
        if i.name not in inits
    ]


def provenance(source: Path, model: Any, report: ConversionReport) -> dict[str, str]:
    """The ``reparam.*`` metadata of a converted file: version, source file, what was fused."""
    from reparam import __version__
    from reparam.checkpoint import file_sha256

    fused = [{"node": e.fused, "from": e.sources} for e in report.fusions]
    absorbed = Counter(op for e in report.fusions for op in _ops_of(e.detail))
    summary = f"{len(report.fusions)} fused nodes from " + (
        ", ".join(f"{n} {op}" for op, n in absorbed.most_common()) or "nothing"
    )
    return {
        "reparam.fused_summary": summary,
        "reparam.version": __version__,
        "reparam.form": "deploy",
        "reparam.passes": json.dumps(report.passes),
        "reparam.precision": "fp32",
        "reparam.input_shapes": json.dumps(_input_shapes(model)),
        "reparam.exporter": "onnx_reparam",
        "reparam.source_onnx": json.dumps(source.name),
        "reparam.source_sha256": file_sha256(source),
        "reparam.fused": json.dumps(fused),
        "reparam.left_alone": json.dumps([x.to_dict() for x in report.left_alone]),
    }


def _ops_of(detail: str) -> list[str]:
    """Op types absorbed by one fusion, read back from its detail ("8 nodes (Add: 2, Conv: 3, ...)")."""
    inside = detail[detail.find("(") + 1 : detail.find(")")]
    out = []
    for part in inside.split(", "):
        op, _, count = part.partition(": ")
        out += [op] * int(count) if count.isdigit() else []
    return out


def _summary(check: OnnxCheck) -> CheckSummary:
    outputs = list(check.result.outputs.values())
    worst = max(outputs, key=lambda o: o.metrics.scale_rel, default=None)
    m = worst.metrics if worst else None
    return CheckSummary(
        passed=check.passed,
        max_abs_error=m.max_abs if m else float("nan"),
        relative_error=m.scale_rel if m else float("nan"),
        tolerance=(worst.limit if worst and worst.limit is not None else float("nan")),
        max_abs_output=m.ref_max_abs if m else float("nan"),
        input_shapes=[s for shapes in check.input_shapes for s in shapes.values()],
        dtype="float32",
        diverging_blocks=[check.first_diverging] if check.first_diverging else [],
    )


def _set_metadata(model: Any, meta: Mapping[str, str]) -> None:
    from reparam.exporters.onnx.export import _set_metadata as set_props

    set_props(model, meta)


def rewrite_onnx(path: str | os.PathLike) -> tuple[Any, ConversionReport]:
    """Read ``path`` and rewrite it in memory; returns the deploy model and its report (no check)."""
    source = Path(path)
    started = time.perf_counter()
    model = load_onnx(source)
    report = ConversionReport(passes=["onnx"], tracing="onnx graph")
    if _opset(model) < MIN_OPSET:
        report.warnings.append(f"opset {_opset(model)} is older than {MIN_OPSET}, the oldest one tested")
    report.before = onnx_stats(model)
    rewritten = rewrite_graph(model)
    report.fusions, report.left_alone = rewritten.fusions, rewritten.left_alone
    report.after = onnx_stats(model)
    _set_metadata(model, provenance(source, model, report))
    report.seconds["rewrite"] = time.perf_counter() - started
    return model, report


def convert_onnx(
    path: str | os.PathLike,
    output: str | os.PathLike,
    *,
    tolerance: Any = "fp32",
    inputs: Inputs = None,
    seed: int = 0,
    check: bool = True,
) -> OnnxConversion:
    """Fold and merge the training-form ONNX file at ``path`` into ``output``, checked in ONNX Runtime.

    The check runs both files on ``inputs`` (a list of ``{input name: array}``) or on seeded random
    inputs over every free axis, and judges them with the ``tolerance`` profile. ``output`` and its
    report (``<output>.report.json``) are written only when the check passes (or ``check=False``);
    otherwise ``OnnxConversion.output`` is None and the report names the first diverging tensor.
    """
    from reparam.artifact import report_path
    from reparam.exporters.onnx.save import publish_onnx_files, save_onnx
    from reparam.io import atomic_files, staging_directory

    out = Path(output)
    if out.resolve() == Path(path).resolve():
        raise ReparamError(
            "the output would overwrite the input", hint="write the deploy file to another path"
        )
    if out.is_dir():
        raise ReparamError(f"output {str(out)!r} is a directory", hint="give a file path, e.g. deploy.onnx")
    model, report = rewrite_onnx(path)
    with staging_directory(out) as folder:
        staged = folder / out.name
        save_onnx(model, staged)
        result = OnnxConversion(None, report, None)
        if check:
            started = time.perf_counter()
            result.check = check_onnx(path, staged, tolerance=tolerance, inputs=inputs, seed=seed)
            report.check = _summary(result.check)
            report.seconds["check"] = time.perf_counter() - started
        report.seconds["total"] = sum(v for k, v in report.seconds.items() if k in ("rewrite", "check"))
        if not result.passed:
            return result
        with atomic_files() as tx:
            publish_onnx_files(tx, folder, [out])
            tx.write_text(report_path(out), report.to_json())
        result.output = out
    return result


def verify_onnx(
    candidate: str | os.PathLike,
    reference: str | os.PathLike,
    *,
    tolerance: Any = "fp32",
    inputs: Inputs = None,
    seed: int = 0,
) -> OnnxCheck:
    """Compare the ONNX file ``candidate`` with ``reference`` in ONNX Runtime (see :func:`check_onnx`)."""
    return check_onnx(reference, candidate, tolerance=tolerance, inputs=inputs, seed=seed)
