"""`reparam deploy`: convert -> export -> verify in one command, writing every artifact to OUTDIR.

OUTDIR is built in a temporary directory next to it and renamed into place only when every step,
verification included, succeeded; on any error or mismatch nothing is left behind.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from reparam.cli.commands.verify import (
    add_input_arguments,
    add_tolerance_arguments,
    make_batches,
    make_tolerance_from_args,
    write_reports,
)
from reparam.errors import ReparamError

TARGETS = ("onnx", "trt")

DESCRIPTION = """\
Convert a training checkpoint to its deploy form, export it (model.pt2, model.onnx, a TensorRT
engine with --to trt), verify every artifact against the training model, and write the artifacts,
report.json, report.md, errors.png and manifest.json (names, sizes, sha256) into OUTDIR.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "deploy",
        help="convert, export and verify in one step",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from reparam.cli.common import add_model_arguments

    add_model_arguments(p)
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="directory to create")
    p.add_argument(
        "--to",
        default="onnx",
        help="comma-separated targets besides model.pt2: onnx, trt "
        "(trt needs an NVIDIA GPU and TensorRT; default onnx)",
    )
    p.add_argument(
        "--fp16",
        action="store_true",
        help="also write model.fp16.onnx (fp16 weights, fp32 I/O), verified with the fp16 profile; "
        "the TensorRT engine is built from it",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="also write model.int8.onnx (Q/DQ, see `reparam quantize`) calibrated on --calib, verified "
        "with the int8 profile; the TensorRT engine is built from it",
    )
    p.add_argument(
        "--calib", metavar="DATA.npz", help="calibration inputs for --int8 (not the --inputs data)"
    )
    p.add_argument("--force", action="store_true", help="replace OUTDIR if it exists and is not empty")
    add_input_arguments(p)
    add_tolerance_arguments(p)
    p.set_defaults(func=run)


def parse_targets(text: str) -> list[str]:
    targets = [t.strip().lower() for t in text.split(",") if t.strip()]
    bad = [t for t in targets if t not in TARGETS]
    if bad:
        raise ReparamError(f"unknown --to target(s): {', '.join(bad)}", hint="use --to onnx or --to onnx,trt")
    if "trt" in targets and "onnx" not in targets:
        targets.insert(0, "onnx")  # the engine is built from the ONNX file
    return targets


