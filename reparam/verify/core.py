"""Run a reference and candidates on the same inputs, batch by batch, and build a VerifyReport.

The loop streams: batches run through the reference and every candidate a chunk at a time and are
judged at once (:class:`~reparam.equivalence.OutputJudge`), so memory stays flat in the number of
inputs. Only
the batch where a candidate's error is largest is kept, to measure the reference's fp32 noise
there (when the fixed limit is exceeded) and to localize the first diverging block.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from torch import fx, nn

from reparam import runners
from reparam.artifact import read_artifact
from reparam.engine.core import ConversionResult
from reparam.equivalence import (
    Boundaries,
    BoundaryKind,
    CandidateResult,
    Divergence,
    OutputJudge,
    Tolerance,
    block_outputs,
    locate_divergence,
    onnx_block_outputs,
)
from reparam.equivalence.capture import torch_args
from reparam.equivalence.tolerance import make_tolerance
from reparam.errors import ReparamError, require
from reparam.memory import release_freed_memory
from reparam.verify.quant import quantization_risk
from reparam.verify.reference import (
    BlockReference,
    ComputedReference,
    LiveReference,
    SavedReference,
    run_batch,
)
from reparam.verify.report import VerifyReport

Batch = Mapping[str, np.ndarray]
Tick = Callable[[str, int, int], None]  # (what runs now, batch runs done, batch runs in all)
LOCALIZE = ("always", "auto", "on_failure", "never")
CHUNK_BATCHES = 16  # batches each runtime runs in turn (see _stream)


class Candidate:
    """Something to verify: a runner plus what is needed to localize a divergence in it.

    A candidate made from a file opens its runtime (the loaded program, the ONNX Runtime session)
    on first use of ``runner`` or ``module``. `verify` releases a runtime it opened, and a module
    handed over with ``disposable=True``, once the candidate is judged: the files of a deploy
    directory are then not held in memory together.
    """

    def __init__(
        self,
        name: str,
        kind: str,  # "torch", "pt2", "onnx", "tensorrt" or "runner"
        runner: Any = None,
        module: nn.Module | None = None,
        record: Any = None,
        path: str | None = None,
        tolerance: Tolerance | None = None,  # overrides the run's tolerance for this candidate
        *,
        opener: Callable[[], tuple[Any, nn.Module | None, Any]] | None = None,
        disposable: bool = False,
    ):
        self.name, self.kind, self.path, self.tolerance = name, kind, path, tolerance
        self._runner, self._module, self._record = runner, module, record
        self._opener = opener  # (runner, module, record) of a file, read again after a release
        self.disposable = disposable

    @property
    def is_open(self) -> bool:
        return self._runner is not None

    def open(self) -> None:
        """Open the file's runtime if it is not open (a candidate without a file always is)."""
        if self._runner is None and self._opener is not None:
            self._runner, self._module, record = self._opener()
            self._record = self._record if self._record is not None else record

    def release(self) -> Callable[[], bool]:
        """Drop the runtime (a file can open it again) or the module handed over as disposable.

        Returns whether anything let go still holds memory (then only a cyclic collection frees
        it). A module the candidate owns has its tensors freed here: a ``GraphModule`` is in a
        reference cycle with its graph, and would otherwise keep its weights until a collection.
        """
        if self._opener is None and not self.disposable:
            return lambda: False
        runner, module = self._runner, self._module
        self._runner = self._module = None
        refs = (
            [weakref.ref(t) for t in (*module.parameters(), *module.buffers())] if module is not None else []
        )
        if module is not None:
            _free_tensors(module)
        if runner is not None:
            try:
                refs.append(weakref.ref(runner))
            except TypeError:  # a runtime that cannot be watched: assume it waits for a collection
                return lambda: True
        del runner, module
        return lambda: any(ref() is not None for ref in refs)

    @property
    def runner(self) -> Any:
        self.open()
        return self._runner

    @runner.setter
    def runner(self, value: Any) -> None:
        self._runner = value

    @property
    def module(self) -> nn.Module | None:
        self.open()
        return self._module

    @property
    def record(self) -> Any:
        if self._record is None and self.kind == "pt2":
            self.open()  # a .pt2 carries its own record
        return self._record

    @record.setter
    def record(self, value: Any) -> None:
        self._record = value


def _free_tensors(module: nn.Module) -> None:
    """Drop every parameter and buffer of a module no one else uses any more."""
    for sub in module.modules():
        sub._parameters.clear()
        sub._buffers.clear()


