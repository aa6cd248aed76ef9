"""`verify`: artifact files against a checkpoint, a ``.pt2`` / ``.onnx`` reference or golden results."""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from reparam.api.requests import Batches, InputSpec, Judge, ModelSource
from reparam.checkpoint import file_sha256
from reparam.describe import Description, check_inputs_fit, describe
from reparam.engine import convert
from reparam.errors import ReparamError
from reparam.io import check_input_file
from reparam.memory import release_freed_memory
from reparam.runners import SUFFIX_KINDS
from reparam.verify.core import (
    Candidate,
    Tick,
    candidates_quant_risk,
    make_candidate,
    reference_up_front,
)
from reparam.verify.core import verify as run_verification
from reparam.verify.golden import save_golden as write_golden
from reparam.verify.golden import verify_golden

Progress = Callable[[str], None]


@dataclass
class VerifyOutcome:
    """What `verify` did: the report (None when only golden results were saved), notes."""

    report: Any  # VerifyReport | None
    notes: list[str] = field(default_factory=list)
    golden: Path | None = None  # where golden results were written

    @property
    def passed(self) -> bool:
        return self.report is None or bool(self.report.passed)


def _file_candidates(descriptions: list[Description], judge: Judge) -> list[Candidate]:
    """Candidates judged by the judge's profile if it has one, else by their own precision's."""
    out = []
    for d in descriptions:
        c = make_candidate(d.path)
        c.tolerance = judge.tolerance("fp16" if d.precision == "fp16" else "fp32")
        out.append(c)
    return out


def _against_golden(
    golden: str | os.PathLike, reference: ModelSource | None, inputs: InputSpec, cands: list, judge: Judge
) -> VerifyOutcome:
    if reference is not None or inputs.inputs is not None or inputs.input_shape is not None:
        raise ReparamError(
            "golden results bring their own reference and inputs",
            hint="drop `reference` / `inputs` / `input_shape`, or drop `golden`",
        )
    if not cands:
        raise ReparamError("nothing to verify against the golden results", hint="give `candidates`")
    return VerifyOutcome(verify_golden(golden, cands, tolerance=judge.tolerance(), localize=judge.localize))


@dataclass
class _Reference:
    """The reference resolved: a model (checkpoint) or an artifact path, and where shapes come from."""

    model: Any  # nn.Module | str
    path: Path
    shape_from: Any  # Description | None
    notes: list[str] = field(default_factory=list)

    @property
    def is_artifact(self) -> bool:
        return isinstance(self.model, str)


def _computed_reference(
    ref: _Reference,
    source: ModelSource,
    descriptions: list[Description],
    cands: list[Candidate],
    batches: Batches,
) -> tuple[Any, list[Any] | None]:
    """What the candidates are compared with, and the int8 risk table if it was computed here.

    A checkpoint's model whose inputs fit in one chunk of the verifier: the risk table (read from
    its weights) and its outputs on every batch are computed now and the model is let go before
    any candidate runs; it is loaded again only if a candidate needs its noise floor or its blocks.
    Otherwise the model itself, run batch by batch as the verifier streams.
    """
    if ref.is_artifact:
        return ref.model, None
    described = next((d.architecture() for d in descriptions if d.architecture()), None)
    computed, risk = reference_up_front(
        ref.model,
        batches.data,
        lambda model: candidates_quant_risk(model, cands),
        lambda: source.load(described_by=described).model,
        str(source.checkpoint),
    )
    if computed is ref.model:  # streamed: the verifier runs the model itself
        return computed, risk
    training = weakref.ref(ref.model)
    ref.model = None
    release_freed_memory(collect=training() is not None)  # a collection only for a model in cycles
    return computed, risk


