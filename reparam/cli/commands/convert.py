"""`reparam convert`: training checkpoint -> deploy artifact (.pt2) with a conversion report."""

from __future__ import annotations

import argparse
import sys

SUMMARY_ROWS = 20  # fusions listed one by one in the printed report


def register(subparsers) -> None:
    from reparam.cli.common import add_model_arguments
    from reparam.engine.passes import DEFAULT_ORDER

    parser = subparsers.add_parser(
        "convert",
        help="fuse a training checkpoint into its deploy form and save it as a .pt2 artifact",
        description="Load a training checkpoint, fold BatchNorm and merge parallel branches exactly, "
        "check the result against the training model, print the report and write the deploy "
        "artifact (torch.export .pt2) plus <OUT>.report.json. On any error nothing is written.",
    )
    add_model_arguments(parser)
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="deploy artifact path (.pt2)")
    parser.add_argument(
        "--input-shape",
        metavar="NxCxHxW",
        help="example input shape for the check and the export (default: guessed from "
        "the first layer, 1xCx32x32)",
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
    from pathlib import Path

    from reparam.artifact import save_artifact
    from reparam.checkpoint import file_sha256
    from reparam.cli.common import load_model_from_args, parse_shape
    from reparam.engine import convert
    from reparam.engine.base import select_passes
    from reparam.errors import ReparamError
    from reparam.io import atomic_write_text

    out = Path(args.output)
    if out.exists() and out.is_dir():
        raise ReparamError(f"output {str(out)!r} is a directory", hint="give a file path, e.g. -o model.pt2")
    shape = parse_shape(args.input_shape) if args.input_shape else None
    select_passes(args.passes, args.skip)  # validate names before the (slower) model loading
    if args.as_arch:
        from reparam.checkpoint import build_model
        from reparam.cli.common import parse_json_kwargs
        from reparam.expansion.plain import write_plain_checkpoint

        as_kwargs = parse_json_kwargs(args.as_arch_kwargs)
        plain = build_model(args.as_arch, as_kwargs)  # a bad --as-arch fails before the conversion
    model = load_model_from_args(args)
    result = convert(model, passes=args.passes, skip=args.skip, check=not args.no_check, input_shape=shape)
    from reparam.engine.check import make_inputs

    example, _ = make_inputs(model, None, shape)
    if example is None:
        raise ReparamError("cannot export without an example input", hint="pass --input-shape NxCxHxW")
    metadata = {
        "arch": args.arch,
        "arch_kwargs": args.arch_kwargs,
        "checkpoint": str(args.checkpoint),
        "checkpoint_sha256": file_sha256(args.checkpoint),
        "input_shape": list(example[0].shape),
    }
    max_rows = None if args.verbose else SUMMARY_ROWS
    sys.stdout.write(result.report.render(max_fusions=max_rows) + "\n")
    if args.as_arch:
        weights = write_plain_checkpoint(out, model, result.model, plain, args.as_arch, as_kwargs, example)
        sys.stdout.write(weights.render() + "\n")
        if args.report:
            atomic_write_text(args.report, result.report.to_json())
        sys.stdout.write(f"wrote {out} (a {args.as_arch} checkpoint)\n")
        return 0
    save_artifact(result.model, example, out, report=result.report, metadata=metadata)
    if args.report:
        atomic_write_text(args.report, result.report.to_json())
    sys.stdout.write(f"wrote {out} and {out.name}.report.json\n")
    return 0
