"""ACNet's whole workflow on real data: plain network -> expand -> train -> fuse back into the plain class.

    python examples/acnet_expand_demo.py --seeds 0,1,2 --epochs 8

For each seed, one randomly initialised plain network (``resnet56_cifar`` at depth 8, the digits
demo's network without ACBs) is trained twice with the same data order, augmentation and budget:

- as it is (the baseline);
- expanded with ``reparam.expand(..., scheme="acb", init="fresh")`` (every 3×3 conv-BN becomes an
  ACB), trained, fused with ``reparam.reparameterize`` and handed back as weights of the plain
  class with ``plain_weights``.

It prints the test accuracy of both plain networks per seed and their mean, and writes the
numbers to ``--out`` (JSON). The digits ship with scikit-learn, so nothing is downloaded.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from digits_demo import evaluate, load_digits_split, train  # noqa: E402

import reparam  # noqa: E402
from reparam.errors import ReparamError  # noqa: E402
from reparam.expansion import plain_weights  # noqa: E402
from reparam.io import atomic_write_text  # noqa: E402
from reparam.numerics import scale_relative_error  # noqa: E402
from reparam.zoo import create_model  # noqa: E402

ARCH, ARCH_KWARGS = "resnet56_cifar", {"depth": 8, "width": 1.0, "in_chans": 1, "num_classes": 10}


def run_seed(seed: int, data, epochs: int, scheme: str) -> dict:
    """Train the plain network and its expansion from the same initial weights; fuse; evaluate both."""
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(seed)
    start = create_model(ARCH, **ARCH_KWARGS)
    t0 = time.perf_counter()
    baseline = train(copy.deepcopy(start), x_train, y_train, epochs=epochs, seed=seed)
    t1 = time.perf_counter()
    expanded, report = reparam.expand(start, scheme, init="fresh", example_inputs=x_test[:4])
    expanded = train(expanded, x_train, y_train, epochs=epochs, seed=seed)
    t2 = time.perf_counter()
    handed_back = plain_weights(expanded, create_model(ARCH, **ARCH_KWARGS), example_inputs=x_test[:64])
    with torch.no_grad():
        fused_error = scale_relative_error(expanded(x_test), handed_back.model(x_test))
    return {
        "seed": seed,
        "plain_accuracy": evaluate(baseline, x_test, y_test),
        "expanded_accuracy": evaluate(expanded, x_test, y_test),
        "fused_plain_accuracy": evaluate(handed_back.model, x_test, y_test),
        "fused_vs_expanded_error": fused_error,
        "expanded_convs": len(report.expanded),
        "train_seconds_plain": round(t1 - t0, 1),
        "train_seconds_expanded": round(t2 - t1, 1),
    }


def _summary(rows: list[dict], key: str) -> str:
    values = [r[key] for r in rows]
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {spread:.4f}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--epochs", type=int, default=8, help="epochs per training run (default 8)")
    parser.add_argument("--scheme", default="acb", help="expansion scheme (default acb)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--out", type=Path, default=Path("demo-output/expand_demo.json"), help="results JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run every seed, print a table and write the results JSON."""
    args = parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        torch.set_num_threads(args.threads)
        data = load_digits_split(seed=0)
        rows = []
        print(f"{ARCH} {ARCH_KWARGS}, {args.epochs} epochs, scheme {args.scheme}")
        print(
            "seed  plain-trained  expanded-trained  fused into plain  |fused-expanded|  time plain/expanded"
        )
        for seed in seeds:
            r = run_seed(seed, data, args.epochs, args.scheme)
            rows.append(r)
            print(
                f"{seed:>4}  {r['plain_accuracy']:>13.4f}  {r['expanded_accuracy']:>16.4f}  "
                f"{r['fused_plain_accuracy']:>16.4f}  {r['fused_vs_expanded_error']:>15.2e}  "
                f"{r['train_seconds_plain']:>6.1f} s / {r['train_seconds_expanded']:.1f} s"
            )
    except (ReparamError, ValueError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    print(
        f"mean  plain {_summary(rows, 'plain_accuracy')}   fused ACB-trained {_summary(rows, 'fused_plain_accuracy')}"
    )
    result = {
        "arch": ARCH,
        "arch_kwargs": ARCH_KWARGS,
        "epochs": args.epochs,
        "scheme": args.scheme,
        "runs": rows,
    }
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
