"""Train two small re-parameterizable networks on scikit-learn's digits and save checkpoints.

    python examples/digits_demo.py --out demo-output

Trains an ACB network (``acb_resnet56_cifar`` at depth 8, i.e. one ACB basic block per stage) and
an SE network (``se_resnet18`` at width 0.25) on the 8×8 digits upsampled to 16×16, with a fixed
seed, and writes to ``--out``:

- ``acb.pth``, ``se.pth``: ``{"arch", "arch_kwargs", "state_dict"}`` checkpoints (``torch.save``,
  loadable with ``weights_only=True``);
- ``digits_test.npz``: the test split, ``input`` (float32 NCHW) and ``label`` (int64);
- ``digits_calib.npz``: the first 256 training images (``input``), int8 calibration data that is
  not the test split.

The digits ship with scikit-learn, so nothing is downloaded.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reparam.errors import ReparamError, require
from reparam.io import atomic_path
from reparam.zoo import create_model

IMAGE_SIZE = 16
CALIBRATION_SAMPLES = 256

# name -> (zoo architecture, its keyword arguments, epochs)
MODELS: dict[str, tuple[str, dict, int]] = {
    "acb": ("acb_resnet56_cifar", {"depth": 8, "width": 1.0, "in_chans": 1, "num_classes": 10}, 12),
    "se": ("se_resnet18", {"width": 0.25, "in_chans": 1, "num_classes": 10}, 12),
}


def load_digits_split(
    seed: int = 0, test_fraction: float = 0.2, size: int = IMAGE_SIZE
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The digits as ``(x_train, y_train, x_test, y_test)``: float32 ``N×1×size×size`` in [0, 1], int64 labels.

    The split is stratified and fixed by ``seed``; images are bilinearly upsampled from 8×8.
    """
    datasets = require("sklearn.datasets", "examples", "the digits demo")
    model_selection = require("sklearn.model_selection", "examples", "the digits demo")
    digits = datasets.load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    if size != 8:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    idx_train, idx_test = model_selection.train_test_split(
        np.arange(len(labels)), test_size=test_fraction, random_state=seed, stratify=digits.target
    )
    idx_train, idx_test = torch.from_numpy(idx_train), torch.from_numpy(idx_test)
    return images[idx_train], labels[idx_train], images[idx_test], labels[idx_test]


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int = 12,
    batch_size: int = 64,
    lr: float = 0.01,
    seed: int = 0,
) -> nn.Module:
    """Train with AdamW and a one-cycle schedule; random 1-pixel shifts as augmentation. Returns the model in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    steps_per_epoch = (len(x) + batch_size - 1) // batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch_size):
            batch = order[i : i + batch_size]
            if len(batch) < 2:  # BatchNorm needs two samples in training mode
                continue
            dx, dy = torch.randint(-1, 2, (2,), generator=gen).tolist()
            xb = torch.roll(x[batch], shifts=(dx, dy), dims=(2, 3))
            loss = F.cross_entropy(model(xb), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` (put in eval mode) on ``(x, y)``."""
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
    return correct / len(x)


def save_checkpoint(model: nn.Module, arch: str, arch_kwargs: dict, path: Path) -> None:
    """Write a ``{"arch", "arch_kwargs", "state_dict"}`` checkpoint atomically."""
    with atomic_path(path) as tmp:
        torch.save({"arch": arch, "arch_kwargs": dict(arch_kwargs), "state_dict": model.state_dict()}, tmp)


def save_test_split(x: torch.Tensor, y: torch.Tensor, path: Path) -> None:
    """Write the test split as ``.npz`` with ``input`` (float32 NCHW) and ``label`` (int64), atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, input=x.numpy().astype(np.float32), label=y.numpy().astype(np.int64))


def save_calibration_split(x: torch.Tensor, path: Path, count: int = CALIBRATION_SAMPLES) -> None:
    """Write the first ``count`` training images as ``.npz`` (``input``), atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, input=x[:count].numpy().astype(np.float32))


def train_and_save(
    name: str, data, out: Path, seed: int = 0, epochs: int | None = None
) -> tuple[Path, float]:
    """Build, train, evaluate and save one of ``MODELS``; returns the checkpoint path and test accuracy."""
    arch, arch_kwargs, default_epochs = MODELS[name]
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(seed)
    model = create_model(arch, **arch_kwargs)
    train(model, x_train, y_train, epochs=epochs or default_epochs, seed=seed)
    accuracy = evaluate(model, x_test, y_test)
    path = out / f"{name}.pth"
    save_checkpoint(model, arch, arch_kwargs, path)
    return path, accuracy


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None, help="override the per-model epoch count")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument(
        "--models", default="acb,se", help=f"comma-separated subset of {', '.join(MODELS)} (default: all)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Train the demo models, print their test accuracy and write checkpoints and the test split."""
    args = parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    try:
        if unknown or not names:
            raise ReparamError(
                f"unknown demo model(s): {', '.join(unknown) or '(none)'}",
                hint=f"choose from {', '.join(MODELS)}",
            )
        torch.set_num_threads(args.threads)
        data = load_digits_split(seed=args.seed)
    except ReparamError as exc:
        sys.stderr.write(f"error: {exc.message}\n  hint: {exc.hint}\n")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    save_test_split(data[2], data[3], args.out / "digits_test.npz")
    save_calibration_split(data[0], args.out / "digits_calib.npz")
    print(f"digits: {len(data[1])} train / {len(data[3])} test images, {IMAGE_SIZE}x{IMAGE_SIZE}")
    for name in names:
        start = time.perf_counter()
        path, accuracy = train_and_save(name, data, args.out, seed=args.seed, epochs=args.epochs)
        arch = MODELS[name][0]
        print(
            f"{name:>4} ({arch}): test accuracy {accuracy:.4f}  [{time.perf_counter() - start:.1f} s] -> {path}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
