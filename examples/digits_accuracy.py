"""Test accuracy of the training checkpoint and of every artifact ``reparam deploy`` wrote for it.

    python examples/digits_accuracy.py demo-output/acb.pth demo-output/acb-deploy \\
        --data demo-output/digits_test.npz

Runs the training-form model (PyTorch, eval mode), ``model.pt2`` (PyTorch) and ``model.onnx`` (ONNX
Runtime) over the labelled test split and prints one row per artifact: accuracy, predictions that
differ from the training model's, and the largest logit difference. Exit code 1 if an fp32
artifact's accuracy differs from the training model's (fp16 ones are reported, not judged).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from reparam.checkpoint import load_model
from reparam.errors import ReparamError
from reparam.runners import runner_for

ARTIFACTS = ("model.pt2", "model.onnx", "model.fp16.onnx")


def logits(runner, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Run ``runner`` over ``images`` in batches; returns the concatenated first output."""
    name = runner.input_names[0]
    outs = [
        next(iter(runner.run({name: images[i : i + batch_size]}).values()))
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(outs).astype(np.float64)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="training checkpoint (records its architecture)")
    parser.add_argument("deploy_dir", type=Path, help="directory written by `reparam deploy`")
    parser.add_argument("--data", type=Path, required=True, help=".npz with 'input' and 'label'")
    args = parser.parse_args(argv)
    try:
        data = np.load(args.data)
        images, labels = data["input"].astype(np.float32), data["label"]
        torch.set_num_threads(2)
        reference = logits(runner_for(load_model(args.checkpoint)), images)
        rows = [("training model (PyTorch)", reference)]
        for name in ARTIFACTS:
            path = args.deploy_dir / name
            if path.exists():
                backend = "ONNX Runtime" if path.suffix == ".onnx" else "PyTorch"
                rows.append((f"{name} ({backend})", logits(runner_for(str(path)), images)))
    except (ReparamError, OSError, KeyError) as exc:
        message = getattr(exc, "message", str(exc))
        sys.stderr.write(f"error: {message}\n")
        return 2
    if len(rows) == 1:
        sys.stderr.write(f"error: no model.pt2 / model.onnx in {args.deploy_dir}\n")
        return 2

    ref_pred = reference.argmax(1)
    ref_acc = float((ref_pred == labels).mean())
    print(f"{args.checkpoint.name}: {len(labels)} test images")
    print(f"  {'model':<30} {'accuracy':>9} {'predictions changed':>20} {'max |logit diff|':>17}")
    same = True
    for label, out in rows:
        pred = out.argmax(1)
        acc = float((pred == labels).mean())
        if "fp16" not in label:  # fp16 may legitimately flip a borderline prediction
            same &= acc == ref_acc
        print(
            f"  {label:<30} {acc:>9.4f} {int((pred != ref_pred).sum()):>20d} {np.abs(out - reference).max():>17.2e}"
        )
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
