"""Run a reference model and candidates on the same inputs and build a VerifyReport."""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from reparam.errors import ReparamError
from reparam.verify.compare import CandidateResult, Divergence, compare_outputs
from reparam.verify.localize import (
    exported_node_map,
    graph_block_outputs,
    locate_divergence,
    module_block_outputs,
    onnx_block_outputs,
    read_onnx_boundaries,
)
from reparam.verify.metrics import compute_metrics
from reparam.verify.quant import quantization_risk
from reparam.verify.report import VerifyReport
from reparam.verify.tolerance import Tolerance, make_tolerance

Batch = Mapping[str, np.ndarray]

ONNX_SUFFIXES = (".onnx",)
TRT_SUFFIXES = (".engine", ".plan", ".trt")
PT2_SUFFIXES = (".pt2",)


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


def _record_of(module: nn.Module | None, record: Any = None) -> Any:
    return record if record is not None else getattr(module, "reparam_record", None)


def make_candidate(obj: Any, *, name: str | None = None, record: Any = None) -> Candidate:
    """Wrap a module, a ``.pt2`` / ``.onnx`` / TensorRT engine path, or a Runner as a Candidate."""
    from reparam import runners

    if isinstance(obj, Candidate):
        return obj
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
        label = name or path.name
        suffix = path.suffix.lower()
        if suffix in PT2_SUFFIXES:
            from reparam.artifact import load_artifact

            module = load_artifact(path)
            return Candidate(
                label, "pt2", runners.TorchRunner(module), module, _record_of(module, record), str(path)
            )
        if suffix in ONNX_SUFFIXES:
            return Candidate(
                label, "onnx", runners.OnnxRuntimeRunner(str(path)), record=record, path=str(path)
            )
        if suffix in TRT_SUFFIXES:
            return Candidate(
                label, "tensorrt", runners.TensorRTRunner(str(path)), record=record, path=str(path)
            )
        raise ReparamError(
            f"cannot tell what kind of artifact {path.name} is from its suffix {suffix!r}",
            hint="use .pt2 for a deploy artifact, .onnx for ONNX, .engine/.plan for TensorRT",
        )
    raise ReparamError(
        f"cannot verify an object of type {type(obj).__name__}",
        hint="pass an nn.Module, a .pt2/.onnx/.engine path or a reparam Runner",
    )


def _run_all(runner: Any, batches: Sequence[Batch]) -> dict[str, list[np.ndarray]]:
    out: dict[str, list[np.ndarray]] = {}
    for batch in batches:
        feeds = {n: batch[n] for n in runner.input_names if n in batch} or dict(batch)
        for k, v in runner.run(feeds).items():
            out.setdefault(k, []).append(np.asarray(v))
    return out


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
    record = cand.record
    boundaries = dict(getattr(record, "boundaries", {}) or {})
    kind = getattr(record, "boundary_kind", "fx_node")
    if cand.kind == "onnx" and cand.path:
        mapping = _onnx_mapping(cand.path)
        if not mapping:
            return {}, (
                "this ONNX file carries no block-boundary metadata (reparam.boundaries); "
                "export it with reparam to localize divergences"
            )
        return onnx_block_outputs(cand.path, batch, mapping), ""
    if cand.kind == "tensorrt":
        return {}, "TensorRT engines expose only their outputs; localize with the ONNX file it was built from"
    if cand.module is None or not boundaries:
        return {}, "no rewrite record with block boundaries for this candidate"
    if kind == "module":
        values, _ = module_block_outputs(cand.module, list(boundaries.values()), batch, input_names)
        return {p: values[m] for p, m in boundaries.items() if m in values}, ""
    if not isinstance(cand.module, fx.GraphModule):
        return {}, "the rewrite record names fx nodes but the candidate is not an fx GraphModule"
    names = {n.name for n in cand.module.graph.nodes}
    node_map = {p: n for p, n in boundaries.items() if n in names}
    if cand.kind == "pt2" or len(node_map) < len(boundaries):
        traced = exported_node_map(cand.module, boundaries)
        if len(traced) > len(node_map):
            node_map = traced
    return graph_block_outputs(cand.module, node_map, batch, input_names), ""


def _float64_copy(module: nn.Module) -> nn.Module | None:
    """A float64 copy of the reference (None if it cannot be copied or converted)."""
    try:
        return copy.deepcopy(module).double().eval()
    except Exception:
        return None


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, list | tuple):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


def _as_float64(batch: Batch) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, dtype=np.float64) for k, v in batch.items()}


@torch.no_grad()
def reference_noise(
    model64: nn.Module,
    batches: Sequence[Batch],
    input_names: Sequence[str],
    ref_out: Mapping[str, list[np.ndarray]],
) -> dict[str, float]:
    """Scale-relative error of the fp32 reference outputs against the float64 reference, per output."""
    names = list(ref_out)
    outs: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for batch in batches:
        b64 = _as_float64(batch)
        tensors = _tensors(model64(*[torch.from_numpy(b64[n]) for n in input_names]))
        if len(tensors) != len(names):
            return {}
        for n, t in zip(names, tensors):
            outs[n].append(t.numpy())
    noise = {}
    for n in names:
        try:
            noise[n] = compute_metrics(outs[n], ref_out[n]).scale_rel
        except ValueError:
            continue
    return noise


def _onnx_mapping(path: str) -> dict[str, str]:
    from reparam.errors import require

    onnx = require("onnx", "onnx", "Reading ONNX metadata")
    return read_onnx_boundaries(onnx.load(path, load_external_data=False))


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
) -> VerifyReport:
    """Compare every candidate with ``reference`` on ``batches``.

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
    try:
        ref_out = _run_all(ref_cand.runner, batches)
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
    uses_noise = any((c.tolerance or tol).profile.noise_multiple for c in cands)
    if reference is not None and ref_cand.kind == "torch" and uses_noise:
        model64 = _float64_copy(reference)
        try:
            noise = reference_noise(model64, batches, input_names, ref_out) if model64 is not None else {}
        except Exception:  # some ops have no float64 kernel: keep the fixed limits
            model64, noise = None, {}
        if not noise:
            report.notes.append(
                "the reference could not be run in float64; fixed scale-relative limits apply"
            )

    for cand in cands:
        try:
            cand_out = _run_all(cand.runner, batches)
        except ReparamError:
            raise
        except Exception as exc:  # a broken artifact is a verification failure, not a crash
            result = CandidateResult(
                cand.name, cand.kind, problems=[f"failed to run: {type(exc).__name__}: {exc}"]
            )
            report.candidates.append(result)
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
        ref_blocks, order = module_block_outputs(reference, list(cand_blocks), batch, input_names)
        block_noise: dict[str, float] = {}
        if model64 is not None:
            try:
                blocks64, _ = module_block_outputs(
                    model64, list(cand_blocks), _as_float64(batch), input_names
                )
                block_noise = {
                    p: compute_metrics(blocks64[p], ref_blocks[p]).scale_rel
                    for p in ref_blocks
                    if p in blocks64
                }
            except Exception:
                block_noise = {}
        cache[key] = (ref_blocks, order, block_noise)
    ref_blocks, order, block_noise = cache[key]
    return locate_divergence(ref_blocks, cand_blocks, order, tol, output_failed=failed, noise=block_noise)
