"""The deploy program's capture with batch, height and width free, with and without dynamo's
fake-tensor cache (`reparam.torch_compat.fake_tensor_cache_off`).

    python benchmarks/free_axes_capture.py [--model acb_resnet50] [--size 224] [--rounds 3]

The zoo model is converted once; then `reparam.artifact.export_program` (torch.export with every
varying axis free, the batch-1 path check, the fixed-axes read-back: what `reparam deploy` runs
for model.pt2) runs alternately with the cache off, as reparam runs it, and on, in one process,
each call after ``gc.collect()``, after one untimed call. Prints the median time of each and the
median of the per-round ratios (off / on), and checks that both write the same program.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import statistics
import time

import torch

from reparam import dynamic_shapes
from reparam.artifact import export_program
from reparam.engine import convert
from reparam.numerics import randomize_batchnorm
from reparam.zoo import create_model


def _captured(model: torch.nn.Module, x: torch.Tensor, cache_off: bool) -> tuple[float, bytes]:
    """Seconds of one capture, and the program's bytes (written after the clock stops)."""
    real = dynamic_shapes.fake_tensor_cache_off
    dynamic_shapes.fake_tensor_cache_off = real if cache_off else contextlib.nullcontext
    try:
        gc.collect()
        start = time.perf_counter()
        program = export_program(model, (x,)).program
        spent = time.perf_counter() - start
    finally:
        dynamic_shapes.fake_tensor_cache_off = real
    buf = io.BytesIO()
    torch.export.save(program, buf)
    return spent, buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="acb_resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = randomize_batchnorm(create_model(args.model).eval(), seed=0)
    x = torch.randn(1, 3, args.size, args.size)
    deploy = convert(model, (x,), check=False).model
    _captured(deploy, x, cache_off=True)  # torch.export's first use imports dynamo
    off: list[float] = []
    on: list[float] = []
    for _ in range(args.rounds):
        spent_off, written_off = _captured(deploy, x, cache_off=True)
        spent_on, written_on = _captured(deploy, x, cache_off=False)
        if written_off != written_on:
            raise SystemExit("the captures with and without the cache wrote other programs")
        off.append(spent_off)
        on.append(spent_on)
    ratios = sorted(a / b for a, b in zip(off, on))
    print(f"{args.model} at {args.size}x{args.size}, {args.rounds} paired rounds, torch {torch.__version__}")
    print(
        f"capture: cache on {statistics.median(on):.2f} s, cache off {statistics.median(off):.2f} s, "
        f"off/on {statistics.median(ratios):.2f} [{ratios[0]:.2f}-{ratios[-1]:.2f}]"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
