"""`reparam.deploy`: checkpoint -> deploy model -> .pt2 / ONNX / TensorRT, each verified, one directory.

The output directory is built next to its final place and renamed there only when every artifact
was written and passed verification; on an error or a mismatch nothing is left behind. The
``reparam deploy`` command parses its flags and calls `deploy`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from reparam.errors import ReparamError
from reparam.io import clean_stale_temps, temp_name, write_error

TARGETS = ("onnx", "trt")
Progress = Callable[[str], None]
Tick = Callable[[str, int, int], None]  # see reparam.verify.core.Tick


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


def normalize_targets(targets: Sequence[str]) -> list[str]:
    """Known targets in build order; ``trt`` implies ``onnx`` (the engine is built from it)."""
    out = [t.strip().lower() for t in targets if t.strip()]
    bad = [t for t in out if t not in TARGETS]
    if bad:
        raise ReparamError(f"unknown --to target(s): {', '.join(bad)}", hint="use --to onnx or --to onnx,trt")
    if "trt" in out and "onnx" not in out:
        out.insert(0, "onnx")
    return out


def _check_output(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ReparamError(f"{out} exists and is not a directory", hint="choose another -o OUTDIR")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ReparamError(
            f"output directory {out} exists and is not empty",
            hint="choose a new -o OUTDIR, or pass --force to replace it",
        )


def _check_int8(int8: bool, calib: str | os.PathLike | None, targets: list[str]) -> None:
    if calib and not int8:
        raise ReparamError("--calib only applies with --int8", hint="add --int8 or drop --calib")
    if int8 and not calib:
        raise ReparamError(
            "--int8 needs calibration data",
            hint="pass --calib DATA.npz (representative inputs, not the test set)",
        )
    if int8 and "onnx" not in targets:
        raise ReparamError("--int8 quantizes the ONNX export", hint="use --to onnx (or onnx,trt)")
    if int8 and calib and not Path(calib).is_file():
        raise ReparamError(f"calibration file {str(calib)!r} does not exist", hint="check the --calib path")


def _require_tensorrt() -> None:
    import torch

    from reparam.exporters.tensorrt.capabilities import import_tensorrt

    trt = import_tensorrt()
    if not torch.cuda.is_available():
        raise ReparamError(
            f"--to trt needs an NVIDIA GPU (TensorRT {getattr(trt, '__version__', '?')} is installed, "
            "but CUDA sees no device)",
            hint="run on a machine with an NVIDIA GPU, or drop trt from --to",
        )


def _file_entry(path: Path) -> dict[str, Any]:
    from reparam.checkpoint import file_sha256

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


def _describe_model(model: nn.Module, arch: str | None, shape: tuple[int, ...]) -> dict[str, Any]:
    """What model.pt2 and model.onnx record about themselves (see `reparam.describe`)."""
    source = getattr(model, "reparam_source", None) or {}
    return {
        "arch": source.get("arch", arch),
        "arch_kwargs": source.get("arch_kwargs"),
        "input_names": ["input"],
        "input_shape": list(shape),
    }


def _build(
    workdir: Path,
    model: nn.Module,
    batches: list,
    targets: list[str],
    *,
    arch: str | None,
    checkpoint: Path,
    fp16: bool,
    int8_calib: str | os.PathLike | None,
    tolerances: Mapping[str, Any],
    progress: Progress,
) -> tuple[list, str]:
    """Convert and export into ``workdir``; return the verification candidates and the summary line."""
    import torch

    from reparam.artifact import save_artifact
    from reparam.engine import convert
    from reparam.exporters.onnx import export_onnx
    from reparam.verify.core import make_candidate

    example = (torch.from_numpy(batches[0]["input"]),)
    progress("converting")
    # MACs and the report are per sample; the artifacts are captured on the whole first batch.
    result = convert(model, (example[0][:1],), check=False)  # the verification below is the check
    deploy_model = result.model
    description = _describe_model(model, arch, (1, *example[0].shape[1:]))
    progress("writing model.pt2")
    save_artifact(
        deploy_model,
        example,
        workdir / "model.pt2",
        report=result.report,
        record=result.record,
        metadata=description | {"checkpoint": str(checkpoint), "precision": "fp32"},
    )
    candidates = [
        make_candidate(deploy_model, name="deploy model (in memory)", record=result.record),
        make_candidate(workdir / "model.pt2", record=result.record),
    ]
    summary = result.report.summary_line()
    if "onnx" not in targets:
        return candidates, summary
    progress("exporting model.onnx")
    export_onnx(
        deploy_model,
        example,
        workdir / "model.onnx",
        metadata={
            k: v for k, v in description.items() if k != "input_shape"
        },  # input_shapes is the exporter's
        boundaries=result.record.boundaries,
        passes=result.record.pass_names(),
    )
    candidates.append(make_candidate(workdir / "model.onnx", record=result.record))
    onnx_for_trt = workdir / "model.onnx"
    if fp16:
        from reparam.exporters.onnx import convert_fp16

        progress("writing model.fp16.onnx")
        convert_fp16(workdir / "model.onnx", workdir / "model.fp16.onnx")
        c = make_candidate(workdir / "model.fp16.onnx", record=result.record)
        c.tolerance = tolerances["fp16"]
        candidates.append(c)
        onnx_for_trt = workdir / "model.fp16.onnx"
    if int8_calib is not None:
        from reparam.quantize import quantize

        progress("writing model.int8.onnx")
        quantize(workdir / "model.onnx", workdir / "model.int8.onnx", int8_calib)
        c = make_candidate(workdir / "model.int8.onnx", record=result.record)
        c.tolerance = tolerances["int8"]
        candidates.append(c)
        onnx_for_trt = workdir / "model.int8.onnx"
    if "trt" in targets:
        from reparam.exporters.tensorrt import build_engine

        progress("building model.engine (TensorRT)")
        build_engine(onnx_for_trt, workdir / "model.engine", input_shape=tuple(example[0].shape))
        c = make_candidate(workdir / "model.engine")
        if fp16 or int8_calib is not None:
            c.tolerance = tolerances["int8" if int8_calib is not None else "fp16"]
        candidates.append(c)
    return candidates, summary


INT8_FILES = ("model.int8.onnx", "model.engine")


def _int8_failures(report: Any, int8: bool, targets: list[str]) -> list[str] | None:
    """The int8 files to leave out when only they failed (the fp32 ones still ship); else None."""
    failed = {c.name for c in report.candidates if not c.passed}
    derived = {"model.int8.onnx"} | ({"model.engine"} if "trt" in targets else set())
    if not int8 or not failed or not failed <= derived:
        return None
    return sorted(derived)


def _manifest(
    model: nn.Module,
    checkpoint: Path,
    arch: str | None,
    info: dict,
    targets: list[str],
    extras: list[str],
    report: Any,
    tol: Any,
    dropped: Sequence[str] = (),
) -> dict[str, Any]:
    """What OUTDIR holds and how it was judged.

    ``input_shape`` is the model's (one sample, as the artifacts record it); the verification
    batches are described under ``verify_inputs``.
    """
    from reparam import __version__

    source = getattr(model, "reparam_source", None) or {}
    batch_shape = str(info.get("shape") or "").split("x")
    model_shape = "x".join(["1", *batch_shape[1:]]) if len(batch_shape) > 1 else None
    return {
        "reparam_version": __version__,
        "created_unix": int(time.time()),
        "checkpoint": _file_entry(checkpoint) | {"path": str(checkpoint)},
        "arch": source.get("arch", arch),
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "arch_kwargs": source.get("arch_kwargs"),
        "input_shape": model_shape,
        "verify_inputs": info,
        "targets": ["pt2", *targets, *extras],
        "verification": {
            "passed": all(c.passed for c in report.candidates if c.name not in dropped),
            "tolerance": tol.to_dict(),
            "candidates": {c.name: c.passed for c in report.candidates},
        },
        "not_written": {name: "failed verification" for name in dropped},
    }


def deploy(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    *,
    arch: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    trust_pickle: bool = False,
    max_memory: int | str | None = None,
    state_dict_key: str | None = None,
    strip_prefix: str | None = None,
    targets: Sequence[str] = ("onnx",),
    fp16: bool = False,
    int8: bool = False,
    calib: str | os.PathLike | None = None,
    force: bool = False,
    inputs: str | os.PathLike | None = None,
    input_shape: Sequence[int] | None = None,
    batches: int | None = None,
    batch_size: int = 8,
    seed: int = 0,
    tolerance: str = "fp32",
    atol: Mapping[str, float] | float | None = None,
    rtol: Mapping[str, float] | float | None = None,
    progress: Progress | None = None,
    tick: Tick | None = None,
) -> DeployResult:
    """Convert ``checkpoint``, export it to ``targets``, verify every artifact, write ``output``.

    The directory holds model.pt2 (+ its report), model.onnx (``fp16``: model.fp16.onnx, judged by
    the fp16 profile; ``int8``: model.int8.onnx calibrated on ``calib``, judged by the int8
    profile), model.engine for ``trt`` (built from the fp16 / int8 ONNX when asked), report.json,
    report.md, errors.png and manifest.json. It appears only when every artifact passed, except that
    int8 artifacts failing alone are left out (``DeployResult.dropped``) and the fp32 ones are
    written; ``DeployResult.output`` is None otherwise. Input problems raise `ReparamError`;
    ``progress`` receives status lines, ``tick`` the verification's batch counts
    (`reparam.verify.core.verify`).

    Without ``inputs`` or ``input_shape`` the model is verified on two batches of 1xCx224x224 (C from
    its first conv), the default of every command (`reparam.verify.inputs.resolve_input_shape`);
    ``DeployResult.notes`` says so.
    """
    from reparam.checkpoint import load_model
    from reparam.equivalence.tolerance import make_tolerance
    from reparam.io import check_input_file
    from reparam.verify.core import verify
    from reparam.verify.inputs import make_batches

    say = progress or (lambda _text: None)
    out = Path(output).resolve()
    wanted = normalize_targets(targets)
    _check_int8(int8, calib, wanted)
    _check_output(out, force)
    if "trt" in wanted:
        _require_tensorrt()
    tol = make_tolerance(tolerance, atol, rtol)
    ckpt = check_input_file(checkpoint, "checkpoint")
    say(f"loading {ckpt}")
    model = load_model(
        ckpt,
        arch=arch,
        arch_kwargs=arch_kwargs,
        trust_pickle=trust_pickle,
        max_bytes=max_memory,
        state_dict_key=state_dict_key,
        strip_prefix=strip_prefix,
    ).eval()
    notes = list((getattr(model, "reparam_source", None) or {}).get("notes", []))
    data, info, note = make_batches(
        model,
        inputs=inputs,
        input_shape=tuple(input_shape) if input_shape else None,
        batches=batches,
        batch_size=batch_size,
        seed=seed,
    )
    notes += [note] if note else []
    tmp = _make_temp_dir(out)
    try:
        tolerances = {p: make_tolerance(p, atol, rtol) for p in ("fp16", "int8")}
        candidates, summary = _build(
            tmp,
            model,
            data,
            wanted,
            arch=arch,
            checkpoint=ckpt,
            fp16=fp16,
            int8_calib=calib if int8 else None,
            tolerances=tolerances,
            progress=say,
        )
        say(f"verifying {len(candidates)} candidates on {info['batches']} batch(es) of {info['shape']}")
        report = verify(
            model,
            candidates,
            data,
            tolerance=tol,
            reference_name=str(checkpoint),
            inputs_info=info,
            tick=tick,
        )
        dropped = [] if report.passed else _int8_failures(report, int8, wanted)
        if dropped is None:
            shutil.rmtree(tmp, ignore_errors=True)
            return DeployResult(None, report, notes=notes, summary=summary)
        for name in dropped:
            (tmp / name).unlink(missing_ok=True)
        report.write_json(tmp / "report.json")
        report.write_markdown(tmp / "report.md")
        plot_note = report.write_plot(tmp / "errors.png")
        if plot_note:
            report.notes.append(plot_note)
        files = sorted(p for p in tmp.iterdir() if p.is_file())
        extras = (["onnx-fp16"] if fp16 and "onnx" in wanted else []) + (
            ["onnx-int8"] if int8 and not dropped else []
        )
        manifest = _manifest(model, ckpt, arch, info, wanted, extras, report, tol, dropped)
        manifest["files"] = [_file_entry(p) for p in files]
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        _publishable_modes(tmp)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return DeployResult(out, report, [p.name for p in files] + ["manifest.json"], notes, summary, dropped)


@dataclass
class VerifyOutcome:
    """What `verify_files` did: the report (None when only golden results were saved), notes."""

    report: Any  # VerifyReport | None
    notes: list[str] = field(default_factory=list)
    golden: Path | None = None  # where golden results were written

    @property
    def passed(self) -> bool:
        return self.report is None or bool(self.report.passed)


def _file_candidates(descriptions: list, tolerance: str | None, atol: Any, rtol: Any) -> list:
    """Candidates judged by ``tolerance`` if given, else by the profile their own precision calls for."""
    from reparam.equivalence.tolerance import make_tolerance
    from reparam.verify.core import make_candidate

    out = []
    for d in descriptions:
        c = make_candidate(d.path)
        c.tolerance = make_tolerance(tolerance or ("fp16" if d.precision == "fp16" else "fp32"), atol, rtol)
        out.append(c)
    return out


def _golden_provenance(model: nn.Module, reference: Path, info: dict) -> dict[str, Any]:
    from reparam.checkpoint import file_sha256

    source = getattr(model, "reparam_source", None) or {}
    return {
        "reference": str(reference),
        "reference_sha256": file_sha256(reference),
        "arch": source.get("arch"),
        "arch_kwargs": source.get("arch_kwargs"),
        "inputs": info,
    }


def verify_files(
    reference: str | os.PathLike | None,
    candidates: Sequence[str | os.PathLike] = (),
    *,
    golden: str | os.PathLike | None = None,
    save_golden: str | os.PathLike | None = None,
    arch: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    trust_pickle: bool = False,
    max_memory: int | str | None = None,
    state_dict_key: str | None = None,
    strip_prefix: str | None = None,
    inputs: str | os.PathLike | None = None,
    input_shape: Sequence[int] | None = None,
    batches: int | None = None,
    batch_size: int = 8,
    seed: int = 0,
    tolerance: str | None = None,
    atol: Mapping[str, float] | float | None = None,
    rtol: Mapping[str, float] | float | None = None,
    progress: Progress | None = None,
    tick: Tick | None = None,
) -> VerifyOutcome:
    """Verify artifact files against a checkpoint, a ``.pt2`` / ``.onnx`` reference or golden results.

    The artifacts describe themselves: a checkpoint that records no architecture takes it from them
    (zoo names only), the input shape defaults to the one they record, and each is judged by its
    own precision's profile unless ``tolerance`` is given. Inputs an artifact cannot take raise
    `ReparamError` before anything runs. With no candidate, the reference is converted on the fly.
    ``save_golden`` writes golden results of the (checkpoint) reference; ``golden`` verifies against
    them instead of a reference.
    """
    import torch

    from reparam.checkpoint import load_model
    from reparam.describe import check_inputs_fit, describe
    from reparam.equivalence.tolerance import make_tolerance
    from reparam.io import check_input_file
    from reparam.runners import SUFFIX_KINDS
    from reparam.verify.core import verify
    from reparam.verify.inputs import make_batches

    say = progress or (lambda _text: None)
    descriptions = [describe(p) for p in candidates]
    cands = _file_candidates(descriptions, tolerance, atol, rtol)
    if golden is not None:
        from reparam.verify.golden import verify_golden

        if reference is not None or inputs is not None or input_shape is not None:
            raise ReparamError(
                "golden results bring their own reference and inputs",
                hint="drop REFERENCE / --inputs / --input-shape, or drop --golden",
            )
        if not cands:
            raise ReparamError(
                "nothing to verify against the golden results", hint="pass --deploy, --onnx or --engine"
            )
        say(f"verifying {len(cands)} candidate(s) against {golden}")
        return VerifyOutcome(
            verify_golden(golden, cands, tolerance=make_tolerance(tolerance or "fp32", atol, rtol))
        )
    if reference is None:
        raise ReparamError(
            "no reference given", hint="reparam verify CKPT --deploy model.pt2 --onnx model.onnx ..."
        )
    ref_path = check_input_file(reference, "reference")
    notes: list[str] = []
    if SUFFIX_KINDS.get(ref_path.suffix.lower()) in ("pt2", "onnx"):
        if arch or arch_kwargs:
            raise ReparamError(
                "--arch/--arch-kwargs apply to a checkpoint reference, not a .pt2 or .onnx",
                hint="drop them; the artifact carries its own graph",
            )
        if save_golden is not None:
            raise ReparamError(
                "golden results come from the training model", hint="give a checkpoint as REFERENCE"
            )
        model: Any = str(ref_path)
        shape_from = describe(ref_path)
    else:
        say(f"loading {ref_path}")
        model = load_model(
            ref_path,
            arch=arch,
            arch_kwargs=arch_kwargs,
            trust_pickle=trust_pickle,
            max_bytes=max_memory,
            state_dict_key=state_dict_key,
            strip_prefix=strip_prefix,
            described_by=next((d.architecture() for d in descriptions if d.architecture()), None),
        ).eval()
        notes += (getattr(model, "reparam_source", None) or {}).get("notes", [])
        shape_from = next((d for d in descriptions if d.example_shape()), None)
    data, info, note = make_batches(
        None if isinstance(model, str) else model,
        inputs=inputs,
        input_shape=tuple(input_shape) if input_shape else None,
        batches=batches,
        batch_size=batch_size,
        seed=seed,
        description=shape_from,
    )
    notes += [note] if note else []
    check_inputs_fit(descriptions, tuple(data[0]["input"].shape), info)
    written = None
    if save_golden is not None:
        from reparam.verify.golden import save_golden as write_golden

        say(f"saving golden results to {save_golden}")
        written = write_golden(model, data, save_golden, provenance=_golden_provenance(model, ref_path, info))
        if not cands:
            return VerifyOutcome(None, notes, written)
    if not cands:
        if isinstance(model, str):
            raise ReparamError(
                "nothing to verify against the artifact reference", hint="pass --deploy, --onnx or --engine"
            )
        from reparam.engine import convert

        say("converting (no candidate given)")
        cands = [convert(model, (torch.from_numpy(data[0]["input"]),), check=False).model]
        info["candidate"] = "converted on the fly (no --deploy/--onnx/--engine given)"
    say(f"verifying {len(cands)} candidate(s) on {info['batches']} batch(es) of {info['shape']}")
    tol = make_tolerance(tolerance or "fp32", atol, rtol)
    report = verify(
        model, cands, data, tolerance=tol, reference_name=str(reference), inputs_info=info, tick=tick
    )
    return VerifyOutcome(report, notes, written)
