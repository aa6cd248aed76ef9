"""`reparam export onnx|trt`: deploy artifact or checkpoint -> ONNX; ONNX -> TensorRT engine."""

from __future__ import annotations

import argparse
import json
import sys

from reparam.api import EngineOptions, OnnxOptions, build_engine_file, export_onnx_file
from reparam.cli.commands import SUMMARIES
from reparam.cli.common import add_arch_arguments, input_spec, model_source, parse_shape
from reparam.cli.console import note, progress


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help=SUMMARIES["export"],
        description="`reparam export onnx MODEL -o model.onnx` exports a deploy artifact (.pt2) or a training "
        "checkpoint (converted on the way) to ONNX; `reparam export trt model.onnx -o model.engine` builds a "
        "TensorRT engine (needs an NVIDIA GPU and TensorRT). Outputs are written atomically.",
    )
    sub = parser.add_subparsers(dest="target", metavar="TARGET")
    parser.set_defaults(func=lambda args: _missing_target(parser))

    onnx = sub.add_parser(
        "onnx",
        help="export to ONNX (dynamic batch, onnxsim, checker, provenance metadata)",
        description="Export a deploy artifact (.pt2) or a training checkpoint to ONNX. A "
        "checkpoint is reparameterized first (and checked) unless --training-form is given.",
    )
    onnx.add_argument("checkpoint", metavar="MODEL", help="deploy artifact (.pt2) or training checkpoint")
    onnx.add_argument("-o", "--output", required=True, metavar="OUT", help="ONNX file to write")
    onnx.add_argument(
        "--input-shape",
        metavar="NxCxHxW",
        help="example input shape (default: the shape a .pt2 records, else 1xCx224x224 with C "
        "from the first conv)",
    )
    batch = onnx.add_mutually_exclusive_group()
    batch.add_argument(
        "--dynamic",
        metavar="AXES",
        help="comma list of input axes left dynamic: batch, height, width (or axis numbers); default: batch",
    )
    batch.add_argument("--static", action="store_true", help="fix every input dim")
    # Kept so old command lines still run: the batch axis is dynamic by default.
    batch.add_argument("--dynamic-batch", action="store_true", help=argparse.SUPPRESS)
    onnx.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    onnx.add_argument("--no-simplify", action="store_true", help="skip onnxsim")
    onnx.add_argument(
        "--training-form",
        action="store_true",
        help="export the unfused training model (for comparison) instead of the deploy form",
    )
    onnx.add_argument(
        "--legacy-exporter",
        action="store_true",
        help="use the TorchScript exporter (dynamo=False) instead of the dynamo exporter",
    )
    onnx.add_argument(
        "--fp16", action="store_true", help="also write <OUT stem>.fp16.onnx (float16, float32 I/O)"
    )
    onnx.add_argument("--json", action="store_true", help="print the result as JSON")
    add_arch_arguments(onnx)
    onnx.set_defaults(
        func=run_onnx,
        field_flags={
            "simplify": "--no-simplify",
            "dynamo": "--legacy-exporter",
            "dynamo=False": "--legacy-exporter",
            "dynamic_batch": "--dynamic batch",
            "dynamic_batch=False": "--static",
            "checkpoint": "MODEL",
        },
    )

    trt = sub.add_parser(
        "trt",
        help="build a TensorRT engine from ONNX (TensorRT 10 or 11, NVIDIA GPU)",
        description="Build a serialized TensorRT engine and <OUT>.json (provenance). Profiles "
        "come from --min/--opt/--max-shape or the ONNX's dynamic batch (min 1, opt = "
        "--input-shape's batch, max = --max-batch).",
    )
    trt.add_argument("onnx", metavar="ONNX", help="ONNX file")
    trt.add_argument(
        "-o", "--output", required=True, metavar="OUT", help="engine file to write (.engine/.plan)"
    )
    prec = trt.add_mutually_exclusive_group()
    prec.add_argument(
        "--fp16",
        action="store_true",
        help="fp16 (TensorRT 10: builder flag; TensorRT 11: the ONNX is converted to float16)",
    )
    prec.add_argument(
        "--int8",
        action="store_true",
        help="int8: implied for a Q/DQ ONNX from `reparam quantize` (TensorRT 10 and 11); from a float "
        "ONNX, entropy calibration with --calib (TensorRT 10 only, deprecated)",
    )
    trt.add_argument(
        "--calib", metavar="DATA.npz", help="calibration inputs for --int8, arrays named like the inputs"
    )
    trt.add_argument("--input-shape", metavar="NxCxHxW", help="shape the profile is optimized for (opt)")
    trt.add_argument("--min-shape", metavar="NxCxHxW", help="smallest input shape the engine accepts")
    trt.add_argument("--opt-shape", metavar="NxCxHxW", help="input shape TensorRT tunes for")
    trt.add_argument("--max-shape", metavar="NxCxHxW", help="largest input shape the engine accepts")
    trt.add_argument(
        "--max-batch", type=int, help="largest batch of a derived profile (default max(opt, 32))"
    )
    trt.add_argument("--timing-cache", metavar="FILE", help="load and update this timing cache")
    trt.add_argument("--workspace", type=int, metavar="MB", help="builder workspace limit in MiB")
    trt.set_defaults(field_flags={"workspace_mb": "--workspace", "precision": "--fp16/--int8"})
    trt.add_argument("--no-progress", action="store_true", help="do not show build progress")
    trt.set_defaults(func=run_trt)


