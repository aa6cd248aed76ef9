"""`reparam verify`: compare deploy artifacts with the training model on the same inputs.

Exit codes: 0 every candidate passes, 1 a mismatch, 2 a usage or input error.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from reparam.api import verify
from reparam.cli.commands import SUMMARIES, onnx_input
from reparam.cli.common import add_arch_arguments, add_state_dict_arguments, input_spec, judge, model_source
from reparam.cli.console import Bar, note, progress
from reparam.cli.options import (
    add_input_arguments,
    add_report_arguments,
    add_tolerance_arguments,
    write_reports,
)
from reparam.errors import ReparamError
from reparam.io import check_input_file, check_writable
from reparam.verify.core import LOCALIZE

DESCRIPTION = """\
Run the training-form reference (eval mode) and each candidate -- a .pt2 deploy artifact, ONNX
files (ONNX Runtime), a TensorRT engine -- on the same inputs and compare every output. With no
candidate, the reference is converted on the fly and that deploy model is verified. When a
candidate fails, the first block whose output diverges is named (through the rewrite record).
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "verify",
        help=SUMMARIES["verify"],
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "reference",
        nargs="?",
        metavar="REFERENCE",
        help="the reference: a training checkpoint (usual), or a .pt2 / .onnx to compare against",
    )
    p.add_argument("--reference", dest="reference_flag", metavar="REFERENCE", help=argparse.SUPPRESS)

    add_arch_arguments(p)
    add_state_dict_arguments(p)
    p.add_argument("--deploy", action="append", default=[], metavar="ARTIFACT.pt2", help="deploy artifact")
    p.add_argument("--onnx", action="append", default=[], metavar="FILE", help="ONNX file (repeatable)")
    p.add_argument(
        "--engine", action="append", default=[], metavar="FILE", help="TensorRT engine (needs a GPU)"
    )
    golden = p.add_mutually_exclusive_group()
    golden.add_argument(
        "--save-golden",
        metavar="DIR",
        help="save the reference's inputs, outputs and per-block outputs (npz + JSON manifest with "
        "checksums) to check artifacts later with --golden, without the checkpoint or training code",
    )
    golden.add_argument(
        "--golden",
        metavar="DIR",
        help="compare the candidates with golden results saved by --save-golden (no REFERENCE)",
    )
    add_input_arguments(p)
    add_tolerance_arguments(p, default=None)
    p.add_argument(
        "--localize",
        choices=LOCALIZE,
        help="which candidates get per-block errors (the first diverging block): auto (the default) "
        "a failing one and one that passed only within the reference's fp32 noise, on_failure, "
        "always (every candidate, one more run of each on its worst batch; the default with "
        "--plot), never",
    )
    add_report_arguments(p)
    p.set_defaults(func=run)


def _check_files(paths: list[str], option: str) -> None:
    for p in paths:
        check_input_file(p, f"{option} file", hint=f"check the path given to {option}")


def _reference(args: argparse.Namespace) -> str | None:
    if args.reference and args.reference_flag and args.reference != args.reference_flag:
        raise ReparamError("two references given", hint="give the reference once, as the first argument")
    return args.reference or args.reference_flag


def run(args: argparse.Namespace) -> int:
    if (code := onnx_input.verify(args)) is not None:  # a training-form .onnx input
        return code

    _check_files(args.deploy, "--deploy")
    _check_files(args.onnx, "--onnx")
    _check_files(args.engine, "--engine")
    golden_files = (
        [Path(args.save_golden) / f for f in ("golden.json", "arrays.npz")] if args.save_golden else []
    )
    check_writable(args.report, args.markdown, args.plot, *golden_files)
    reference = _reference(args)
    bar = Bar()
    try:
        outcome = verify(
            model_source(args, reference) if reference is not None else None,
            [*args.deploy, *args.onnx, *args.engine],
            inputs=input_spec(args),
            judge=replace(judge(args), localize=args.localize or ("always" if args.plot else "auto")),
            golden=args.golden,
            save_golden=args.save_golden,
            progress=progress,
            tick=bar,
        )
    finally:
        bar.close()
    for text in outcome.notes:
        note(text)
    if outcome.golden is not None:
        print(f"wrote golden results to {args.save_golden}")
    if outcome.report is not None:
        write_reports(outcome.report, args)
    return 0 if outcome.passed else 1
