"""ScaleNet's data-driven neuron allocation on scikit-learn's digits, against a uniform allocation.

    python examples/scalenet_slim_demo.py --out slim-demo-output

Train an over-provisioned ScaleNet-26 seed once (every scale of every SA block gets half of the
block's ResNet channels: 2× the equal split), slim it with ``reparam.slim`` to the MACs of the
equally split ScaleNet-26, then, for each training seed, train the slim network from scratch (the
paper's variant) and the equally split one the same way (same data, seed and recipe). Prints and
writes a table of test accuracies (``results.json``, ``results.md``) and the slim outputs
(``slim.pth`` with the untrained slim weights, ``slim.structure.json``, ``slim.report.*``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from reparam.errors import ReparamError
from reparam.io import atomic_write_text
from reparam.profile import count_macs, count_params
from reparam.slim import slim_model, write_outputs
from reparam.slim.io import output_paths
from reparam.zoo import create_model
from reparam.zoo.scalenet import uniform_structure

sys.path.insert(0, str(Path(__file__).resolve().parent))
from digits_demo import evaluate, load_digits_split, train  # noqa: E402

ARCH = "scalenet26"


def kwargs_for(structure: list[list[int]], width: float) -> dict:
    """Architecture kwargs of a one-channel, ten-class ScaleNet-26 with ``structure``."""
    return {"structure": structure, "width": width, "in_chans": 1, "num_classes": 10}


def train_new(kwargs: dict, data, epochs: int, seed: int) -> tuple[torch.nn.Module, float]:
    """Build from ``kwargs`` with ``seed``, train, return the model and its test accuracy."""
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(seed)
    model = create_model(ARCH, **kwargs)
    train(model, x_train, y_train, epochs=epochs, seed=seed)
    return model, evaluate(model, x_test, y_test)


def learn_allocation(args: argparse.Namespace, data):
    """Train the over-provisioned seed once and slim it to the equal split's MACs (from scratch variant)."""
    shape = (1, 1, args.size, args.size)
    uniform_kw = kwargs_for(uniform_structure(ARCH, args.width, 1.0, args.size), args.width)
    seed_kw = kwargs_for(uniform_structure(ARCH, args.width, args.over, args.size), args.width)
    uniform = create_model(ARCH, **uniform_kw).eval()
    budget_macs = count_macs(uniform, (torch.zeros(shape),))

    seed_model, seed_acc = train_new(seed_kw, data, args.epochs, args.seeds[0])
    result = slim_model(seed_model, ARCH, seed_kw, f"{budget_macs / 1e3}K", input_shape=shape, reinit=True)
    result.report["seed_test_accuracy"] = seed_acc
    result.report["uniform_params"] = count_params(uniform)
    return result, uniform_kw, budget_macs


def compare(seed: int, args: argparse.Namespace, data, slim_kw: dict, uniform_kw: dict) -> dict:
    """Train the slim and the uniform network from scratch with the same seed and recipe."""
    _, slim_acc = train_new(slim_kw, data, args.epochs, seed)
    _, uniform_acc = train_new(uniform_kw, data, args.epochs, seed)
    return {"seed": seed, "slim_acc": slim_acc, "uniform_acc": uniform_acc}


def table(rows: list[dict], report: dict, uniform_macs: int) -> str:
    """Markdown table: one row per training seed, then the mean and standard deviation, then MACs."""
    lines = ["| training seed | slim allocation | uniform allocation |", "|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['slim_acc']:.2%} | {r['uniform_acc']:.2%} |")
    if len(rows) > 1:
        stats = [
            (statistics.mean(r[c] for r in rows), statistics.stdev(r[c] for r in rows))
            for c in ("slim_acc", "uniform_acc")
        ]
        lines.append("| mean ± sd | " + " | ".join(f"{m:.2%} ± {s:.2%}" for m, s in stats) + " |")
    lines.append(f"| MACs | {report['macs']:,} | {uniform_macs:,} |")
    lines.append(f"| parameters | {report['params']:,} | {report['uniform_params']:,} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("slim-demo-output"), help="output directory")
    parser.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--over", type=float, default=2.0, help="seed over-provisioning (× the equal split)")
    parser.add_argument("--size", type=int, default=24, help="digits are upsampled to size×size")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    try:
        data = load_digits_split(0, size=args.size)
        result, uniform_kw, uniform_macs = learn_allocation(args, data)
        write_outputs(result, output_paths(args.out / "slim.pth", None, None))
        rows = [compare(s, args, data, result.arch_kwargs, uniform_kw) for s in args.seeds]
    except ReparamError as exc:
        sys.stderr.write(f"error: {exc.message}\n" + (f"  hint: {exc.hint}\n" if exc.hint else ""))
        return 2
    r = result.report
    text = (
        f"seed: {r['seed_macs']:,} MACs, {r['seed_params']:,} parameters, "
        f"test accuracy {r['seed_test_accuracy']:.2%}\n\n" + table(rows, r, uniform_macs)
    )
    elapsed = time.perf_counter() - start
    sys.stdout.write(
        text + f"\n{len(args.seeds)} training seeds, {args.epochs} epochs each, {elapsed:.0f} s\n"
    )
    setup = {k: v for k, v in vars(args).items() if k != "out"}
    payload = {"setup": setup, "seed_accuracy": r["seed_test_accuracy"], "rows": rows, "elapsed_s": elapsed}
    payload |= {"slim_macs": r["macs"], "uniform_macs": uniform_macs, "slim_structure": result.structure}
    payload |= {"slim_params": r["params"], "uniform_params": r["uniform_params"]}
    atomic_write_text(args.out / "results.json", json.dumps(payload, indent=2) + "\n")
    atomic_write_text(args.out / "results.md", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