def _record_of(module: nn.Module, record: Any = None) -> Any:
    # A module from reparameterize() carries its record; any other module needs it passed.
    return record if record is not None else getattr(module, "reparam_record", None)


def _open_pt2(path: Path) -> tuple[Any, nn.Module, Any]:
    artifact = read_artifact(path)
    runner = runners.TorchRunner(artifact.module)
    runner.path = str(path)  # messages name the file, not the loaded module's class
    return runner, artifact.module, artifact.record


def _open_file(path: Path) -> tuple[Any, None, None]:
    return runners.runner_for(path), None, None


def _file_candidate(path: Path, name: str | None, record: Any) -> Candidate:
    if not path.is_file():
        raise ReparamError(f"candidate file {str(path)!r} does not exist", hint="check the path")
    kind = runners.artifact_kind(path)
    opener = partial(_open_pt2 if kind == "pt2" else _open_file, path)
    return Candidate(name or path.name, kind, record=record, path=str(path), opener=opener)


def make_candidate(obj: Any, *, name: str | None = None, record: Any = None) -> Candidate:
    """Wrap a module, a ConversionResult, a ``.pt2`` / ``.onnx`` / TensorRT engine path, or a Runner.

    ``record`` (a RewriteRecord) lets a module's blocks be localized; a ConversionResult and a
    ``.pt2`` artifact bring their own.
    """
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
        return _file_candidate(Path(obj), name, record)
    raise ReparamError(
        f"cannot verify an object of type {type(obj).__name__}",
        hint="pass an nn.Module, a .pt2/.onnx/.engine path or a reparam Runner",
    )


def _onnx_boundaries(path: str) -> Boundaries:
    onnx = require("onnx", "onnx", "Reading ONNX metadata")
    return Boundaries.read_onnx(onnx.load(path, load_external_data=False))


def candidate_blocks(cand: Candidate, batch: Batch, input_names: Sequence[str]) -> tuple[dict, str]:
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


class _Counter:
    """Counts batch runs for a `Tick` callback."""

    def __init__(self, tick: Tick | None, total: int):
        self.tick, self.total, self.done = tick, total, 0

    def start(self, label: str) -> None:
        if self.tick is not None:
            self.tick(label, self.done, self.total)

    def advance(self, label: str) -> None:
        self.done = min(self.total, self.done + 1) if self.total else self.done + 1
        if self.tick is not None:
            self.tick(label, self.done, self.total)


@dataclass
class _Worst:
    """The batch where a candidate's error was largest: kept to measure noise and localize on."""

    badness: float = -1.0
    index: int = 0
    batch: Batch | None = None
    reference: Mapping[str, np.ndarray] | None = None


class _Lane:
    """One candidate's state in the loop: its judge, its worst batch, or why it could not run."""

    def __init__(self, cand: Candidate, tolerance: Tolerance, label: str, opened_here: bool):
        self.cand, self.label = cand, label
        self.judge = OutputJudge(cand.tolerance or tolerance, name=cand.name, kind=cand.kind)
        self.worst = _Worst()
        self.failure: str | None = None
        self.opened_here = opened_here  # a runtime the verifier opens, the verifier releases
        self.result: CandidateResult | None = None

    def step(self, index: int, batch: Batch, reference: Mapping[str, np.ndarray]) -> None:
        if self.failure is not None:
            return
        try:
            out = run_batch(self.cand.runner, batch)
        except ReparamError:
            raise
        except Exception as exc:  # a broken artifact is a verification failure, not a crash
            self.failure = f"failed to run: {type(exc).__name__}: {exc}"
            return
        badness = self.judge.add(reference, out)
        if badness > self.worst.badness:
            self.worst = _Worst(badness, index, batch, reference)

    def finish(self, reference: Any, localize: str, others_follow: bool) -> None:
        """Judge the candidate (while its runtime is still open), then release what may go; its
        memory goes back to the system where another candidate is opened next."""
        self.result = _finish(reference, self, localize)
        if self.opened_here or self.cand.disposable:
            still_held = self.cand.release()
            if others_follow:
                release_freed_memory(collect=still_held())


_END = object()


