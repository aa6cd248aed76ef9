"""`quantize`: a float deploy ONNX -> an explicitly quantized (Q/DQ) int8 ONNX, verified when asked."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from reparam.api.requests import ModelSource
from reparam.engine import convert
from reparam.errors import MismatchError, ReparamError
from reparam.io import atomic_write_text
from reparam.quantize.calib import load_calibration, load_labels, onnx_input_specs
from reparam.quantize.evaluate import verify_int8
from reparam.quantize.qdq import DEFAULT_PERCENTILE, load_onnx
from reparam.quantize.write import quantize
from reparam.verify.quant import quantization_risk


@dataclass(frozen=True)
class QuantizeOptions:
    """Calibration and repair: method, layers kept float, top-1 target and how many may stay float."""

    method: str = "minmax"
    percentile: float = DEFAULT_PERCENTILE
    exclude: Sequence[str] = ()
    batch_size: int = 8
    max_samples: int | None = None
    target: float | None = None
    max_float: int | None = None

    def check(self) -> None:
        if self.max_float is not None and self.max_float < 0:
            raise ReparamError(f"`max_float` must be >= 0, not {self.max_float}", hint="e.g. 3")
        if self.max_float is not None and self.target is None:
            raise ReparamError("`max_float` only applies with `target`", hint="add `target` 0.99")


@dataclass
class QuantizeOutcome:
    """The quantization, its verification on held-out data (if asked), risks, and whether it was written."""

    result: Any  # QuantizeResult
    verification: Any = None  # Int8Verification | None
    risks: list = field(default_factory=list)
    written: Path | None = None
    missed: MismatchError | None = None  # why nothing was written


def _reference(source: ModelSource, onnx: str | os.PathLike, held_out_path: str | os.PathLike) -> tuple:
    """(training model, held-out batches, labels, rewrite record, deploy module) for verification."""
    model = source.load().model
    specs = onnx_input_specs(load_onnx(onnx))
    held_out = load_calibration(held_out_path, specs, batch_size=64)
    example = tuple(torch.from_numpy(held_out[0][s.name][:1]) for s in specs)
    converted = convert(model, example, check=False)
    return model, held_out, load_labels(held_out_path), converted.record, converted.model


def _verify(staged: Path, onnx: str | os.PathLike, source: ModelSource, held_out_path, target) -> tuple:
    model, held_out, labels, record, deploy = _reference(source, onnx, held_out_path)
    risks = quantization_risk(model, deploy, record)
    verification = verify_int8(
        model,
        staged,
        held_out,
        labels=labels,
        float_onnx=onnx,
        target=target,
        reference_name=str(source.checkpoint),
        inputs_info={"source": str(held_out_path), "samples": sum(len(b[next(iter(b))]) for b in held_out)},
    )
    return verification, risks


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def missed_target(result: Any, verification: Any) -> MismatchError:
    """Why the int8 model was not written, and what to try next."""
    repair = result.repair
    if repair is not None and not repair.met:
        return MismatchError(
            f"top-1 target {repair.target:g} not met on the calibration data ({repair.cost()})",
            hint="allow more float layers (`max_float`), lower `target`, or try `method` percentile",
        )
    top1 = _num(verification.metric("int8 Q/DQ ONNX", "top1"))
    if repair is not None:
        margin = repair.target + (1.0 - repair.target) / 2
        return MismatchError(
            f"top-1 target {repair.target:g} was met on the {result.calibration_samples} calibration "
            f"samples but not on the held-out data (agreement {top1}): the calibration data does not "
            "show what int8 does to the held-out data",
            hint=f"calibrate on more, more varied samples (`calib`; the target is judged on them), or "
            f"ask for a margin: `target` {margin:g} keeps more layers float",
        )
    return MismatchError(
        f"the int8 model misses the int8 profile on the held-out data (top-1 agreement {top1})",
        hint=f"keep the most int8-sensitive layers float: add `target` "
        f"{verification.report.tolerance.profile.min_top1 or 0.99:g}",
    )


def _write_report(path: str | os.PathLike, outcome: QuantizeOutcome) -> None:
    payload: dict[str, Any] = {
        "quantization": outcome.result.to_dict(),
        "verification": outcome.verification.to_dict() if outcome.verification is not None else None,
        "quantization_risk": [r.to_dict() for r in outcome.risks],
    }
    atomic_write_text(path, json.dumps(payload, indent=2, default=str) + "\n")


def quantize_onnx(
    onnx: str | os.PathLike,
    output: str | os.PathLike,
    calib: str | os.PathLike,
    *,
    options: QuantizeOptions = QuantizeOptions(),
    reference: ModelSource | None = None,
    eval_data: str | os.PathLike | None = None,
    report: str | os.PathLike | None = None,
) -> QuantizeOutcome:
    """Quantize ``onnx`` on ``calib``; with ``reference`` + ``eval_data`` verify it against the training model.

    ``output`` is written only when the int8 model meets its targets; otherwise
    ``QuantizeOutcome.missed`` says why (``report`` is written either way).
    """
    if (reference is None) != (eval_data is None):
        raise ReparamError(
            "`reference` and `eval_data` go together",
            hint="give the training checkpoint and a held-out .npz, or neither",
        )
    options.check()
    out = Path(output)
    if out.is_dir():
        raise ReparamError(
            f"output {str(out)!r} is a directory", hint="give a file path, e.g. model.int8.onnx"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        staged = tmp / out.name
        result = quantize(
            onnx,
            staged,
            calib,
            method=options.method,
            percentile=options.percentile,
            exclude=list(options.exclude),
            batch_size=options.batch_size,
            max_samples=options.max_samples,
            repair_target=options.target,
            max_float=options.max_float,
        )
        outcome = QuantizeOutcome(result)
        if reference is not None:
            outcome.verification, outcome.risks = _verify(staged, onnx, reference, eval_data, options.target)
        ok = (outcome.verification is None or outcome.verification.passed) and (
            result.repair is None or result.repair.met
        )
        result.path = out if ok else None
        if report:
            _write_report(report, outcome)
        if ok:
            staged.replace(out)
            outcome.written = out
        else:
            outcome.missed = missed_target(result, outcome.verification)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return outcome
