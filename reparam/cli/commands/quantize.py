"""`reparam quantize`: float deploy ONNX -> explicitly quantized (Q/DQ) int8 ONNX, verified.

Exit codes: 0 written (and verified when --reference is given), 1 the int8 model misses the
agreement target (nothing written), 2 a usage or input error (nothing written).
"""

from __future__ import annotations

import argparse
import sys

from reparam.api import QuantizeOptions, quantize_onnx
from reparam.cli.commands import SUMMARIES
from reparam.cli.common import add_arch_arguments, model_source
from reparam.quantize.qdq import DEFAULT_PERCENTILE, METHODS

DESCRIPTION = """\
Quantize a float deploy ONNX to int8 with QuantizeLinear/DequantizeLinear nodes (symmetric int8,
per-channel weights, per-tensor activations: what TensorRT 10.1+ and 11 build), calibrated on
--calib. With --reference CKPT --eval HELD_OUT.npz the int8 model is compared with the unfused
training model (int8 profile: top-1 agreement, cosine, per-block error; accuracy when the .npz
holds 'label'). --target makes the most int8-sensitive layers stay float until the top-1
agreement with the float model on the calibration data reaches the target.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "quantize",
        help=SUMMARIES["quantize"],
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("onnx", metavar="DEPLOY.onnx", help="float32 ONNX (e.g. model.onnx from `reparam deploy`)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx", help="Q/DQ ONNX to write")
    p.add_argument(
        "--calib",
        required=True,
        metavar="DATA.npz",
        help="calibration inputs: one array per model input named like it, or 'input' (samples on axis 0)",
    )
    p.add_argument("--method", choices=METHODS, default="minmax", help="calibration method (default minmax)")
    p.add_argument(
        "--percentile",
        type=float,
        default=DEFAULT_PERCENTILE,
        help=f"range kept by --method percentile (default {DEFAULT_PERCENTILE})",
    )
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="LAYER",
        help="keep this Conv/Gemm node (or module path, e.g. stage2.1.rbr_dense) float; repeatable",
    )
    p.add_argument(
        "--target",
        type=float,
        metavar="TOP1",
        help="keep the most sensitive layers float until top-1 agreement reaches TOP1 (e.g. 0.99)",
    )
    p.add_argument("--max-float", type=int, metavar="N", help="at most N layers kept float by --target")
    p.add_argument("--batch-size", type=int, default=8, help="calibration batch size (default 8)")
    p.add_argument("--max-samples", type=int, metavar="N", help="use the first N calibration samples")
    p.add_argument("--reference", metavar="CKPT", help="training checkpoint to verify against (needs --eval)")
    p.add_argument(
        "--eval",
        metavar="HELD_OUT.npz",
        help="held-out inputs (not the calibration data); an integer array 'label' adds accuracy",
    )
    add_arch_arguments(p)
    p.add_argument("--report", metavar="REPORT.json", help="write everything measured as JSON")
    p.set_defaults(func=run, field_flags={"eval_data": "--eval", "checkpoint": "--reference"})


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _summary(result, verification, risks) -> list[str]:
    lines = [
        f"int8: {len(result.layers)} layers int8, {len(result.excluded)} float, {result.method} "
        f"calibration on {result.calibration_samples} samples ({result.seconds:.1f} s)"
    ]
    if result.repair is not None:
        r = result.repair
        last = r.steps[-1]
        state = "met" if r.met else "NOT met"
        lines.append(
            f"  repair: top-1 target {r.target:g} {state} on the calibration data "
            f"(agreement {_num(last.top1)}, cosine {last.cosine:.4f}); {r.cost()}"
        )
        names = {s.node: s.module for s in r.sensitivity}
        for node in r.excluded:
            lines.append(f"    kept float: {names.get(node, node)} ({node})")
    flagged = [r for r in risks if r.risk != "low"]
    for risk in flagged:
        lines.append(f"  risk {risk.risk}: {risk.explain(remedies=False)}")
    remedies = list(dict.fromkeys(x for r in flagged for x in r.remedies))
    if remedies:
        lines.append("  remedies: " + "; ".join(remedies))
    if verification is not None:
        top1 = verification.metric("int8 Q/DQ ONNX", "top1")
        cos = verification.metric("int8 Q/DQ ONNX", "cosine")
        lines.append(
            f"  held-out ({verification.samples} samples) vs training model: top-1 agreement "
            f"{_num(top1)}, cosine {cos:.4f} -> {'PASS' if verification.passed else 'FAIL'}"
        )
        acc = verification.accuracy
        if acc:
            ref, q = acc.get("training model"), acc.get("int8 Q/DQ ONNX")
            shown = ", ".join(f"{k} {v:.4f}" for k, v in acc.items())
            lines.append(f"  accuracy: {shown} (int8 - training: {100 * (q - ref):+.2f} points)")
    return lines


def run(args: argparse.Namespace) -> int:
    options = QuantizeOptions(
        method=args.method,
        percentile=args.percentile,
        exclude=args.exclude,
        batch_size=args.batch_size,
        max_samples=args.max_samples,
        target=args.target,
        max_float=args.max_float,
    )
    outcome = quantize_onnx(
        args.onnx,
        args.output,
        args.calib,
        options=options,
        reference=model_source(args, args.reference) if args.reference else None,
        eval_data=args.eval,
        report=args.report,
    )
    if outcome.verification is not None:
        outcome.verification.report.render()
    sys.stdout.write("\n".join(_summary(outcome.result, outcome.verification, outcome.risks)) + "\n")
    if outcome.missed is not None:
        sys.stdout.write(f"int8 model misses the target: nothing was written to {args.output}\n")
        raise outcome.missed
    sys.stdout.write(f"wrote {outcome.written}\n")
    return 0
