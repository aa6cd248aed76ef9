"""`reparam verify`: compare deploy artifacts with the training model on the same inputs.

Exit codes: 0 every candidate passes, 1 a mismatch, 2 a usage or input error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from reparam.errors import ReparamError

DESCRIPTION = """\
Run the training-form reference (eval mode) and each candidate -- a .pt2 deploy artifact, ONNX
files (ONNX Runtime), a TensorRT engine -- on the same inputs and compare every output. With no
candidate, the reference is converted on the fly and that deploy model is verified. When a
candidate fails, the first block whose output diverges is named (through the rewrite record).
"""


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """--inputs / --input-shape / --batches / --batch-size / --seed (shared with `reparam deploy`)."""
    src = parser.add_mutually_exclusive_group()
    src.add_argument(
        "--inputs",
        metavar="DATA.npz",
        help="real inputs: array 'input' (or the only array) of an .npz, split into batches",
    )
    src.add_argument(
        "--input-shape",
        metavar="NxCxHxW",
        help="shape of each seeded random batch (default 1xCx224x224, C from the first conv)",
    )
    parser.add_argument(
        "--batches", type=int, default=None, help="number of batches (random: default 2; .npz: default all)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=8, help="batch size when splitting --inputs (default 8)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")


def add_tolerance_arguments(parser: argparse.ArgumentParser, default: str | None = "fp32") -> None:
    """--tolerance / --atol / --rtol."""
    parser.add_argument(
        "--tolerance",
        choices=["fp32", "fp16", "int8"],
        default=default,
        help="tolerance profile (default fp32; see docs/verify.md)",
    )
    parser.add_argument(
        "--atol",
        action="append",
        metavar="[OUTPUT=]VALUE",
        help="elementwise absolute tolerance, Polygraphy-style (an element fails only when it "
        "exceeds both atol and rtol); repeatable, per output with OUTPUT=VALUE",
    )
    parser.add_argument(
        "--rtol",
        action="append",
        metavar="[OUTPUT=]VALUE",
        help="elementwise relative tolerance (see --atol)",
    )


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--report", metavar="REPORT.json", help="write the full report as JSON")
    parser.add_argument(
        "--markdown", metavar="REPORT.md", help="write the report as markdown (CI job summaries)"
    )
    parser.add_argument("--plot", metavar="ERRORS.png", help="plot per-block error (needs matplotlib)")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "verify",
        help="verify deploy artifacts against the training model",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--reference", required=True, metavar="CKPT", help="training checkpoint (the reference)")
    from reparam.cli.common import add_arch_arguments

    add_arch_arguments(p)
    p.add_argument("--deploy", action="append", default=[], metavar="ARTIFACT.pt2", help="deploy artifact")
    p.add_argument("--onnx", action="append", default=[], metavar="FILE", help="ONNX file (repeatable)")
    p.add_argument(
        "--engine", action="append", default=[], metavar="FILE", help="TensorRT engine (needs a GPU)"
    )
    add_input_arguments(p)
    add_tolerance_arguments(p)
    add_report_arguments(p)
    p.set_defaults(func=run)


def make_batches(args: argparse.Namespace, model) -> tuple[list[dict], dict[str, Any]]:
    """Input batches from --inputs or --input-shape / the model's default, and a description of them."""
    from reparam.cli.common import parse_shape
    from reparam.verify.inputs import default_input_shape, load_npz_batches, random_batches

    if args.inputs:
        batches = load_npz_batches(args.inputs, batch_size=args.batch_size, batches=args.batches)
        n = sum(b["input"].shape[0] for b in batches)
        info = {
            "source": str(args.inputs),
            "samples": n,
            "batches": len(batches),
            "shape": "x".join(map(str, batches[0]["input"].shape)),
        }
        return batches, info
    shape = parse_shape(args.input_shape) if args.input_shape else default_input_shape(model)
    count = 2 if args.batches is None else args.batches
    batches = random_batches(shape, count, args.seed)
    return batches, {
        "source": "random normal",
        "seed": args.seed,
        "batches": count,
        "shape": "x".join(map(str, shape)),
    }


def make_tolerance_from_args(args: argparse.Namespace, profile: str | None = None):
    from reparam.verify.tolerance import make_tolerance, parse_tolerance_overrides

    return make_tolerance(
        profile or args.tolerance,
        parse_tolerance_overrides(args.atol, "--atol"),
        parse_tolerance_overrides(args.rtol, "--rtol"),
    )


def write_reports(report, args: argparse.Namespace, console=None) -> None:
    """Print the terminal table and write the files asked for."""
    report.render(console)
    if getattr(args, "report", None):
        report.write_json(args.report)
    if getattr(args, "markdown", None):
        report.write_markdown(args.markdown)
    if getattr(args, "plot", None):
        note = report.write_plot(args.plot)
        if note:
            sys.stderr.write(f"note: {note}\n")


def _check_files(paths: list[str], option: str) -> None:
    for p in paths:
        if not Path(p).is_file():
            raise ReparamError(
                f"{option} file {p!r} does not exist", hint=f"check the path given to {option}"
            )


def run(args: argparse.Namespace) -> int:
    import torch

    from reparam.checkpoint import load_model
    from reparam.cli.common import parse_json_kwargs
    from reparam.verify.core import verify

    _check_files(args.deploy, "--deploy")
    _check_files(args.onnx, "--onnx")
    _check_files(args.engine, "--engine")
    tol = make_tolerance_from_args(args)
    model = load_model(
        args.reference,
        arch=args.arch,
        arch_kwargs=parse_json_kwargs(args.arch_kwargs) if args.arch_kwargs else None,
        trust_pickle=args.trust_pickle,
    )
    model.eval()
    batches, info = make_batches(args, model)
    candidates: list[Any] = [*args.deploy, *args.onnx, *args.engine]
    if not candidates:
        from reparam.engine import convert

        example = (torch.from_numpy(batches[0]["input"]),)
        result = convert(model, example, check=False)
        candidates = [result.model]
        info["candidate"] = "converted on the fly (no --deploy/--onnx/--engine given)"
    report = verify(
        model, candidates, batches, tolerance=tol, reference_name=str(args.reference), inputs_info=info
    )
    write_reports(report, args)
    return 0 if report.passed else 1