def _missing_target(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def run_onnx(args: argparse.Namespace) -> int:
    options = OnnxOptions(
        dynamic=args.dynamic,
        static=args.static,
        opset=args.opset,
        simplify=not args.no_simplify,
        dynamo=not args.legacy_exporter,
        fp16=args.fp16,
        training_form=args.training_form,
    )
    outcome = export_onnx_file(
        model_source(args), args.output, inputs=input_spec(args), options=options, progress=progress
    )
    for text in outcome.notes:
        note(text)
    result, fp16 = outcome.result, outcome.fp16
    if args.json:
        sys.stdout.write(json.dumps(_json_payload(result, fp16), indent=2) + "\n")
        return 0
    ops = ", ".join(f"{k} {v}" for k, v in result.op_counts.items())
    lines = [
        f"wrote {result.path}" + (f" and {result.sidecar.name}" if result.sidecar else ""),
        f"  form {outcome.form}, {result.exporter} exporter, opset {result.opset}, "
        f"{'simplified' if result.simplified else 'not simplified'}",
        f"  inputs {result.input_names}, outputs {result.output_names}, dynamic axes "
        f"{ {k: v for k, v in result.dynamic_axes.items()} or 'none' }",
        f"  ops: {ops}",
    ]
    lines += [f"  note: {n}" for n in result.notes]
    if fp16:
        lines.append(f"wrote {fp16}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _json_payload(result, fp16) -> dict:
    return {
        "path": str(result.path),
        "sidecar": str(result.sidecar) if result.sidecar else None,
        "fp16": str(fp16) if fp16 else None,
        "exporter": result.exporter,
        "opset": result.opset,
        "inputs": result.input_names,
        "outputs": result.output_names,
        "dynamic_axes": {k: {str(a): d for a, d in v.items()} for k, v in result.dynamic_axes.items()},
        "simplified": result.simplified,
        "op_counts": result.op_counts,
        "metadata": result.metadata,
        "block_boundaries": len(result.boundaries),
        "notes": result.notes,
        "seconds": result.seconds,
    }


def run_trt(args: argparse.Namespace) -> int:
    shapes = {
        k: parse_shape(getattr(args, k)) if getattr(args, k) else None
        for k in ("input_shape", "min_shape", "opt_shape", "max_shape")
    }
    options = EngineOptions(
        precision="fp16" if args.fp16 else "int8" if args.int8 else None,
        max_batch=args.max_batch,
        workspace_mb=args.workspace,
        timing_cache=args.timing_cache,
        calib=args.calib,
        progress=not args.no_progress,
        **shapes,
    )
    result = build_engine_file(args.onnx, args.output, options)
    info = result.info
    sys.stdout.write(
        f"wrote {result.path} and {result.sidecar.name}: TensorRT {info['tensorrt']} on "
        f"{info['gpu']} (sm {info['compute_capability']}), {info['precision']}, "
        f"built in {result.seconds:.1f} s\n"
    )
    for name, p in result.profiles.items():
        sys.stdout.write(f"  profile {name}: min {list(p.min)} opt {list(p.opt)} max {list(p.max)}\n")
    for text in result.plan.notes:
        sys.stdout.write(f"  note: {text}\n")
    return 0
