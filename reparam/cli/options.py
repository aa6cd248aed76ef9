"""Options and helpers shared by `verify` and `deploy`: inputs, tolerances, report files."""

from __future__ import annotations

import argparse
import sys

from reparam.cli.common import input_shape_help
from reparam.io import atomic_files


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
        help=input_shape_help("shape of each seeded random batch"),
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
        help="tolerance profile for every candidate (default: each candidate's own precision, "
        "fp16 for an fp16 artifact, else fp32; see docs/verify.md)"
        if default is None
        else f"tolerance profile (default {default}; see docs/verify.md)",
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


def write_reports(report, args: argparse.Namespace, console=None) -> None:
    """Print the terminal table and write the files asked for, all of them or none."""

    report.render(console)
    note = None
    with atomic_files() as tx:
        if getattr(args, "report", None):
            tx.write_text(args.report, report.to_json() + "\n")
        if getattr(args, "markdown", None):
            tx.write_text(args.markdown, report.to_markdown())
        if getattr(args, "plot", None):
            note = report.write_plot(tx.path(args.plot))
            if note:
                tx.discard(args.plot)
    if note:
        sys.stderr.write(f"note: {note}\n")
