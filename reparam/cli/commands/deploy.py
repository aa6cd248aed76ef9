"""`reparam deploy`: convert -> export -> verify in one command, writing every artifact to OUTDIR.

OUTDIR is built in a temporary directory next to it and renamed into place only when every step,
verification included, succeeded; on any error or mismatch nothing is left behind.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from reparam.api import DeployOptions, deploy
from reparam.cli.commands import SUMMARIES, onnx_input
from reparam.cli.common import add_model_arguments, input_spec, judge, model_source
from reparam.cli.console import Bar, note, progress
from reparam.cli.options import (
    add_input_arguments,
    add_tolerance_arguments,
    write_reports,
)
from reparam.errors import MismatchError

DESCRIPTION = """\
Convert a training checkpoint to its deploy form, export it (model.pt2, model.onnx, a TensorRT
engine with --to trt), verify every artifact against the training model, and write the artifacts,
report.json, report.md, errors.png and manifest.json (names, sizes, sha256) into OUTDIR.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "deploy",
        help=SUMMARIES["deploy"],
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

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
    p.add_argument(
        "--legacy-exporter",
        action="store_true",
        help="export model.onnx with the TorchScript exporter (dynamo=False): faster, with a higher "
        "memory peak (docs/benchmarks.md); the file is also run at a batch of three, and verified as always",
    )
    p.add_argument("--force", action="store_true", help="replace OUTDIR if it exists and is not empty")
    p.set_defaults(
        field_flags={"targets": "--to", "dynamo": "--legacy-exporter", "dynamo=False": "--legacy-exporter"}
    )
    add_input_arguments(p)
    add_tolerance_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if (code := onnx_input.deploy(args)) is not None:  # a training-form .onnx input
        return code

    options = DeployOptions(
        args.to.split(","), args.fp16, args.int8, args.calib, args.force, dynamo=not args.legacy_exporter
    )
    bar = Bar()
    try:
        result = deploy(
            model_source(args),
            args.output,
            options=options,
            inputs=input_spec(args),
            judge=judge(args),
            progress=progress,
            tick=bar,
        )
    finally:
        bar.close()
    for text in result.notes:
        note(text)
    print(result.summary)
    write_reports(result.report, argparse.Namespace())
    if result.output is None:
        print(f"verification failed: nothing was written to {Path(args.output).resolve()}")
        return 1
    print(f"wrote {result.output} ({len(result.files)} files)")
    if result.dropped:
        _int8_failed(args, result)
    return 0


def _int8_failed(args: argparse.Namespace, result) -> None:
    """The int8 files failed alone: the fp32 ones were written; say what to try next (exit 1)."""

    held_out = args.inputs or "HELD_OUT.npz"
    arch = f" --arch {shlex.quote(args.arch)}" if args.arch else ""
    arch += f" --arch-kwargs {shlex.quote(args.arch_kwargs)}" if args.arch_kwargs else ""
    raise MismatchError(
        f"{' and '.join(result.dropped)} failed verification with the int8 profile and "
        f"{'were' if len(result.dropped) > 1 else 'was'} not written; the fp32 artifacts passed and "
        f"are in {result.output} (see report.json)",
        hint=f"keep the most int8-sensitive layers float: reparam quantize {result.output / 'model.onnx'} "
        f"-o model.int8.onnx --calib {args.calib} --target 0.99 --reference {args.checkpoint} "
        f"--eval {held_out}{arch}",
    )
