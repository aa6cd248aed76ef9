"""`reparam bench`: latency of training / deploy / plain forms and the cost of conversion."""

from __future__ import annotations

import argparse
import sys

from reparam.bench import (
    DEFAULT_CONVERSION_MODELS,
    DEFAULT_MODELS,
    BenchOptions,
    render_console,
    render_markdown,
    run_bench,
    usable_cpus,
)
from reparam.bench.latency import parse_backends
from reparam.cli.commands import SUMMARIES
from reparam.cli.common import parse_shape
from reparam.errors import ReparamError
from reparam.io import atomic_write_text
from reparam.zoo import model_info

# --quick: tiny widths and inputs, few repeats; proves the command works, says nothing about speed.
QUICK = {
    "width": 0.25,
    "input_shape": "1x3x32x32",
    "batch": "1",
    "repeats": 3,
    "warmup": 1,
    "conversion_models": "acb_resnet50",
    "conversion_width": 0.25,
    "conversion_input_shape": "1x3x64x64",
    "conversion_runs": 1,
}
FULL = {
    "width": 1.0,
    "input_shape": None,
    "batch": "1,8",
    "repeats": 30,
    "warmup": 5,
    "conversion_models": None,
    "conversion_width": 1.0,
    "conversion_input_shape": "1x3x224x224",
    "conversion_runs": 3,
}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help=SUMMARIES["bench"],
        description="Measure, for each multi-branch zoo model, the latency of its training form, its deploy "
        "form and its plain counterpart (BN folded by the same engine) in PyTorch eager and ONNX Runtime "
        "(optimizations ALL and DISABLE), interleaved, with paired ratios; and the cost of conversion "
        "(time by phase, peak memory, ONNX export) in fresh processes. Targets are reported, not asserted. "
        "Absolute numbers are only meaningful on a quiet machine.",
    )
    parser.add_argument(
        "models",
        nargs="*",
        metavar="MODEL",
        help="zoo models with a plain counterpart (default: acb_resnet18 repvgg_a0 acb_resnet56_cifar)",
    )
    parser.add_argument(
        "--backend",
        default="torch,ort",
        help="comma list of torch, ort (= ort-all and ort-disable), ort-all, ort-disable (default torch,ort)",
    )
    parser.add_argument("--batch", help="comma list of batch sizes (default 1,8)")
    parser.add_argument(
        "--threads", type=int, help="torch and ONNX Runtime intra-op threads (default: usable CPUs)"
    )
    parser.add_argument(
        "--input-shape",
        metavar="NxCxHxW",
        help="input for every model; N is the batch unless --batch is given "
        "(default: 1x3x224x224, 1x3x32x32 for CIFAR models, with --batch 1,8)",
    )
    parser.add_argument("--repeats", type=int, help="timed rounds per cell (default 30)")
    parser.add_argument("--warmup", type=int, help="untimed warm-up rounds per cell (default 5)")
    parser.add_argument("--width", type=float, help="channel multiplier of the latency models (default 1.0)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny widths and inputs, few repeats: checks the command works, not the speed",
    )
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--conversion", action="store_true", help="only measure the conversion cost")
    only.add_argument("--latency", action="store_true", help="only measure latency")
    parser.add_argument(
        "--conversion-models",
        help="comma list for the conversion cost (default acb_resnet50,sknet50,se_resnet50,scalenet50)",
    )
    parser.add_argument(
        "--conversion-width", type=float, help="channel multiplier for the conversion cost (default 1.0)"
    )
    parser.add_argument(
        "--conversion-input-shape", help="NxCxHxW for the conversion cost (default 1x3x224x224)"
    )
    parser.add_argument(
        "--conversion-runs",
        type=int,
        help="conversions per model in its process; times are the median run's, memory the highest (default 3)",
    )
    parser.add_argument(
        "--no-export", action="store_true", help="skip the ONNX export timing of the conversion cost"
    )
    parser.add_argument(
        "--no-timm", action="store_true", help="skip the timm RepVGG comparison even if timm is importable"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for weights, BN statistics and inputs (default 0)"
    )
    parser.add_argument(
        "--deploy",
        action="store_true",
        help="also time `reparam deploy` against its parts, each a whole process (paired rounds)",
    )
    parser.add_argument(
        "--deploy-model", default="acb_resnet50", help="zoo model for --deploy (default acb_resnet50)"
    )
    parser.add_argument("--deploy-rounds", type=int, default=2, help="paired rounds for --deploy (default 2)")
    parser.add_argument(
        "--verify-stream",
        action="store_true",
        help="also time streaming verify against the raw runtimes (paired rounds)",
    )
    parser.add_argument(
        "--verify-samples", type=int, default=1000, help="inputs for --verify-stream (default 1000)"
    )
    parser.add_argument("--out", help="write the results as markdown to this file")
    parser.add_argument(
        "--report", metavar="FILE", help="write the results (with every sample) as JSON to this file"
    )
    parser.add_argument(
        "--json", action="store_true", help="print the results as JSON on stdout instead of the table"
    )
    parser.set_defaults(func=run)


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise ReparamError(
            f"invalid {what} {text!r}", hint=f"give positive integers separated by commas, e.g. --{what} 1,8"
        )
    return values


