"""`reparam slim`: ScaleNet's data-driven neuron allocation of a seed checkpoint under a MAC budget."""

from __future__ import annotations

import argparse
import sys

from reparam.api import slim
from reparam.cli.commands import SUMMARIES
from reparam.cli.common import add_model_arguments, input_spec, model_source


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "slim",
        help=SUMMARIES["slim"],
        description="Rank every per-scale SA conv channel of a trained seed network by |γ| of its "
        "BatchNorm, keep the top channels network-wide so the model meets the MAC budget, and write "
        "the slim model as a checkpoint (arch + kwargs + kept weights), its structure file (the "
        "published format) and a report (JSON, markdown, PNG). On any error nothing is written.",
    )
    add_model_arguments(parser, checkpoint_help="trained seed checkpoint")
    parser.add_argument(
        "--macs",
        required=True,
        metavar="BUDGET",
        help="MAC budget: a fraction of the seed's MACs (0.6) or a count with a unit (3.8G, 500M)",
    )
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="slim checkpoint path (.pth)")
    parser.add_argument(
        "--structure", metavar="FILE", help="structure file path (default: <OUT stem>.structure.json)"
    )
    parser.add_argument(
        "--report",
        metavar="R.json",
        help="report JSON path; R.md and R.png go next to it (default: <OUT stem>.report.json)",
    )
    parser.add_argument(
        "--input-shape",
        metavar="NxCxHxW",
        help="input on which MACs are counted (default 1xCx224x224, the published structures' size)",
    )
    parser.add_argument(
        "--reinit",
        action="store_true",
        help="initialise the slim model afresh (the paper retrains from scratch) instead of copying kept weights",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    result, paths = slim(
        model_source(args),
        args.output,
        args.macs,
        structure=args.structure,
        report=args.report,
        inputs=input_spec(args),
        reinit=args.reinit,
    )
    r = result.report
    sys.stdout.write(
        f"slim {r['arch']}: {r['seed_macs'] / 1e9:.4g} -> {r['macs'] / 1e9:.4g} GMACs "
        f"(budget {r['budget_macs'] / 1e9:.4g}, {r['shortfall_fraction_of_budget']:.2%} under), "
        f"params {r['seed_params'] / 1e6:.4g} -> {r['params'] / 1e6:.4g} M, "
        f"SA channels {r['sa_channels_before']} -> {r['sa_channels_after']}\n"
    )
    sys.stdout.write("wrote " + ", ".join(str(p) for p in paths.values()) + "\n")
    return 0
