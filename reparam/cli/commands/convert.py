"""`reparam convert`: training checkpoint -> deploy artifact (.pt2) with a conversion report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reparam.api import PlainTarget, convert
from reparam.cli.commands import SUMMARIES, onnx_input
from reparam.cli.common import (
    add_model_arguments,
    input_shape_help,
    input_spec,
    model_source,
    parse_json_kwargs,
)
from reparam.cli.console import note, progress
from reparam.engine.passes import DEFAULT_ORDER

SUMMARY_ROWS = 20  # fusions listed one by one in the printed report


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help=SUMMARIES["convert"],
        description="Load a training checkpoint, fold BatchNorm and merge parallel branches exactly, "
        "check the result against the training model, print the report and write the deploy "
        "artifact (torch.export .pt2) plus <OUT>.report.json. On any error nothing is written.",
    )
    add_model_arguments(parser)
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="deploy artifact path (.pt2)")
    parser.add_argument(
        "--input-shape",
        metavar="NxCxHxW",
        help=input_shape_help("example input shape for the check and the export"),
    )
    parser.add_argument("--report", metavar="FILE", help="also write the report JSON here")
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        metavar="PASS",
        help="skip this pass (repeatable); see --passes",
    )
    parser.add_argument(
        "--passes",
        metavar="a,b",
        help="comma-separated passes to run (default: all, in this order: " + ", ".join(DEFAULT_ORDER) + ")",
    )
    parser.add_argument("--no-check", action="store_true", help="skip the built-in equivalence check")
    parser.add_argument(
        "--as-arch",
        metavar="ARCH",
        help="instead of a .pt2, write OUT as a checkpoint of this plain architecture (zoo name or "
        "'package.module:Class'): the fused weights, matched to its layers by graph structure, "
        "loadable with strict=True and checked numerically",
    )
    parser.add_argument("--as-arch-kwargs", metavar="JSON", help="keyword arguments for --as-arch")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help=f"list every fusion (default: one line per pass beyond {SUMMARY_ROWS} fusions)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if (code := onnx_input.convert(args)) is not None:  # a training-form .onnx input
        return code

    plain = PlainTarget(args.as_arch, parse_json_kwargs(args.as_arch_kwargs)) if args.as_arch else None
    outcome = convert(
        model_source(args),
        args.output,
        inputs=input_spec(args),
        passes=args.passes,
        skip=args.skip,
        check=not args.no_check,
        as_arch=plain,
        report=args.report,
        progress=progress,
    )
    for text in outcome.notes:
        note(text)
    sys.stdout.write(outcome.result.report.render(max_fusions=None if args.verbose else SUMMARY_ROWS) + "\n")
    out = outcome.output
    if plain is not None:
        sys.stdout.write(outcome.weights.render() + "\n")
        sys.stdout.write(f"wrote {out} (a {plain.arch} checkpoint)\n")
        return 0
    sys.stdout.write(f"wrote {out} and {outcome.files[1].name}\n")
    _note_fixed_axes(outcome.description)
    return 0


def _note_fixed_axes(desc) -> None:
    """Tell which input sizes the written artifact holds (and why), as `inspect` would."""

    path = Path(desc.path)
    if desc.fixed_axes:
        held = ", ".join(f"{f['name']} {f['size']}" for f in desc.fixed_axes)
        note(f"{path.name} accepts inputs of shape {desc.shape_text()} only ({held}): {desc.fixed_reason}")
