"""`reparam convert`: training checkpoint -> deploy artifact (.pt2) with a conversion report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SUMMARY_ROWS = 20  # fusions listed one by one in the printed report


def register(subparsers) -> None:
    from reparam.cli.common import add_model_arguments, input_shape_help
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


def artifact_metadata(model, args: argparse.Namespace, shape: tuple[int, ...]) -> dict:
    """What a deploy artifact records about itself (read back by `reparam.describe`)."""
    from reparam.checkpoint import file_sha256

    source = getattr(model, "reparam_source", None) or {}
    return {
        "arch": source.get("arch", args.arch),
        "arch_kwargs": source.get("arch_kwargs"),
        "checkpoint": str(args.checkpoint),
        "checkpoint_sha256": file_sha256(args.checkpoint),
        "input_names": ["input"],
        "input_shape": list(shape),
        "precision": "fp32",
    }


def _check_output(out: Path, as_arch: str | None) -> None:
    from reparam.errors import ReparamError

    if out.is_dir():
        raise ReparamError(f"output {str(out)!r} is a directory", hint="give a file path, e.g. -o model.pt2")
    if as_arch:
        if out.suffix.lower() in (".pt2", ".onnx"):
            raise ReparamError(
                f"with --as-arch the output is a {as_arch} checkpoint, not a {out.suffix} file",
                hint=f"name it {out.with_suffix('.pth')}",
            )
        return
    if out.suffix.lower() != ".pt2":
        hint = (
            f"convert writes a .pt2; for ONNX run `reparam export onnx {out.with_suffix('.pt2')} -o {out}` "
            "afterwards (or `reparam deploy`)"
            if out.suffix.lower() == ".onnx"
            else f"name the output {out.with_suffix('.pt2')}, or pass --as-arch to write a checkpoint"
        )
        raise ReparamError(
            f"output {str(out)!r} must end in .pt2 (a torch.export deploy artifact)", hint=hint
        )


def run(args: argparse.Namespace) -> int:
    from reparam.artifact import report_path, stage_artifact
    from reparam.cli.common import input_shape_for, load_model_from_args, parse_json_kwargs
    from reparam.cli.console import progress
    from reparam.engine import convert
    from reparam.engine.base import select_passes
    from reparam.engine.inputs import make_inputs
    from reparam.io import atomic_files, check_writable

    out = Path(args.output)
    _check_output(out, args.as_arch)
    check_writable(out, None if args.as_arch else report_path(out), args.report)
    select_passes(args.passes, args.skip)  # validate names before the (slower) model loading
    if args.as_arch:
        from reparam.checkpoint import build_model
        from reparam.expansion.plain import write_plain_checkpoint

        as_kwargs = parse_json_kwargs(args.as_arch_kwargs)
        # a bad --as-arch fails before the conversion
        plain = build_model(args.as_arch, as_kwargs, option="--as-arch")
    progress(f"loading {args.checkpoint}")
    model = load_model_from_args(args)
    shape = input_shape_for(model, args.input_shape)
    progress("converting")
    result = convert(model, passes=args.passes, skip=args.skip, check=not args.no_check, input_shape=shape)
    example, _ = make_inputs(model, None, shape)
    max_rows = None if args.verbose else SUMMARY_ROWS
    sys.stdout.write(result.report.render(max_fusions=max_rows) + "\n")
    progress(f"writing {out}")
    # One transaction: the output, its report and --report appear together or not at all.
    with atomic_files() as tx:
        if args.as_arch:
            weights = write_plain_checkpoint(
                tx.path(out), model, result, plain, args.as_arch, as_kwargs, example
            )
        else:
            metadata = artifact_metadata(model, args, shape)
            stage_artifact(
                tx, result.model, example, out, report=result.report, record=result.record, metadata=metadata
            )
        if args.report:
            tx.write_text(args.report, result.report.to_json())
    if args.as_arch:
        sys.stdout.write(weights.render() + "\n")
        sys.stdout.write(f"wrote {out} (a {args.as_arch} checkpoint)\n")
    else:
        sys.stdout.write(f"wrote {out} and {report_path(out).name}\n")
        _note_fixed_axes(out)
    return 0


def _note_fixed_axes(path: Path) -> None:
    """Tell which input sizes the written artifact holds (and why), as `inspect` would."""
    from reparam.cli.console import note
    from reparam.describe import describe

    desc = describe(path)
    if desc.fixed_axes:
        held = ", ".join(f"{f['name']} {f['size']}" for f in desc.fixed_axes)
        note(f"{path.name} accepts inputs of shape {desc.shape_text()} only ({held}): {desc.fixed_reason}")
