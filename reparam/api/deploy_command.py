"""`deploy`: checkpoint -> deploy model -> .pt2 / ONNX / TensorRT, each verified, one directory.

The output directory is built next to its final place and renamed there only when every artifact
was written and passed verification; on an error or a mismatch nothing is left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from reparam import __version__
from reparam.api.requests import Batches, InputSpec, Judge, LoadedModel, ModelSource
from reparam.artifact import save_artifact
from reparam.engine import convert
from reparam.errors import ReparamError
from reparam.exporters.onnx import convert_fp16, export_onnx
from reparam.exporters.tensorrt import build_engine
from reparam.exporters.tensorrt.capabilities import import_tensorrt
from reparam.io import clean_stale_temps, file_sha256, temp_name, write_error
from reparam.memory import release_freed_memory
from reparam.quantize import quantize
from reparam.verify.core import Candidate, Tick, make_candidate, reference_up_front, verify
from reparam.verify.quant import quantization_risk

TARGETS = ("onnx", "trt")
INT8_FILES = ("model.int8.onnx", "model.engine")
Progress = Callable[[str], None]


@dataclass(frozen=True)
class DeployOptions:
    """What to build besides model.pt2, and whether an existing output may be replaced."""

    targets: Sequence[str] = ("onnx",)
    fp16: bool = False
    int8: bool = False
    calib: str | os.PathLike | None = None
    force: bool = False
    dynamo: bool = True  # False: model.onnx from the TorchScript exporter (faster, more memory)

    def resolved_targets(self) -> list[str]:
        """Known targets in build order; ``trt`` implies ``onnx`` (the engine is built from it)."""
        out = [t.strip().lower() for t in self.targets if t.strip()]
        bad = [t for t in out if t not in TARGETS]
        if bad:
            raise ReparamError(
                f"unknown target(s) in `targets`: {', '.join(bad)}", hint=f"choose from {', '.join(TARGETS)}"
            )
        if "trt" in out and "onnx" not in out:
            out.insert(0, "onnx")
        return out

    def check(self) -> list[str]:
        """Refuse inconsistent options before any slow work; return the targets."""
        targets = self.resolved_targets()
        if self.calib and not self.int8:
            raise ReparamError("`calib` only applies with `int8`", hint="add `int8` or drop `calib`")
        if self.int8 and not self.calib:
            raise ReparamError(
                "`int8` needs calibration data",
                hint="pass `calib` DATA.npz (representative inputs, not the test set)",
            )
        if self.int8 and "onnx" not in targets:
            raise ReparamError("`int8` quantizes the ONNX export", hint="add onnx to `targets`")
        if self.int8 and self.calib and not Path(self.calib).is_file():
            raise ReparamError(f"calibration file {str(self.calib)!r} does not exist", hint="check `calib`")
        if "trt" in targets:
            _require_tensorrt()
        return targets


@dataclass
class DeployResult:
    """What `deploy` did: the directory (None when nothing was written), the report, notes."""

    output: Path | None
    report: Any  # VerifyReport
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    summary: str = ""  # the conversion's one-line summary
    dropped: list[str] = field(default_factory=list)  # int8 artifacts that failed and were not written

    @property
    def passed(self) -> bool:
        return bool(self.report.passed)


def _require_tensorrt() -> None:
    trt = import_tensorrt()
    if not torch.cuda.is_available():
        raise ReparamError(
            f"a TensorRT target needs an NVIDIA GPU (TensorRT {getattr(trt, '__version__', '?')} is "
            "installed, but CUDA sees no device)",
            hint="run on a machine with an NVIDIA GPU, or drop trt from `targets`",
        )


def check_output_directory(out: Path, force: bool) -> None:
    """``out`` may be created: it is a new or empty directory, or ``force`` allows replacing it."""
    if out.exists() and not out.is_dir():
        raise ReparamError(f"{out} exists and is not a directory", hint="choose another `output` directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ReparamError(
            f"output directory {out} exists and is not empty",
            hint="choose a new `output` directory, or pass `force` to replace it",
        )


def _file_entry(path: Path) -> dict[str, Any]:
    return {"name": path.name, "bytes": path.stat().st_size, "sha256": file_sha256(path)}


def _publishable_modes(directory: Path) -> None:
    """Give the temp dir and its files the modes a normal mkdir / open would."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for p in directory.iterdir():
        if p.is_file():
            p.chmod(0o666 & ~umask)