def _chunks(batches: Iterable[Batch], size: int) -> Iterator[tuple[list[Batch], bool]]:
    """``size`` batches at a time, each chunk with whether it is the last (one batch read ahead)."""
    it = iter(batches)
    ahead = next(it, _END)
    while ahead is not _END:
        chunk = [ahead]
        chunk.extend(islice(it, size - 1))
        ahead = next(it, _END)
        yield chunk, ahead is _END


def _stream(
    reference: Any, lanes: list[_Lane], batches: Iterable[Batch], counter: _Counter, localize: str
) -> int:
    """Run every batch through the reference and each candidate; returns the number of batches.

    Batches go in chunks of ``CHUNK_BATCHES``, each runtime running a whole chunk in turn: one
    runtime's worker threads do not slow the next one down batch after batch, and memory holds
    one chunk whatever the number of inputs. In the last chunk each candidate is judged as soon as
    it has run, and released: only one opened file is held at a time there (for inputs that fit in
    one chunk, throughout).
    """
    count = 0
    for chunk, last in _chunks(batches, CHUNK_BATCHES):
        label = f"reference {reference.name}"
        ref_outs = []
        for index, batch in enumerate(chunk, count):
            counter.start(label)
            ref_outs.append(reference.outputs(index, batch))
            counter.advance(label)
        for lane in lanes:
            for index, (batch, ref_out) in enumerate(zip(chunk, ref_outs), count):
                counter.start(lane.label)
                lane.step(index, batch, ref_out)
                counter.advance(lane.label)
            if last:
                lane.finish(reference, localize, others_follow=lane is not lanes[-1])
        count += len(chunk)
    return count


def _needs_blocks(localize: str, lane: _Lane, result: CandidateResult) -> bool:
    if lane.failure is not None or localize == "never":
        return False
    if localize == "always" or not result.passed:
        return True
    limit = lane.judge.tolerance.profile.max_scale_rel
    # "auto": a pass that needed the noise allowance gets its blocks checked too (a damped bug)
    return (
        localize == "auto"
        and limit is not None
        and any(o.metrics.scale_rel > limit for o in result.outputs.values())
    )


def _localize(reference: Any, lane: _Lane, result: CandidateResult) -> Divergence:
    worst = lane.worst
    if not reference.localizes:
        return Divergence(note=reference.no_blocks_reason)
    try:
        cand_blocks, reason = candidate_blocks(lane.cand, worst.batch, reference.input_names)
    except ReparamError:
        raise
    except Exception as exc:  # localization is a diagnostic; never let it hide the verdict
        return Divergence(note=f"could not localize: {type(exc).__name__}: {exc}")
    if not cand_blocks:
        return Divergence(note=reason or "no block boundary values could be read from this candidate")
    ref: BlockReference = reference.blocks(worst.index, worst.batch, list(cand_blocks))
    return locate_divergence(
        ref.values,
        cand_blocks,
        ref.order,
        lane.judge.tolerance,
        output_failed=not result.passed,
        noise=ref.noise,
    )


def _finish(reference: Any, lane: _Lane, localize: str) -> CandidateResult:
    """The candidate's verdict: noise measured where needed, blocks localized where asked."""
    if lane.failure is not None:
        return CandidateResult(lane.cand.name, lane.cand.kind, problems=[lane.failure])
    worst = lane.worst

    def noise() -> dict[str, float]:
        scale = {n: a.result().ref_max_abs for n, a in lane.judge.accumulators.items()}
        return reference.noise(worst.index, worst.batch, worst.reference, scale)

    result = lane.judge.result(noise)
    if _needs_blocks(localize, lane, result):
        result.divergence = _localize(reference, lane, result)
    return result


def _reference(reference: Any, name: str) -> LiveReference | ComputedReference | SavedReference:
    if isinstance(reference, LiveReference | ComputedReference | SavedReference):
        return reference
    return LiveReference(make_candidate(reference, name=name), name)


def compute_reference(
    module: nn.Module, batches: Sequence[Batch], load: Callable[[], nn.Module], name: str = "reference"
) -> ComputedReference:
    """``module``'s outputs on ``batches``, computed now for a `verify` run after ``module`` is let
    go; ``load`` builds it again only if a candidate needs its fp32 noise or its blocks."""
    return ComputedReference(
        _reference(module, name), batches, lambda: LiveReference(make_candidate(load(), name=name), name)
    )


