"""Run a reference model and candidates on the same inputs and build a VerifyReport."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import fx, nn

from reparam.equivalence import (
    Boundaries,
    BoundaryKind,
    CandidateResult,
    Divergence,
    Tolerance,
    block_noise,
    block_outputs,
    compare_outputs,
    compute_metrics,
    float64_copy,
    locate_divergence,
    onnx_block_outputs,
    output_noise,
    run_with_block_hooks,
)
from reparam.equivalence.capture import torch_args
from reparam.equivalence.tolerance import make_tolerance
from reparam.errors import ReparamError
from reparam.verify.quant import quantization_risk
from reparam.verify.report import VerifyReport

Batch = Mapping[str, np.ndarray]


@dataclass
class Candidate:
    """Something to verify: a runner plus what is needed to localize a divergence in it."""

    name: str
    kind: str  # "torch", "pt2", "onnx", "tensorrt" or "runner"
    runner: Any
    module: nn.Module | None = None
    record: Any = None
    path: str | None = None
    tolerance: Tolerance | None = None  # overrides the run's tolerance for this candidate


def _record_of(module: nn.Module, record: Any = None) -> Any:
    # A module from reparameterize() carries its record; any other module needs it passed.
    return record if record is not None else getattr(module, "reparam_record", None)


def make_candidate(obj: Any, *, name: str | None = None, record: Any = None) -> Candidate:
    """Wrap a module, a ConversionResult, a ``.pt2`` / ``.onnx`` / TensorRT engine path, or a Runner.

    ``record`` (a RewriteRecord) lets a module's blocks be localized; a ConversionResult and a
    ``.pt2`` artifact bring their own.
    """
    from reparam import runners
    from reparam.engine.core import ConversionResult

    if isinstance(obj, Candidate):
        return obj
    if isinstance(obj, ConversionResult):
        return Candidate(
            name or "deploy model", "torch", runners.TorchRunner(obj.model), obj.model, obj.record
        )
    if isinstance(obj, nn.Module):
        return Candidate(
            name or "deploy model", "torch", runners.TorchRunner(obj), obj, _record_of(obj, record)
        )
    if isinstance(obj, runners.Runner):
        return Candidate(name or type(obj).__name__, "runner", obj, record=record)
    if isinstance(obj, str | os.PathLike):
        path = Path(obj)
        if not path.is_file():
            raise ReparamError(f"candidate file {str(path)!r} does not exist", hint="check the path")
        kind = runners.artifact_kind(path)
        if kind == "pt2":
            from reparam.artifact import read_artifact

            artifact = read_artifact(path)
            return Candidate(
                name or path.name,
                "pt2",
                runners.TorchRunner(artifact.module),
                artifact.module,
                record if record is not None else artifact.record,
                str(path),
            )
        return Candidate(name or path.name, kind, runners.runner_for(path), record=record, path=str(path))
    raise ReparamError(
        f"cannot verify an object of type {type(obj).__name__}",
        hint="pass an nn.Module, a .pt2/.onnx/.engine path or a reparam Runner",
    )


Tick = Callable[[str, int, int], None]  # (what runs now, batch runs done, batch runs in all)


def _run_all(
    runner: Any, batches: Sequence[Batch], tick: Callable[..., None] | None = None
) -> dict[str, list[np.ndarray]]:
    out: dict[str, list[np.ndarray]] = {}
    for batch in batches:
        feeds = {n: batch[n] for n in runner.input_names if n in batch} or dict(batch)
        for k, v in runner.run(feeds).items():
            out.setdefault(k, []).append(np.asarray(v))
        if tick is not None:
            tick()
    return out


class _Counter:
    """Counts batch runs for a `Tick` callback; ``step(label)`` gives the per-batch callback."""

    def __init__(self, tick: Tick | None, total: int):
        self.tick, self.total, self.done = tick, total, 0

    def step(self, label: str) -> Callable[[], None]:
        def advance(units: int = 1) -> None:
            self.done = min(self.total, self.done + units)
            if self.tick is not None:
                self.tick(label, self.done, self.total)

        if self.tick is not None:
            self.tick(label, self.done, self.total)
        return advance


def _worst_batch(ref: Mapping[str, list[np.ndarray]], cand: Mapping[str, list[np.ndarray]]) -> int:
    """Index of the batch with the largest error (non-finite counts as worst) for localization."""
    scores = []
    for i in range(len(next(iter(ref.values()), []))):
        worst = 0.0
        for name, arrays in ref.items():
            if name in cand and i < len(cand[name]) and cand[name][i].shape == arrays[i].shape:
                m = compute_metrics(arrays[i], cand[name][i])
                worst = max(
                    worst, np.inf if m.nonfinite else (m.scale_rel if np.isfinite(m.scale_rel) else 0.0)
                )
        scores.append(worst)
    return int(np.argmax(scores)) if scores else 0


def _candidate_blocks(cand: Candidate, batch: Batch, input_names: Sequence[str]) -> tuple[dict, str]:
    """Block outputs of a candidate keyed by original block path, or ({}, reason)."""
    if cand.kind == "onnx" and cand.path:
        boundaries = _onnx_boundaries(cand.path)
        if not boundaries:
            return {}, (
                "this ONNX file carries no block-boundary metadata (reparam.boundaries); "
                "export it with reparam to localize divergences"
            )
        return onnx_block_outputs(cand.path, batch, boundaries), ""
    if cand.kind == "tensorrt":
        return {}, "TensorRT engines expose only their outputs; localize with the ONNX file it was built from"
    boundaries: Boundaries | None = getattr(cand.record, "boundaries", None)
    if cand.module is None or not boundaries:
        return {}, "no rewrite record with block boundaries for this candidate"
    if boundaries.kind is BoundaryKind.GRAPH_NODE and not isinstance(cand.module, fx.GraphModule):
        return {}, "the rewrite record names fx nodes but the candidate is not an fx GraphModule"
    return block_outputs(cand.module, boundaries, torch_args(batch, input_names)), ""


def reference_noise(
    model64: nn.Module,
    batches: Sequence[Batch],
    input_names: Sequence[str],
    ref_out: Mapping[str, list[np.ndarray]],
) -> dict[str, float]:
    """Scale-relative error of the fp32 reference outputs against the float64 reference, per output."""
    return output_noise(model64, [torch_args(b, input_names) for b in batches], ref_out)


def _onnx_boundaries(path: str) -> Boundaries:
    from reparam.errors import require

    onnx = require("onnx", "onnx", "Reading ONNX metadata")
    return Boundaries.read_onnx(onnx.load(path, load_external_data=False))


def verify(
    reference: Any,
    candidates: Sequence[Any],
    batches: Sequence[Batch],
    *,
    tolerance: str | Tolerance = "fp32",
    atol: float | dict[str, float] | None = None,
    rtol: float | dict[str, float] | None = None,
    reference_name: str = "reference",
    inputs_info: Mapping[str, Any] | None = None,
    localize: str = "always",
    quant: bool = True,
    tick: Tick | None = None,
) -> VerifyReport:
    """Compare every candidate with ``reference`` on ``batches``.

    ``tick(label, done, total)`` is called as each batch run starts and ends (reference, its float64
    noise run, each candidate), for a progress display.

    ``reference`` and each candidate may be an nn.Module (run in eval mode), a ``.pt2`` / ``.onnx``
    / TensorRT engine path or a Runner; blocks can only be localized when the reference is a module.

    ``localize``: "always" computes per-block errors for every candidate that allows it,
    "on_failure" only for failing ones, "never" skips it.
    """
    if not batches:
        raise ReparamError("no input batches to verify with", hint="pass --inputs DATA.npz or --input-shape")
    tol = make_tolerance(tolerance, atol, rtol)
    cands = [make_candidate(c) for c in candidates]
    if not cands:
        raise ReparamError("nothing to verify: no candidate given", hint="pass --deploy, --onnx or --engine")
    ref_cand = make_candidate(reference, name=reference_name)
    reference = ref_cand.module
    if reference is not None and ref_cand.kind == "torch":
        reference.eval()  # exported (.pt2) modules have no train/eval switch
    input_names = list(ref_cand.runner.input_names)
    uses_noise = any((c.tolerance or tol).profile.noise_multiple for c in cands)
    float64 = reference is not None and ref_cand.kind == "torch" and uses_noise
    counter = _Counter(tick, len(batches) * (1 + len(cands) + float64))
    try:
        ref_out = _run_all(ref_cand.runner, batches, counter.step(f"reference {reference_name}"))
    except ReparamError:
        raise
    except Exception as exc:
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in batches[0].items())
        raise ReparamError(
            f"the reference model failed on the inputs ({shapes}): {type(exc).__name__}: {exc}",
            hint="check --input-shape / --inputs against the model's expected input",
        ) from exc
    report = VerifyReport(reference_name, tol, dict(inputs_info or {}))
    ref_block_cache: dict[tuple, tuple[dict, list[str], dict]] = {}
    model64 = None
    noise: dict[str, float] = {}
    if float64:
        ran = counter.step("reference in float64 (noise floor)")
        model64 = float64_copy(reference)
        try:
            noise = reference_noise(model64, batches, input_names, ref_out) if model64 is not None else {}
        except Exception:  # some ops have no float64 kernel: keep the fixed limits
            model64, noise = None, {}
        ran(len(batches))
        if not noise:
            report.notes.append(
                "the reference could not be run in float64; fixed scale-relative limits apply"
            )

    for k, cand in enumerate(cands, 1):
        start, advance = counter.done, counter.step(f"candidate {k}/{len(cands)} {cand.name}")
        try:
            cand_out = _run_all(cand.runner, batches, advance)
        except ReparamError:
            raise
        except Exception as exc:  # a broken artifact is a verification failure, not a crash
            result = CandidateResult(
                cand.name, cand.kind, problems=[f"failed to run: {type(exc).__name__}: {exc}"]
            )
            report.candidates.append(result)
            advance(start + len(batches) - counter.done)
            continue
        cand_tol = cand.tolerance or tol
        result = compare_outputs(ref_out, cand_out, cand_tol, name=cand.name, kind=cand.kind, noise=noise)
        if localize == "always" or (localize == "on_failure" and not result.passed):
            result.divergence = _localize(
                reference,
                model64,
                cand,
                ref_out,
                cand_out,
                batches,
                input_names,
                cand_tol,
                ref_block_cache,
                not result.passed,
            )
        report.candidates.append(result)

    if quant:
        with_weights = [
            c for c in cands if c.module is not None and c.record is not None and c.kind in ("torch", "pt2")
        ]
        src = min(with_weights, key=lambda c: c.kind != "torch", default=None)  # prefer the in-memory model
        if src is not None and reference is not None:
            report.quant_risk = quantization_risk(reference, src.module, src.record)
    return report


def _localize(
    reference, model64, cand, ref_out, cand_out, batches, input_names, tol, cache, failed
) -> Divergence:
    if reference is None:
        return Divergence(note="blocks can only be localized against a training-form nn.Module reference")
    idx = _worst_batch(ref_out, cand_out)
    batch = batches[idx]
    try:
        cand_blocks, reason = _candidate_blocks(cand, batch, input_names)
    except ReparamError:
        raise
    except Exception as exc:  # localization is a diagnostic; never let it hide the verdict
        return Divergence(note=f"could not localize: {type(exc).__name__}: {exc}")
    if not cand_blocks:
        return Divergence(note=reason or "no block boundary values could be read from this candidate")
    key = (idx, frozenset(cand_blocks))
    if key not in cache:
        args = torch_args(batch, input_names)
        run = run_with_block_hooks(reference, list(cand_blocks), lambda: reference(*args))
        noise = block_noise(model64, args, run.values) if model64 is not None else {}
        cache[key] = (run.values, run.order, noise)
    ref_blocks, order, noise = cache[key]
    return locate_divergence(ref_blocks, cand_blocks, order, tol, output_failed=failed, noise=noise)
