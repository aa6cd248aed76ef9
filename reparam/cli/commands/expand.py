"""`reparam expand`: plain checkpoint -> training checkpoint with multi-branch (ACB, RepVGG, DBB) blocks."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    from reparam.cli.common import add_model_arguments, input_shape_help
    from reparam.expansion.core import INITS
    from reparam.expansion.schemes import SCHEMES

    parser = subparsers.add_parser(
        "expand",
        help="expand a plain CNN checkpoint into its re-parameterizable training form",
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
    import json
    from pathlib import Path

    from reparam.cli.common import input_shape_for, load_model_from_args, parse_json_kwargs
    from reparam.errors import ReparamError
    from reparam.expansion.checkpoint import load_hint, resolve_arch, save_expanded
    from reparam.expansion.core import INITS, expand
    from reparam.expansion.schemes import check_scheme
    from reparam.io import atomic_write_text

    out = Path(args.output)
    if out.exists() and out.is_dir():
        raise ReparamError(f"output {str(out)!r} is a directory", hint="give a file path, e.g. -o train.pth")
    check_scheme(args.scheme)
    if args.init not in INITS:
        raise ReparamError(f"unknown init {args.init!r}", hint=f"choose one of: {', '.join(INITS)}")
    given_kwargs = parse_json_kwargs(args.arch_kwargs) if args.arch_kwargs else None
    arch, arch_kwargs = resolve_arch(args.checkpoint, args.arch, given_kwargs, args.trust_pickle)
    model = load_model_from_args(args)
    shape = input_shape_for(model, args.input_shape)
    expanded, report = expand(model, args.scheme, init=args.init, input_shape=shape)
    sys.stdout.write(report.render() + "\n")
    save_expanded(out, expanded, arch, arch_kwargs, args.scheme)
    if args.report:
        atomic_write_text(args.report, json.dumps(report.to_dict(), indent=2))
    sys.stdout.write(f"wrote {out}\n")
    hint = load_hint(arch, arch_kwargs, args.scheme)
    if hint:
        sys.stdout.write(f"note: {arch} is your own code, which a checkpoint never names to import; {hint}\n")
    return 0