def _resolve_reference(source: ModelSource, descriptions: list[Description], say: Progress) -> _Reference:
    path = check_input_file(source.checkpoint, "reference")
    if SUFFIX_KINDS.get(path.suffix.lower()) in ("pt2", "onnx"):
        if source.arch or source.arch_kwargs:
            raise ReparamError(
                "`arch` / `arch_kwargs` apply to a checkpoint reference, not a .pt2 or .onnx",
                hint="drop them; the artifact carries its own graph",
            )
        return _Reference(str(path), path, describe(path))
    say(f"loading {path}")
    loaded = source.load(
        described_by=next((d.architecture() for d in descriptions if d.architecture()), None)
    )
    shape_from = next((d for d in descriptions if d.example_shape()), None)
    return _Reference(loaded.model, path, shape_from, loaded.notes)


def _save_golden(ref: _Reference, batches: Batches, where: str | os.PathLike, say: Progress) -> Path:
    if ref.is_artifact:
        raise ReparamError(
            "golden results come from the training model", hint="give a checkpoint as `reference`"
        )
    source = getattr(ref.model, "reparam_source", None) or {}
    provenance = {
        "reference": str(ref.path),
        "reference_sha256": file_sha256(ref.path),
        "arch": source.get("arch"),
        "arch_kwargs": source.get("arch_kwargs"),
        "inputs": batches.info,
    }
    say(f"saving golden results to {where}")
    return write_golden(ref.model, batches.data, where, provenance=provenance)


def verify(
    reference: ModelSource | None,
    candidates: Sequence[str | os.PathLike] = (),
    *,
    inputs: InputSpec = InputSpec(),
    judge: Judge = Judge(),
    golden: str | os.PathLike | None = None,
    save_golden: str | os.PathLike | None = None,
    progress: Progress | None = None,
    tick: Tick | None = None,
) -> VerifyOutcome:
    """Verify artifact files against a reference: a checkpoint, a ``.pt2`` / ``.onnx``, or golden results.

    The artifacts describe themselves: a checkpoint that records no architecture takes it from them
    (zoo names only), the input shape defaults to the one they record, and each is judged by its
    own precision's profile unless ``judge.profile`` is set. Inputs an artifact cannot take raise
    `ReparamError` before anything runs. With no candidate, the reference is converted on the fly.
    ``save_golden`` writes golden results of the (checkpoint) reference; ``golden`` verifies against
    them instead of a reference.
    """
    say = progress or (lambda _text: None)
    descriptions = [describe(p) for p in candidates]
    cands = _file_candidates(descriptions, judge)
    if golden is not None:
        say(f"verifying {len(cands)} candidate(s) against {golden}")
        return _against_golden(golden, reference, inputs, cands, judge)
    if reference is None:
        raise ReparamError("no reference given", hint="give `reference`: a checkpoint, .pt2 or .onnx")
    ref = _resolve_reference(reference, descriptions, say)
    batches = inputs.resolve(None if ref.is_artifact else ref.model, ref.shape_from)
    notes = ref.notes + ([batches.note] if batches.note else [])
    check_inputs_fit(descriptions, batches.shape, batches.info)
    written = _save_golden(ref, batches, save_golden, say) if save_golden is not None else None
    if not cands and written is not None:
        return VerifyOutcome(None, notes, written)
    if not cands:
        if ref.is_artifact:
            raise ReparamError("nothing to verify against the artifact reference", hint="give `candidates`")
        say("converting (no candidate given)")
        cands = [convert(ref.model, (torch.from_numpy(batches.data[0]["input"]),), check=False).model]
        batches.info["candidate"] = "converted on the fly (no candidate given)"
        against, risk = ref.model, None
    else:
        against, risk = _computed_reference(ref, reference, descriptions, cands, batches)
    say(
        f"verifying {len(cands)} candidate(s) on {batches.info['batches']} batch(es) of {batches.info['shape']}"
    )
    report = run_verification(
        against,
        cands,
        batches.data,
        tolerance=judge.tolerance(),
        reference_name=str(reference.checkpoint),
        inputs_info=batches.info,
        localize=judge.localize,
        quant_risk=risk,
        tick=tick,
    )
    return VerifyOutcome(report, notes, written)
