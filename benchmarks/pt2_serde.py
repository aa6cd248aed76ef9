"""Writing and reading a deploy ``.pt2`` with and without `reparam.torch_compat.program_serde_memoized`.

    python benchmarks/pt2_serde.py [--model acb_resnet50] [--size 224] [--rounds 5]

The zoo model is converted and its deploy program captured once (batch, height and width free, as
`reparam deploy` writes it); then ``torch.export.save`` and ``torch.export.load`` run alternately
as torch ships them and inside the memoizing context, in one process, each call after
``gc.collect()``. Prints the median time of each and the median of the per-round ratios
(memoized / plain), and checks that both write the same bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import statistics
import time
from collections.abc import Callable

import torch

from reparam.artifact import export_program
from reparam.engine import convert
from reparam.numerics import randomize_batchnorm
from reparam.torch_compat import program_serde_memoized
from reparam.zoo import create_model


def _timed(call: Callable[[], object], memoized: bool) -> tuple[float, object]:
    gc.collect()
    context = program_serde_memoized() if memoized else contextlib.nullcontext()
    with context:
        start = time.perf_counter()
        out = call()
        return time.perf_counter() - start, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="acb_resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = randomize_batchnorm(create_model(args.model).eval(), seed=0)
    x = torch.randn(1, 3, args.size, args.size)
    program = export_program(convert(model, (x,), check=False).model, (x,)).program

    def save() -> bytes:
        buf = io.BytesIO()
        torch.export.save(program, buf)
        return buf.getvalue()

    data = save()
    times: dict[str, list[float]] = {k: [] for k in ("save", "save memo", "load", "load memo")}
    for _ in range(args.rounds):
        for memoized in (False, True):
            spent, written = _timed(save, memoized)
            times["save memo" if memoized else "save"].append(spent)
            if written != data:
                raise SystemExit("the memoized save wrote other bytes")
            spent, _ = _timed(lambda: torch.export.load(io.BytesIO(data)), memoized)
            times["load memo" if memoized else "load"].append(spent)
    print(f"{args.model} at {args.size}x{args.size}, {args.rounds} paired rounds, {len(data) / 1e6:.0f} MB")
    for step in ("save", "load"):
        plain, memo = times[step], times[f"{step} memo"]
        ratios = sorted(m / p for m, p in zip(memo, plain))
        print(
            f"{step}: plain {statistics.median(plain):.2f} s, memoized {statistics.median(memo):.2f} s, "
            f"memoized/plain {statistics.median(ratios):.2f} [{ratios[0]:.2f}-{ratios[-1]:.2f}]"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