def reference_up_front(
    module: nn.Module,
    batches: Sequence[Batch],
    risk_of: Callable[[nn.Module], list[Any]],
    load: Callable[[], nn.Module],
    name: str,
) -> tuple[Any, list[Any] | None]:
    """What `verify` compares with, and the int8 risk table if it was computed here.

    Inputs that fit in one chunk of the verifier: the risk table (``risk_of(module)``, read from its
    weights) and the module's outputs on every batch are computed now, so the caller can let the
    module go before any exporter or runtime runs (``load`` builds it again only if a candidate
    needs its noise floor or its blocks). More inputs: the module itself, run batch by batch as
    the verifier streams.
    """
    if len(batches) > CHUNK_BATCHES:
        return module, None
    risk = risk_of(module)
    return compute_reference(module, batches, load, name), risk


def _check_arguments(batches: Iterable[Batch], candidates: Sequence[Any], localize: str) -> None:
    if isinstance(batches, Sequence) and not batches:
        raise ReparamError("no input batches to verify with", hint="pass `inputs` DATA.npz or `input_shape`")
    if not candidates:
        raise ReparamError("nothing to verify: no candidate given", hint="pass `deploy`, `onnx` or `engine`")
    if localize not in LOCALIZE:
        raise ValueError(f"localize must be one of {', '.join(LOCALIZE)}, not {localize!r}")


def verify(
    reference: Any,
    candidates: Sequence[Any],
    batches: Iterable[Batch],
    *,
    tolerance: str | Tolerance = "fp32",
    atol: float | dict[str, float] | None = None,
    rtol: float | dict[str, float] | None = None,
    reference_name: str = "reference",
    inputs_info: Mapping[str, Any] | None = None,
    localize: str = "auto",
    quant: bool = True,
    quant_risk: list[Any] | None = None,
    tick: Tick | None = None,
) -> VerifyReport:
    """Compare every candidate with ``reference`` on ``batches`` (any iterable; read once, in order).

    ``reference`` and each candidate may be an nn.Module (run in eval mode), a ``.pt2`` / ``.onnx``
    / TensorRT engine path or a Runner; ``reference`` may also be saved run results
    (:class:`~reparam.verify.reference.SavedReference`, golden results) or outputs computed before
    its module was let go (`compute_reference`). Blocks can only be localized against a module or
    saved block outputs.

    ``localize``: "auto" (the default) computes per-block errors for a failing candidate and for
    one that passed only thanks to the reference's noise allowance, "on_failure" only for failing
    ones, "always" for every candidate that allows it, "never" for none. ``tick(label, done, total)`` is called as
    each batch run starts and ends, for a progress display (``total`` is 0 for an iterable of
    unknown length). ``quant_risk``: the int8 risk table computed before, for a reference whose
    module is gone (else it is computed here when ``quant``).
    """
    _check_arguments(batches, candidates, localize)
    tol = make_tolerance(tolerance, atol, rtol)
    cands = [make_candidate(c) for c in candidates]
    ref = _reference(reference, reference_name)
    report = VerifyReport(ref.name, tol, dict(inputs_info or {}))
    unopened = [not c.is_open for c in cands]
    if quant:  # from the weights alone: before any candidate is released
        report.quant_risk = (
            quant_risk if quant_risk is not None else candidates_quant_risk(ref.quantization_source(), cands)
        )
    lanes = [
        _Lane(c, tol, f"candidate {k}/{len(cands)} {c.name}", fresh)
        for k, (c, fresh) in enumerate(zip(cands, unopened), 1)
    ]
    total = len(batches) * (1 + len(lanes)) if isinstance(batches, Sequence) else 0
    if not _stream(ref, lanes, batches, _Counter(tick, total), localize):
        raise ReparamError("no input batches to verify with", hint="pass `inputs` DATA.npz or `input_shape`")
    report.candidates = [lane.result for lane in lanes]
    report.notes.extend(dict.fromkeys(ref.notes))
    return report


def candidates_quant_risk(reference: nn.Module | None, cands: Sequence[Candidate]) -> Any:
    """The int8 risk of the fused kernels, read from the in-memory deploy model when there is one
    (a ``.pt2`` candidate is opened for it otherwise)."""
    if reference is None:
        return []
    in_memory = [c for c in cands if c.kind == "torch" and c.module is not None and c.record is not None]
    src = next(iter(in_memory), None) or next((c for c in cands if c.kind == "pt2"), None)
    if src is None or src.module is None or src.record is None:
        return []
    return quantization_risk(reference, src.module, src.record)
