"""`reparam quantize`: float deploy ONNX -> explicitly quantized (Q/DQ) int8 ONNX, verified.

Exit codes: 0 written (and verified when --reference is given), 1 the int8 model misses the
agreement target (nothing written), 2 a usage or input error (nothing written).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from reparam.errors import ReparamError

DESCRIPTION = """\
Quantize a float deploy ONNX to int8 with QuantizeLinear/DequantizeLinear nodes (symmetric int8,
per-channel weights, per-tensor activations: what TensorRT 10.1+ and 11 build), calibrated on
--calib. With --reference CKPT --eval HELD_OUT.npz the int8 model is compared with the unfused
training model (int8 profile: top-1 agreement, cosine, per-block error; accuracy when the .npz
holds 'label'). --target makes the most int8-sensitive layers stay float until the top-1
agreement with the float model on the calibration data reaches the target.
"""


def register(subparsers) -> None:
    from reparam.cli.common import add_arch_arguments
    from reparam.quantize.qdq import DEFAULT_PERCENTILE, METHODS

    p = subparsers.add_parser(
        "quantize",
        help="int8 Q/DQ ONNX for TensorRT from a float deploy ONNX, calibrated and verified",
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
    p.set_defaults(func=run)


def _check_args(args: argparse.Namespace) -> None:
    if bool(args.reference) != bool(args.eval):
        raise ReparamError(
            "--reference and --eval go together",
            hint="pass the training checkpoint and a held-out .npz, or neither",
        )
    if args.max_float is not None and args.max_float < 0:
        raise ReparamError(f"--max-float must be >= 0, not {args.max_float}", hint="e.g. --max-float 3")
    if args.max_float is not None and args.target is None:
        raise ReparamError("--max-float only applies with --target", hint="add --target 0.99")
    out = Path(args.output)
    if out.is_dir():
        raise ReparamError(
            f"output {str(out)!r} is a directory", hint="give a file path, e.g. -o model.int8.onnx"
        )


def _reference(args: argparse.Namespace):
    """(training model, held-out batches, labels, rewrite record, deploy module) for verification."""
    import torch

    from reparam.cli.common import load_model_from_args
    from reparam.engine import convert
    from reparam.quantize.calib import load_calibration, load_labels, onnx_input_specs
    from reparam.quantize.qdq import load_onnx

    model = load_model_from_args(args, args.reference)
    specs = onnx_input_specs(load_onnx(args.onnx))
    held_out = load_calibration(args.eval, specs, batch_size=64)
    labels = load_labels(args.eval)
    example = tuple(torch.from_numpy(held_out[0][s.name][:1]) for s in specs)
    converted = convert(model, example, check=False)
    return model, held_out, labels, converted.record, converted.model


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
    from reparam.quantize.evaluate import verify_int8
    from reparam.quantize.write import quantize
    from reparam.verify.quant import quantization_risk

    _check_args(args)
    ref = _reference(args) if args.reference else None
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        staged = tmp / out.name
        result = quantize(
            args.onnx,
            staged,
            args.calib,
            method=args.method,
            percentile=args.percentile,
            exclude=args.exclude,
            batch_size=args.batch_size,
            max_samples=args.max_samples,
            repair_target=args.target,
            max_float=args.max_float,
        )
        verification, risks = None, []
        if ref is not None:
            model, held_out, labels, record, deploy = ref
            risks = quantization_risk(model, deploy, record)
            verification = verify_int8(
                model,
                staged,
                held_out,
                labels=labels,
                float_onnx=args.onnx,
                target=args.target,
                reference_name=str(args.reference),
                inputs_info={
                    "source": str(args.eval),
                    "samples": sum(len(b[next(iter(b))]) for b in held_out),
                },
            )
            verification.report.render()
        sys.stdout.write("\n".join(_summary(result, verification, risks)) + "\n")
        ok = (verification is None or verification.passed) and (result.repair is None or result.repair.met)
        result.path = out if ok else None
        if args.report:
            _write_report(args.report, result, verification, risks)
        if not ok:
            sys.stdout.write(f"int8 model misses the target: nothing was written to {out}\n")
            raise _missed(result, verification)
        staged.replace(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    sys.stdout.write(f"wrote {out}\n")
    return 0


def _missed(result, verification) -> ReparamError:
    """Why the int8 model was not written, and what to try next (exit 1)."""
    from reparam.errors import MismatchError

    repair = result.repair
    if repair is not None and not repair.met:
        return MismatchError(
            f"top-1 target {repair.target:g} not met on the calibration data ({repair.cost()})",
            hint="allow more float layers (--max-float), lower --target, or try --method percentile",
        )
    top1 = _num(verification.metric("int8 Q/DQ ONNX", "top1"))
    if repair is not None:
        margin = repair.target + (1.0 - repair.target) / 2
        return MismatchError(
            f"top-1 target {repair.target:g} was met on the {result.calibration_samples} calibration "
            f"samples but not on the held-out data (agreement {top1}): the calibration data does not "
            "show what int8 does to the held-out data",
            hint=f"calibrate on more, more varied samples (--calib; the target is judged on them), or "
            f"ask for a margin: --target {margin:g} keeps more layers float",
        )
    return MismatchError(
        f"the int8 model misses the int8 profile on the held-out data (top-1 agreement {top1})",
        hint=f"keep the most int8-sensitive layers float: add --target "
        f"{verification.report.tolerance.profile.min_top1 or 0.99:g}",
    )


def _write_report(path: str, result, verification, risks) -> None:
    from reparam.io import atomic_write_text

    payload: dict[str, Any] = {
        "quantization": result.to_dict(),
        "verification": verification.to_dict() if verification is not None else None,
        "quantization_risk": [r.to_dict() for r in risks],
    }
    atomic_write_text(path, json.dumps(payload, indent=2, default=str) + "\n")