def _check_output(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ReparamError(f"{out} exists and is not a directory", hint="choose another -o OUTDIR")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ReparamError(
            f"output directory {out} exists and is not empty",
            hint="choose a new -o OUTDIR, or pass --force to replace it",
        )


def _check_int8(args: argparse.Namespace, targets: list[str]) -> None:
    if args.calib and not args.int8:
        raise ReparamError("--calib only applies with --int8", hint="add --int8 or drop --calib")
    if args.int8 and not args.calib:
        raise ReparamError(
            "--int8 needs calibration data",
            hint="pass --calib DATA.npz (representative inputs, not the test set)",
        )
    if args.int8 and "onnx" not in targets:
        raise ReparamError("--int8 quantizes the ONNX export", hint="use --to onnx (or onnx,trt)")
    if args.int8 and args.calib and not Path(args.calib).is_file():
        raise ReparamError(f"calibration file {args.calib!r} does not exist", hint="check the --calib path")


def _require_tensorrt() -> None:
    from exporters.tensorrt.capabilities import import_tensorrt

    trt = import_tensorrt()
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch is a hard dependency
        has_gpu = False
    if not has_gpu:
        raise ReparamError(
            f"--to trt needs an NVIDIA GPU (TensorRT {getattr(trt, '__version__', '?')} is installed, "
            "but CUDA sees no device)",
            hint="run on a machine with an NVIDIA GPU, or drop trt from --to",
        )


def _file_entry(path: Path) -> dict[str, Any]:
    from reparam.checkpoint import file_sha256

    return {"name": path.name, "bytes": path.stat().st_size, "sha256": file_sha256(path)}


def _publishable_modes(directory: Path) -> None:
    """Give the temp dir and its files the modes a normal mkdir / open would (mkdtemp uses 0700)."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for p in directory.iterdir():
        if p.is_file():
            p.chmod(0o666 & ~umask)


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` to ``out`` (replacing an existing ``out``) with renames only."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        try:
            os.replace(tmp, out)
        except BaseException:
            os.replace(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def build_artifacts(args: argparse.Namespace, workdir: Path, model, batches, targets: list[str]) -> list:
    """Convert and export into ``workdir``; return the verification candidates."""
    import torch

    from exporters.onnx import export_onnx
    from reparam.artifact import save_artifact
    from reparam.engine import convert
    from reparam.verify.core import make_candidate

    example = (torch.from_numpy(batches[0]["input"]),)
    result = convert(model, example, check=False)  # the verification below is the check
    deploy = result.model
    print(result.report.summary_line())
    save_artifact(
        deploy,
        example,
        workdir / "model.pt2",
        report=result.report,
        metadata={"arch": args.arch, "checkpoint": str(args.checkpoint)},
    )
    candidates = [
        make_candidate(deploy, name="deploy model (in memory)", record=result.record),
        make_candidate(workdir / "model.pt2", record=result.record),
    ]
    if "onnx" in targets:
        export_onnx(deploy, example, workdir / "model.onnx")
        candidates.append(make_candidate(workdir / "model.onnx", record=result.record))
        onnx_for_trt = workdir / "model.onnx"
        if args.fp16:
            from exporters.onnx import convert_fp16

            convert_fp16(workdir / "model.onnx", workdir / "model.fp16.onnx")
            c = make_candidate(workdir / "model.fp16.onnx", record=result.record)
            c.tolerance = make_tolerance_from_args(args, "fp16")
            candidates.append(c)
            onnx_for_trt = workdir / "model.fp16.onnx"
        if args.int8:
            from reparam.quantize import quantize

            quantize(workdir / "model.onnx", workdir / "model.int8.onnx", args.calib)
            c = make_candidate(workdir / "model.int8.onnx", record=result.record)
            c.tolerance = make_tolerance_from_args(args, "int8")
            candidates.append(c)
            onnx_for_trt = workdir / "model.int8.onnx"
        if "trt" in targets:
            from exporters.tensorrt import build_engine

            build_engine(onnx_for_trt, workdir / "model.engine", input_shape=tuple(example[0].shape))
            c = make_candidate(workdir / "model.engine")
            if args.fp16 or args.int8:
                c.tolerance = make_tolerance_from_args(args, "int8" if args.int8 else "fp16")
            candidates.append(c)
    return candidates


def run(args: argparse.Namespace) -> int:
    from reparam import __version__
    from reparam.cli.common import load_model_from_args, parse_json_kwargs
    from reparam.verify.core import verify

    out = Path(args.output).resolve()
    targets = parse_targets(args.to)
    _check_int8(args, targets)
    _check_output(out, args.force)
    if "trt" in targets:
        _require_tensorrt()
    tol = make_tolerance_from_args(args)
    model = load_model_from_args(args)
    model.eval()
    batches, info = make_batches(args, model)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        candidates = build_artifacts(args, tmp, model, batches, targets)
        report = verify(
            model, candidates, batches, tolerance=tol, reference_name=str(args.checkpoint), inputs_info=info
        )
        if not report.passed:
            report.render()
            shutil.rmtree(tmp, ignore_errors=True)
            print(f"verification failed: nothing was written to {out}")
            return 1
        report.write_json(tmp / "report.json")
        report.write_markdown(tmp / "report.md")
        plot_note = report.write_plot(tmp / "errors.png")
        if plot_note:
            report.notes.append(plot_note)
        files = sorted(p for p in tmp.iterdir() if p.is_file())
        manifest = {
            "reparam_version": __version__,
            "created_unix": int(time.time()),
            "checkpoint": _file_entry(Path(args.checkpoint)) | {"path": str(args.checkpoint)},
            "arch": args.arch,  # None: taken from the checkpoint
            "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
            "arch_kwargs": parse_json_kwargs(args.arch_kwargs),
            "input_shape": info.get("shape"),
            "targets": ["pt2", *targets]
            + (["onnx-fp16"] if args.fp16 and "onnx" in targets else [])
            + (["onnx-int8"] if args.int8 else []),
            "verification": {
                "passed": report.passed,
                "tolerance": tol.to_dict(),
                "candidates": {c.name: c.passed for c in report.candidates},
            },
            "files": [_file_entry(p) for p in files],
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        _publishable_modes(tmp)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_reports(report, argparse.Namespace())
    print(f"wrote {out} ({len(files) + 1} files)")
    return 0
