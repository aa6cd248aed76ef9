"""convert / verify / deploy / inspect when the input is a training-form ONNX file.

The commands' parsers are unchanged: each command hands its parsed namespace here when its input
path ends in ``.onnx``, and this module calls :mod:`reparam.onnx_reparam` and prints the outcome.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from reparam.cli.common import parse_shape
from reparam.equivalence.tolerance import make_tolerance, parse_tolerance_overrides
from reparam.errors import ReparamError
from reparam.onnx_reparam import convert_onnx, deploy_onnx, verify_onnx
from reparam.onnx_reparam.deploy import load_npz_inputs
from reparam.runners.onnxruntime_runner import OnnxRuntimeRunner

SUMMARY_ROWS = 20


def is_onnx(path: str | None) -> bool:
    return bool(path) and str(path).lower().endswith(".onnx")


def _tolerance(args: argparse.Namespace):
    atol = parse_tolerance_overrides(getattr(args, "atol", None), "--atol")
    rtol = parse_tolerance_overrides(getattr(args, "rtol", None), "--rtol")
    return make_tolerance(getattr(args, "tolerance", None) or "fp32", atol or None, rtol or None)


def _inputs(args: argparse.Namespace, reference: str):
    """User inputs (--inputs DATA.npz, or one random batch of --input-shape) as input sets, or None
    for random ones over every free axis."""
    path, shape = getattr(args, "inputs", None), getattr(args, "input_shape", None)
    if not path and not shape:
        return None

    names = OnnxRuntimeRunner(reference).input_names
    if path:
        return load_npz_inputs(path, names)

    x = np.random.default_rng(getattr(args, "seed", 0)).standard_normal(parse_shape(shape))
    return [{names[0]: x.astype(np.float32)}]


def _print_check(check) -> None:
    for shapes in check.input_shapes:
        sys.stdout.write(f"  inputs {shapes}\n")
    for out in check.result.outputs.values():
        verdict = "ok" if out.passed else "FAILED: " + "; ".join(out.reasons)
        sys.stdout.write(f"  {out.name}: scale-relative error {out.metrics.scale_rel:.3g} {verdict}\n")
    for line in check.result.problems + check.skipped:
        sys.stdout.write(f"  {line}\n")
    if check.first_diverging:
        sys.stdout.write(f"  first diverging tensor: {check.first_diverging}\n")


def convert(args: argparse.Namespace) -> int | None:
    """`reparam convert model.onnx -o deploy.onnx`; None when the input is not an ONNX file."""
    if not is_onnx(args.checkpoint):
        return None

    result = convert_onnx(
        args.checkpoint, args.output, inputs=_inputs(args, args.checkpoint), check=not args.no_check
    )
    rows = None if args.verbose else SUMMARY_ROWS
    sys.stdout.write(result.report.render(max_fusions=rows) + "\n")
    if result.check is not None and not result.passed:
        _print_check(result.check)
        sys.stdout.write(f"not written: {args.output} differs from {args.checkpoint}\n")
        return 1
    if args.report:
        Path(args.report).write_text(result.report.to_json())
    sys.stdout.write(f"wrote {result.output} and {Path(str(result.output) + '.report.json').name}\n")
    return 0


def verify(args: argparse.Namespace) -> int | None:
    """`reparam verify deploy.onnx --reference model.onnx [--onnx more.onnx]`."""
    positional, flag = args.reference, args.reference_flag
    if not (is_onnx(flag) and is_onnx(positional)) or args.deploy or args.engine:
        return None  # `verify model.onnx --onnx ...` stays with the general verifier
    reference, candidates = flag, [positional, *args.onnx]

    passed = True
    for candidate in candidates:
        check = verify_onnx(
            candidate, reference, tolerance=_tolerance(args), inputs=_inputs(args, reference), seed=args.seed
        )
        sys.stdout.write(f"{candidate} vs {reference}: {'PASSED' if check.passed else 'FAILED'}\n")
        _print_check(check)
        passed = passed and check.passed
        if args.report:
            Path(args.report).write_text(json.dumps(check.to_dict(), indent=2, default=str))
    return 0 if passed else 1


def _refuse_pytorch_only(args: argparse.Namespace) -> None:
    """Deploy options that build from a PyTorch model: refused for an ONNX input, not ignored."""
    given = [
        flag
        for flag, on in (
            ("--int8", getattr(args, "int8", False)),
            ("--calib", getattr(args, "calib", None)),
            ("--legacy-exporter", getattr(args, "legacy_exporter", False)),
            ("--to trt", "trt" in str(getattr(args, "to", "")).lower()),
        )
        if on
    ]
    if given:
        raise ReparamError(
            f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to a PyTorch checkpoint; "
            f"{args.checkpoint} is an ONNX file (deployed as model.onnx, with --fp16 an fp16 copy)",
            hint="drop them, or build the engine from the deployed file: reparam export trt OUT/model.onnx",
        )


def deploy(args: argparse.Namespace) -> int | None:
    """`reparam deploy model.onnx -o out/`: convert -> (fp16) -> verify -> manifest."""
    if not is_onnx(args.checkpoint):
        return None
    _refuse_pytorch_only(args)
    result = deploy_onnx(
        args.checkpoint,
        args.output,
        fp16=getattr(args, "fp16", False),
        tolerance=_tolerance(args),
        inputs=_inputs(args, args.checkpoint),
        seed=getattr(args, "seed", 0),
        force=getattr(args, "force", False),
    )
    sys.stdout.write(result.conversion.report.summary_line() + "\n")
    for name, check in result.checks.items():
        sys.stdout.write(f"{name}: {'PASSED' if check.passed else 'FAILED'}\n")
        _print_check(check)
    if not result.passed:
        sys.stdout.write(f"not written: {args.output}\n")
        return 1
    written = ", ".join(sorted(p.name for p in Path(result.output).iterdir()))
    sys.stdout.write(f"wrote {result.output}/ ({written})\n")
    return 0