def _nchw(text: str) -> tuple[int, tuple[int, int, int]]:
    """``--input-shape NxCxHxW`` as (N, (C, H, W)); N is the batch unless --batch is given."""

    dims = parse_shape(text)
    if len(dims) != 4:
        raise ReparamError(
            f"--input-shape {text!r} must be NxCxHxW, like every command's",
            hint="e.g. --input-shape 1x3x224x224 (N is the batch; --batch 1,8 measures several)",
        )
    return dims[0], dims[1:]  # type: ignore[return-value]


def _options(args: argparse.Namespace):
    base = QUICK if args.quick else FULL

    def pick(name: str):
        value = getattr(args, name)
        return base[name] if value is None else value

    for name, low in (("repeats", 1), ("warmup", 0), ("threads", 1), ("conversion_runs", 1)):
        value = getattr(args, name)
        if value is not None and value < low:
            flag = "--" + name.replace("_", "-")
            raise ReparamError(
                f"{flag} must be at least {low}, got {value}", hint=f"e.g. {flag} {max(low, 2)}"
            )
    for name in ("width", "conversion_width"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise ReparamError(
                f"--{name.replace('_', '-')} must be positive, got {value}", hint="e.g. 0.25 or 1.0"
            )
    models = args.models or list(DEFAULT_MODELS)
    conv_models = (
        [m.strip() for m in pick("conversion_models").split(",") if m.strip()]
        if pick("conversion_models")
        else list(DEFAULT_CONVERSION_MODELS)
    )
    latency, conversion = not args.conversion, not args.latency
    for name in (models if latency else []) + (conv_models if conversion else []):
        model_info(name)  # unknown names: ReparamError with close matches, before anything runs
    if latency:
        for name in models:
            if not model_info(name)["counterpart"]:
                raise ReparamError(
                    f"model {name!r} has no plain counterpart, so deploy/plain cannot be measured",
                    hint="benchmark multi-branch models such as acb_resnet18, repvgg_a0, acb_resnet56_cifar",
                )
    conv_input = parse_shape(pick("conversion_input_shape"))
    if len(conv_input) != 4:
        raise ReparamError(
            f"--conversion-input-shape must be NxCxHxW, got {pick('conversion_input_shape')!r}",
            hint="e.g. --conversion-input-shape 1x3x224x224",
        )
    shape = pick("input_shape")
    batch, chw = _nchw(shape) if shape else (None, None)
    batches = pick("batch") if args.batch is not None or batch is None else str(batch)
    return BenchOptions(
        models=models,
        backends=parse_backends(args.backend),
        batches=_int_list(batches, "batch"),
        threads=args.threads or usable_cpus(),
        input_chw=chw,
        repeats=pick("repeats"),
        warmup=pick("warmup"),
        width=pick("width"),
        latency=latency,
        conversion=conversion,
        conversion_models=conv_models,
        conversion_width=pick("conversion_width"),
        conversion_input=conv_input,  # type: ignore[arg-type]
        conversion_runs=pick("conversion_runs"),
        export=not args.no_export,
        timm=not args.no_timm,
        seed=args.seed,
        deploy=args.deploy,
        deploy_model=args.deploy_model,
        deploy_rounds=max(1, args.deploy_rounds),
        verify=args.verify_stream,
        verify_samples=max(1, args.verify_samples),
    )


def run(args: argparse.Namespace) -> int:
    options = _options(args)

    def progress(message: str) -> None:
        sys.stderr.write(f"[bench] {message}\n")
        sys.stderr.flush()

    results = run_bench(options, progress=progress)
    if args.quick:
        results.judged = False
        results.notes.append(
            "--quick: tiny widths and inputs, few repeats; the numbers say nothing about speed"
        )
    # with --json, stdout carries the JSON only; everything else goes to stderr
    sys.stdout.write((results.to_json() if args.json else render_console(results)) + "\n")
    said = sys.stderr if args.json else sys.stdout
    if args.out:
        atomic_write_text(args.out, render_markdown(results) + "\n")
        said.write(f"wrote {args.out}\n")
    if args.report:
        atomic_write_text(args.report, results.to_json() + "\n")
        said.write(f"wrote {args.report}\n")
    return 0
