"""`reparam expand`: plain checkpoint -> training checkpoint with multi-branch (ACB, RepVGG, DBB) blocks."""

from __future__ import annotations

import argparse
import sys

from reparam.api import expand_checkpoint
from reparam.cli.commands import SUMMARIES
from reparam.cli.common import add_model_arguments, input_shape_help, input_spec, model_source
from reparam.cli.console import note, speak
from reparam.expansion import INITS, SCHEMES


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "expand",
        help=SUMMARIES["expand"],
        description="Find, by dataflow, every conv followed by BatchNorm (or with a bias) and replace it "
        "with the scheme's multi-branch block, whose fusion is exactly a conv of the same geometry. "
        "Checks that the expansion fuses back to the plain conv layout (and, with --init preserve, "
        "that it computes what the plain model computes), then writes a self-describing checkpoint "
        "that every other command loads. On any error nothing is written.",
    )
    add_model_arguments(parser, checkpoint_help="plain model checkpoint")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="expanded checkpoint (.pth)")
    parser.add_argument(
        "--scheme",
        default="acb",
        help="; ".join(f"{k}: {v}" for k, v in SCHEMES.items()) + " (default: acb)",
    )
    parser.add_argument(
        "--init",
        default="preserve",
        help=f"{' | '.join(INITS)}: new branches start at zero contribution (fine-tuning a pretrained "
        "model), or active with default initialization (training from scratch); default preserve",
    )
    parser.add_argument(
        "--input-shape",
        metavar="NxCxHxW",
        help=input_shape_help("example input shape for the checks"),
    )
    parser.add_argument("--report", metavar="FILE", help="also write the expansion report as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    outcome = expand_checkpoint(
        model_source(args),
        args.output,
        scheme=args.scheme,
        init=args.init,
        inputs=input_spec(args),
        report=args.report,
    )
    for text in outcome.notes:
        note(text)
    sys.stdout.write(outcome.report.render() + "\n")
    sys.stdout.write(f"wrote {outcome.output}\n")
    if outcome.load_hint:
        sys.stdout.write(
            f"note: {outcome.arch} is your own code, which a checkpoint never names to import; "
            f"{speak(outcome.load_hint)}\n"
        )
    return 0
