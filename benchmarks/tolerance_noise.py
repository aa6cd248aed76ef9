"""The measurements behind the fp32 tolerance (docs/verify.md, README "Tolerances").

    python benchmarks/tolerance_noise.py [--width 0.25] [--size 32] [--samples 4] [--seed 0]

For every zoo model (BN affine parameters random, running statistics measured on random data) it
prints, as scale-relative errors ``max|ref - x| / max|ref|`` against the fp32 training model:

- deploy: the converted deploy model (PyTorch); onnx: its ONNX export in ONNX Runtime;
- noise: the training model's own fp32 rounding error, measured against it in float64;
- limit: the fp32 profile's limit, max(1e-5, 10 x noise);
- 1 % off: the deploy model with one output channel of its last conv scaled by 1.01 (a small
  real fusion bug), to show how far above the limit such a bug lands.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import torch

from reparam.engine import reparameterize
from reparam.equivalence import fp32_noise
from reparam.numerics import calibrate_batchnorm, fp32_limit, scale_relative_error
from reparam.zoo import create_model, list_models


@torch.no_grad()
def measure(
    name: str, width: float, size: int, samples: int, seed: int = 0, onnx: bool = True
) -> dict[str, float]:
    """Scale-relative errors of one zoo model (see the module docstring)."""
    torch.manual_seed(seed)
    model = calibrate_batchnorm(create_model(name, width=width, num_classes=10), seed, (8, 3, size, size))
    x = torch.randn(samples, 3, size, size, generator=torch.Generator().manual_seed(seed + 2))
    ref = model(x).numpy()
    noise = fp32_noise(model, (x,), torch.from_numpy(ref))
    deploy = reparameterize(model, (x[:1],), check=False)
    broken = copy.deepcopy(deploy)
    last = [m for m in broken.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    last.weight[0].mul_(1.01)
    out = {}
    if onnx:
        from reparam.exporters.onnx import export_onnx
        from reparam.runners import OnnxRuntimeRunner

        with tempfile.TemporaryDirectory() as tmp:
            export_onnx(deploy, (x[:1],), Path(tmp) / "m.onnx")
            got = OnnxRuntimeRunner(Path(tmp) / "m.onnx").run({"input": x.numpy()})
        out["onnx"] = scale_relative_error(ref, next(iter(got.values())))
    return {
        **out,
        "deploy": scale_relative_error(ref, deploy(x).numpy()),
        "noise": noise,
        "limit": fp32_limit(noise),
        "1 % off": scale_relative_error(ref, broken(x).numpy()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--size", type=int, default=32, help="input height and width")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, BN statistics and inputs")
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime column")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    columns = ["deploy", *([] if args.no_onnx else ["onnx"]), "noise", "limit", "1 % off"]
    print(f"zoo models at width {args.width}, {args.samples}x3x{args.size}x{args.size} inputs\n")
    print("| model | " + " | ".join(columns) + " | within limit |")
    print("|---" * (len(columns) + 2) + "|")
    for name in list_models():
        r = measure(name, args.width, args.size, args.samples, args.seed, onnx=not args.no_onnx)
        cells = " | ".join(f"{r[c]:.1e}" for c in columns)
        within = max(r["deploy"], r.get("onnx", 0.0)) <= r["limit"]
        print(f"| {name} | {cells} | {'yes' if within else 'NO'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
