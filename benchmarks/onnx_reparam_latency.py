"""Node counts and paired ONNX Runtime latency: training-form ONNX vs its re-parameterized form.

    python benchmarks/onnx_reparam_latency.py [--models acb_resnet18:resnet18,repvgg_a0:repvgg_a0_plain]
        [--size 224] [--batch 1] [--threads 1] [--repeats 100] [--json results.json]

For each ``model:plain`` pair it exports the zoo model in eval mode (BatchNorm statistics random)
with torch.onnx (TorchScript exporter, no constant folding, so every BatchNorm and branch stays),
runs ``reparam.onnx_reparam.convert_onnx`` on it (checked in ONNX Runtime), does the same for the
plain network, and times the three files interleaved in one ONNX Runtime process (all graph
optimizations on, the same input): train, deploy and plain, round by round. Ratios are medians of
per-round ratios, so load on the machine moves both sides of a ratio together.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import torch

from reparam.bench.harness import calibrate_number, run_interleaved
from reparam.numerics import randomize_batchnorm
from reparam.onnx_reparam import convert_onnx
from reparam.runners.onnxruntime_runner import OnnxRuntimeRunner
from reparam.zoo import create_model

ORT_CONFIG = {"session.intra_op.allow_spinning": "0"}


def export_training_form(name: str, path: Path, size: int, seed: int) -> Path:
    model = randomize_batchnorm(create_model(name), seed=seed).eval()
    x = torch.randn(1, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            str(path),
            dynamo=False,
            do_constant_folding=False,
            opset_version=17,
            input_names=["input"],
            dynamic_axes={"input": {0: "batch"}},
        )
    return path


def node_counts(path: Path) -> dict[str, int]:
    counts = Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    return {op: counts.get(op, 0) for op in ("Conv", "BatchNormalization", "Add", "Sum")} | {
        "nodes": sum(counts.values())
    }


def time_files(
    paths: dict[str, Path], batch: int, size: int, threads: int, repeats: int, min_sample_s: float
) -> dict:
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32)
    calls = {}
    for form, path in paths.items():
        runner = OnnxRuntimeRunner(path, optimization="all", threads=threads, config=ORT_CONFIG)
        calls[form] = lambda r=runner: r.run({"input": x})
    for fn in calls.values():  # warm-up
        fn(), fn()
    number = calibrate_number(calls, min_sample_s=min_sample_s)
    timed = run_interleaved(calls, repeats=repeats, warmup=0, number=number)
    return {
        "median_ms": {f: timed.stats(f).median * 1e3 for f in paths},
        "train/deploy": timed.ratio("train", "deploy").median,
        "deploy/plain": timed.ratio("deploy", "plain").median,
        "deploy/plain q1-q3": [timed.ratio("deploy", "plain").q1, timed.ratio("deploy", "plain").q3],
        "rounds": repeats,
        "calls_per_sample": number,
    }


def bench_pair(name: str, plain: str, folder: Path, args: argparse.Namespace) -> dict:
    train = export_training_form(name, folder / f"{name}.train.onnx", args.size, args.seed)
    deploy = convert_onnx(train, folder / f"{name}.deploy.onnx")
    if not deploy.passed:
        raise SystemExit(f"{name}: the converted file failed its check: {deploy.check.to_dict()}")
    plain_train = export_training_form(plain, folder / f"{plain}.train.onnx", args.size, args.seed)
    plain_deploy = convert_onnx(plain_train, folder / f"{plain}.deploy.onnx")
    paths = {"train": train, "deploy": deploy.output, "plain": plain_deploy.output}
    return {
        "model": name,
        "plain": plain,
        "nodes": {form: node_counts(p) for form, p in paths.items()},
        "check_scale_rel": deploy.report.check.relative_error,
        "left_alone": [x.to_dict() for x in deploy.report.left_alone],
        "ort": time_files(paths, args.batch, args.size, args.threads, args.repeats, args.min_sample_ms / 1e3),
    }


def print_result(r: dict) -> None:
    n, t = r["nodes"], r["ort"]
    print(f"{r['model']} (plain: {r['plain']})")
    for form in ("train", "deploy", "plain"):
        c = n[form]
        print(
            f"  {form:6} Conv {c['Conv']:3}  BatchNormalization {c['BatchNormalization']:3}  "
            f"Add {c['Add']:3}  nodes {c['nodes']:4}  ORT {t['median_ms'][form]:8.2f} ms"
        )
    print(f"  check: scale-relative error {r['check_scale_rel']:.2g}; left alone {len(r['left_alone'])}")
    q1, q3 = t["deploy/plain q1-q3"]
    print(
        f"  paired ratios (median of {t['rounds']} rounds): train/deploy {t['train/deploy']:.3f}, "
        f"deploy/plain {t['deploy/plain']:.3f} (q1 {q1:.3f}, q3 {q3:.3f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="acb_resnet18:resnet18,repvgg_a0:repvgg_a0_plain")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument(
        "--min-sample-ms", type=float, default=0.0, help="calls per sample: at least this long"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    results = []
    with tempfile.TemporaryDirectory(prefix="onnx-reparam-bench-") as tmp:
        for pair in args.models.split(","):
            name, _, plain = pair.partition(":")
            results.append(bench_pair(name, plain, Path(tmp), args))
            print_result(results[-1])
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
