"""`reparam export onnx|trt`: deploy artifact or checkpoint -> ONNX; ONNX -> TensorRT engine."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from reparam.io import check_input_file


def register(subparsers) -> None:
    from reparam.cli.common import add_arch_arguments

    parser = subparsers.add_parser(
        "export",
        help="export a deploy model to ONNX, or build a TensorRT engine from ONNX",
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
    onnx.set_defaults(func=run_onnx)

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
    trt.add_argument("--no-progress", action="store_true", help="do not show build progress")
    trt.set_defaults(func=run_trt)


def _missing_target(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _load(args: argparse.Namespace):
    """(model, example inputs, metadata, rewrite record or None) from a .pt2 artifact or a checkpoint."""
    import torch

    from reparam.checkpoint import file_sha256
    from reparam.cli.common import input_shape_for, load_model_from_args
    from reparam.cli.console import progress
    from reparam.errors import ReparamError

    src = check_input_file(args.checkpoint, "model file", hint="give a .pt2 artifact or a checkpoint")
    meta = {"source": src.name, "source_sha256": file_sha256(src)}
    if src.suffix.lower() == ".pt2":
        from reparam.artifact import read_artifact
        from reparam.describe import describe

        if args.training_form:
            raise ReparamError(
                "a .pt2 artifact holds only the deploy form",
                hint="pass the training checkpoint (with --arch if needed) for --training-form",
            )
        if args.arch or args.arch_kwargs or args.trust_pickle:
            raise ReparamError(
                "--arch/--arch-kwargs/--trust-pickle apply to checkpoints, not .pt2 artifacts",
                hint="drop them; the artifact carries its own graph",
            )
        desc = describe(src)
        artifact = read_artifact(src)
        model = artifact.module
        if args.input_shape is None and desc.example_shape() is None:
            raise ReparamError(f"{src.name} records no input shape", hint="pass --input-shape NxCxHxW")
        shape = input_shape_for(model, args.input_shape, desc)
        desc.refuse_fixed(shape, set(parse_dynamic(args.dynamic, args.static)) if args.dynamic else set())
        described = {"arch": desc.arch, "arch_kwargs": desc.arch_kwargs, "input_names": desc.input_names}
        if desc.fixed_axes:
            described["fixed_axes"] = desc.fixed_axes
        return model, (torch.randn(shape),), meta | described | {"form": "deploy"}, artifact.record
    from reparam.engine.inputs import make_inputs

    progress(f"loading {src}")
    model = load_model_from_args(args)
    shape = input_shape_for(model, args.input_shape)
    example, _ = make_inputs(model, None, shape)
    source = getattr(model, "reparam_source", None) or {}
    meta |= {"arch": source.get("arch"), "arch_kwargs": source.get("arch_kwargs"), "input_names": ["input"]}
    if args.training_form:
        return model, example, meta | {"form": "training"}, None
    from reparam.engine import convert

    progress("converting")
    result = convert(model, example, check=True)
    checked = result.report.check is not None
    return result.model, example, meta | {"form": "deploy", "checked": checked}, result.record


DIM_NAMES = {"batch": 0, "channels": 1, "height": 2, "width": 3}


def parse_dynamic(text: str | None, static: bool) -> dict[int, str]:
    """``--dynamic batch,height,width`` (names or axis numbers) as ``{axis: dim name}``."""
    from reparam.errors import ReparamError

    if static:
        return {}
    axes: dict[int, str] = {}
    for item in (text or "batch").split(","):
        item = item.strip().lower()
        if item in DIM_NAMES:
            axes[DIM_NAMES[item]] = item
        elif item.isdigit():
            axes[int(item)] = next((n for n, a in DIM_NAMES.items() if a == int(item)), f"dim{item}")
        elif item:
            raise ReparamError(
                f"--dynamic: unknown axis {item!r}",
                hint="name axes of the NxCxHxW input: --dynamic batch,height,width (or axis numbers)",
            )
    return axes


def run_onnx(args: argparse.Namespace) -> int:
    from reparam.cli.console import progress
    from reparam.errors import ReparamError
    from reparam.exporters.onnx import convert_onnx_to_fp16, export_onnx, publish_onnx_files
    from reparam.io import atomic_files, staging_directory

    out = Path(args.output)
    if out.is_dir():
        raise ReparamError(f"output {str(out)!r} is a directory", hint="give a file path, e.g. -o model.onnx")
    axes = parse_dynamic(args.dynamic, args.static)
    model, example, meta, record = _load(args)
    meta.pop("checked", None)
    if not args.dynamic and any(int(f["axis"]) == 0 for f in meta.get("fixed_axes", [])):
        axes.pop(0, None)  # the default dynamic batch, where the model holds the batch at one size
    progress(f"exporting {out}")
    fp16 = out.with_name(out.stem + ".fp16.onnx") if args.fp16 else None
    # One transaction: the model, its fp16 copy and their sidecars appear together or not at all.
    with atomic_files() as tx, staging_directory(out) as stage:
        result = export_onnx(
            model,
            example,
            stage / out.name,
            opset=args.opset,
            dynamic_batch=0 in axes,
            dynamic_axes={"input": {a: n for a, n in axes.items() if a != 0}}
            if len(axes) > (0 in axes)
            else None,
            simplify=not args.no_simplify,
            dynamo=not args.legacy_exporter,
            metadata=meta,
            boundaries=record.boundaries if record is not None else None,
            passes=record.pass_names() if record is not None else (),
        )
        if fp16 is not None:
            convert_onnx_to_fp16(stage / out.name, stage / fp16.name)
        publish_onnx_files(tx, stage, [out, *([fp16] if fp16 else [])])
    result.path = out
    result.sidecar = out.parent / result.sidecar.name if result.sidecar else None
    if args.json:
        payload = {
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
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
        return 0
    ops = ", ".join(f"{k} {v}" for k, v in result.op_counts.items())
    lines = [
        f"wrote {result.path}" + (f" and {result.sidecar.name}" if result.sidecar else ""),
        f"  form {meta['form']}, {result.exporter} exporter, opset {result.opset}, "
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


def run_trt(args: argparse.Namespace) -> int:
    from reparam.cli.common import parse_shape
    from reparam.exporters.tensorrt import (
        BuildOptions,
        build_engine,
        derive_profiles,
        onnx_input_dims,
        onnx_is_fp16,
        onnx_is_qdq,
    )

    src = check_input_file(args.onnx, "ONNX file", hint="export one with `reparam export onnx`")
    shapes = {
        k: parse_shape(getattr(args, k)) if getattr(args, k) else None
        for k in ("input_shape", "min_shape", "opt_shape", "max_shape")
    }
    precision = "fp16" if args.fp16 else "int8" if args.int8 else None
    # Validate everything that needs no GPU before importing TensorRT.
    BuildOptions(
        precision=precision,
        workspace_mb=args.workspace,
        calib=args.calib,
        onnx_is_fp16=onnx_is_fp16(src),
        onnx_is_qdq=onnx_is_qdq(src),
    ).validate()
    derive_profiles(onnx_input_dims(src), max_batch=args.max_batch, **shapes)
    result = build_engine(
        src,
        args.output,
        precision=precision,
        max_batch=args.max_batch,
        workspace_mb=args.workspace,
        timing_cache=args.timing_cache,
        calib=args.calib,
        progress=not args.no_progress,
        **shapes,
    )
    info = result.info
    sys.stdout.write(
        f"wrote {result.path} and {result.sidecar.name}: TensorRT {info['tensorrt']} on "
        f"{info['gpu']} (sm {info['compute_capability']}), {info['precision']}, "
        f"built in {result.seconds:.1f} s\n"
    )
    for name, p in result.profiles.items():
        sys.stdout.write(f"  profile {name}: min {list(p.min)} opt {list(p.opt)} max {list(p.max)}\n")
    for note in result.plan.notes:
        sys.stdout.write(f"  note: {note}\n")
    return 0