def _make_temp_dir(out: Path) -> Path:
    """An empty directory next to ``out`` to build it in (stale ones of killed runs are removed)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(out)
        tmp = temp_name(out)
        tmp.mkdir()
    except OSError as exc:
        raise write_error(out, exc) from exc
    return tmp


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` to ``out`` (replacing an existing ``out``) with renames only."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = temp_name(out)
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


@dataclass(frozen=True)
class _Facts:
    """What the manifest and the artifacts' descriptions say of the training model, kept after
    the model itself is let go."""

    path: Path
    arch: str | None
    arch_kwargs: dict[str, Any] | None
    model_class: str

    @classmethod
    def of(cls, loaded: LoadedModel) -> _Facts:
        model = type(loaded.model)
        return cls(loaded.path, loaded.arch, loaded.arch_kwargs, f"{model.__module__}.{model.__qualname__}")


def _description(loaded: _Facts, shape: tuple[int, ...]) -> dict[str, Any]:
    """What model.pt2 and model.onnx record about themselves (see `reparam.describe`)."""
    return {
        "arch": loaded.arch,
        "arch_kwargs": loaded.arch_kwargs,
        "input_names": ["input"],
        "input_shape": list(shape),
    }


@dataclass
class _Build:
    """The artifacts written so far into the work directory and the candidates to verify."""

    workdir: Path
    result: Any  # ConversionResult
    example: tuple[torch.Tensor, ...]
    files: list[tuple[str, Any]] = field(default_factory=list)  # (file name, tolerance or None)

    def add(self, name: str, tolerance: Any = None) -> Path:
        self.files.append((name, tolerance))
        return self.workdir / name

    def candidates(self) -> list[Candidate]:
        """The in-memory deploy model and every file written. The verifier opens each file's runtime
        (its loaded program, its ONNX Runtime session) as it reaches it and lets it go once judged."""
        in_memory = make_candidate(
            self.result.model, name="deploy model (in memory)", record=self.result.record
        )
        in_memory.disposable = True  # the verifier lets it go once judged; the files are opened after it
        cands = [in_memory]
        for name, tolerance in self.files:
            record = None if name == "model.engine" else self.result.record
            cand = make_candidate(self.workdir / name, record=record)
            cand.tolerance = tolerance
            cands.append(cand)
        return cands


def _convert(workdir: Path, model: torch.nn.Module, batches: Batches) -> _Build:
    """Convert (checked by the verification that follows)."""
    example = (torch.from_numpy(batches.data[0]["input"]),)
    # MACs and the report are per sample; the artifacts are captured on the whole first batch.
    return _Build(workdir, convert(model, (example[0][:1],), check=False), example)


def _save_pt2(build: _Build, loaded: _Facts, say: Progress) -> None:
    """Write model.pt2 with its report and its description."""
    result, example, workdir = build.result, build.example, build.workdir
    say("writing model.pt2")
    save_artifact(
        result.model,
        example,
        workdir / "model.pt2",
        report=result.report,
        record=result.record,
        metadata=_description(loaded, (1, *example[0].shape[1:]))
        | {"checkpoint": str(loaded.path), "precision": "fp32"},
    )
    build.add("model.pt2")


def _export_onnx(build: _Build, loaded: _Facts, options: DeployOptions, judge: Judge, say: Progress) -> None:
    """Write model.onnx and the fp16 / int8 / TensorRT files derived from it."""

    say("exporting model.onnx")
    description = _description(loaded, (1, *build.example[0].shape[1:]))
    description.pop("input_shape")  # the exporter records input_shapes itself
    export_onnx(
        build.result.model,
        build.example,
        build.workdir / "model.onnx",
        metadata=description,
        boundaries=build.result.record.boundaries,
        passes=build.result.record.pass_names(),
        dynamo=options.dynamo,
    )
    source = build.add("model.onnx")
    if options.fp16:
        say("writing model.fp16.onnx")
        convert_fp16(source, build.workdir / "model.fp16.onnx")
        source = build.add("model.fp16.onnx", judge.for_profile("fp16"))
    if options.int8:
        say("writing model.int8.onnx")
        quantize(build.workdir / "model.onnx", build.workdir / "model.int8.onnx", options.calib)
        source = build.add("model.int8.onnx", judge.for_profile("int8"))
    if "trt" in options.resolved_targets():
        say("building model.engine (TensorRT)")
        build_engine(source, build.workdir / "model.engine", input_shape=tuple(build.example[0].shape))
        reduced = "int8" if options.int8 else "fp16" if options.fp16 else None
        build.add("model.engine", judge.for_profile(reduced) if reduced else None)


def _int8_failures(report: Any, options: DeployOptions) -> list[str] | None:
    """The int8 files to leave out when only they failed (the fp32 ones still ship); else None."""
    failed = {c.name for c in report.candidates if not c.passed}
    derived = {"model.int8.onnx"} | ({"model.engine"} if "trt" in options.resolved_targets() else set())
    if not options.int8 or not failed or not failed <= derived:
        return None
    return sorted(derived)


def _manifest(
    loaded: _Facts,
    batches: Batches,
    options: DeployOptions,
    report: Any,
    judge: Judge,
    dropped: Sequence[str],
) -> dict[str, Any]:
    """What the directory holds and how it was judged.

    ``input_shape`` is the model's (one sample, as the artifacts record it); the verification
    batches are described under ``verify_inputs``.
    """
    targets = options.resolved_targets()
    onnx = "onnx" in targets
    extras = (["onnx-fp16"] if options.fp16 and onnx else []) + (
        ["onnx-int8"] if options.int8 and onnx and not dropped else []
    )
    return {
        "reparam_version": __version__,
        "created_unix": int(time.time()),
        "checkpoint": _file_entry(loaded.path) | {"path": str(loaded.path)},
        "arch": loaded.arch,
        "model_class": loaded.model_class,
        "arch_kwargs": loaded.arch_kwargs,
        "input_shape": "x".join(map(str, (1, *batches.shape[1:]))),
        "verify_inputs": batches.info,
        "targets": ["pt2", *targets, *extras],
        "verification": {
            "passed": all(c.passed for c in report.candidates if c.name not in dropped),
            "tolerance": judge.tolerance().to_dict(),
            "candidates": {c.name: c.passed for c in report.candidates},
        },
        "not_written": {name: "failed verification" for name in dropped},
    }


def _write_results(tmp: Path, report: Any, manifest: dict[str, Any], dropped: Sequence[str]) -> list[str]:
    """Reports and manifest into ``tmp`` (failed int8 files removed); the names of the files."""
    for name in dropped:
        (tmp / name).unlink(missing_ok=True)
    report.write_json(tmp / "report.json")
    report.write_markdown(tmp / "report.md")
    plot_note = report.write_plot(tmp / "errors.png")
    if plot_note:
        report.notes.append(plot_note)
    files = sorted(p for p in tmp.iterdir() if p.is_file())
    manifest["files"] = [_file_entry(p) for p in files]
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return [p.name for p in files] + ["manifest.json"]


def deploy(
    source: ModelSource,
    output: str | os.PathLike,
    *,
    options: DeployOptions = DeployOptions(),
    inputs: InputSpec = InputSpec(),
    judge: Judge = Judge("fp32"),
    progress: Progress | None = None,
    tick: Tick | None = None,
) -> DeployResult:
    """Convert ``source``, export it, verify every artifact on ``inputs``, write ``output``.

    The directory holds model.pt2 (+ its report), model.onnx (fp16: model.fp16.onnx, judged by the
    fp16 profile; int8: model.int8.onnx calibrated on ``options.calib``, judged by the int8
    profile), model.engine for a trt target, report.json, report.md, errors.png and manifest.json.
    It appears only when every artifact passed, except that int8 artifacts failing alone are left
    out (``DeployResult.dropped``) and the fp32 ones are written; ``DeployResult.output`` is None
    otherwise. Without ``inputs.inputs`` or ``inputs.input_shape`` the model is verified on two
    batches of 1xCx224x224 (C from its first conv), the default of every command; a note says so.
    """
    say = progress or (lambda _text: None)
    out = Path(output).resolve()
    targets = options.check()
    check_output_directory(out, options.force)
    judge.tolerance()  # an unknown profile fails before the model is loaded
    say(f"loading {source.checkpoint}")
    loaded = source.load()
    batches = inputs.resolve(loaded.model)
    notes = loaded.notes + ([batches.note] if batches.note else [])
    facts = _Facts.of(loaded)
    tmp = _make_temp_dir(out)
    try:
        say("converting")
        build = _convert(tmp, loaded.model, batches)
        result = build.result
        reference, risk = reference_up_front(
            loaded.model,
            batches.data,
            lambda model: quantization_risk(model, result.model, result.record),
            lambda: source.load().model,
            str(source.checkpoint),
        )
        training = weakref.ref(loaded.model)
        del loaded  # the training model now lives in `reference` alone, or nowhere
        if not isinstance(reference, torch.nn.Module):
            release_freed_memory(collect=training() is not None)  # a collection only for a model in cycles
        _save_pt2(build, facts, say)
        if "onnx" in targets:
            _export_onnx(build, facts, options, judge, say)
        say(
            f"verifying {1 + len(build.files)} candidates on {batches.info['batches']} batch(es) of {batches.info['shape']}"
        )
        summary = build.result.report.summary_line()
        candidates = build.candidates()
        del build  # the deploy model now lives in its candidate alone
        report = verify(
            reference,
            candidates,
            batches.data,
            tolerance=judge.tolerance(),
            reference_name=str(source.checkpoint),
            inputs_info=batches.info,
            # blocks are compared only for a candidate that fails, or passes on the noise allowance
            localize="auto",
            quant_risk=risk,
            tick=tick,
        )
        dropped = [] if report.passed else _int8_failures(report, options)
        if dropped is None:
            shutil.rmtree(tmp, ignore_errors=True)
            return DeployResult(None, report, notes=notes, summary=summary)
        files = _write_results(
            tmp, report, _manifest(facts, batches, options, report, judge, dropped), dropped
        )
        _publishable_modes(tmp)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return DeployResult(out, report, files, notes, summary, dropped)
