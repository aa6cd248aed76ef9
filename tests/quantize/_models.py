"""Tiny RepVGG models with confident predictions on a synthetic 10-class task, benign or with a widened branch."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from reparam.numerics import calibrate_batchnorm
from reparam.zoo import create_model

SHAPE = (3, 16, 16)
CLASSES = 10
WIDE_BLOCK = "stage2.1"  # the block whose identity branch gets a wide BN (it has one: stride 1, same width)
WIDE_CHANNELS = (0, 1)
WIDE_GAIN = 40.0


def synthetic_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images: one of 10 fixed random templates plus noise; returns (inputs float32, labels)."""
    templates = np.random.default_rng(1234).standard_normal((CLASSES, *SHAPE)).astype(np.float32)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, n)
    x = templates[labels] + 0.3 * rng.standard_normal((n, *SHAPE)).astype(np.float32)
    return x.astype(np.float32), labels


def batches(x: np.ndarray, size: int = 32) -> list[dict[str, np.ndarray]]:
    return [{"input": x[i : i + size]} for i in range(0, len(x), size)]


@torch.no_grad()
def _widen_identity_branch(model: nn.Module) -> None:
    """Blow up the identity branch's BN gain on a few channels; the next block reads them scaled back down.

    A trained network whose downstream weights compensate a large BN gain computes sane outputs,
    but the fused kernel and the block's output activations get a few channels far wider than the rest.
    """
    block = model.get_submodule(WIDE_BLOCK)
    bn = block.rbr_identity
    nxt = model.stage3[0]
    for c in WIDE_CHANNELS:
        scale = float(torch.sqrt(bn.running_var[c] + bn.eps))
        bn.weight[c] = WIDE_GAIN * scale * 2.0  # gamma / sigma = 2 * WIDE_GAIN
        nxt.rbr_dense[0].weight[:, c] /= WIDE_GAIN
        nxt.rbr_1x1[0].weight[:, c] /= WIDE_GAIN


@torch.no_grad()
def _fit_head(model: nn.Module, seed: int) -> None:
    """Least-squares linear head on the body's features: confident, well separated predictions."""
    x, y = synthetic_data(512, seed)
    feats = []
    model.linear.register_forward_hook(lambda m, i, o: feats.append(i[0]))
    model(torch.from_numpy(x))
    f = torch.cat([feats[0], torch.ones(len(x), 1)], 1).double()
    target = torch.nn.functional.one_hot(torch.from_numpy(y), CLASSES).double() * 10.0
    sol = torch.linalg.lstsq(f, target).solution.float()
    model.linear.weight.copy_(sol[:-1].T)
    model.linear.bias.copy_(sol[-1])
    model.linear._forward_hooks.clear()


def tiny_repvgg(*, wide: bool, seed: int = 0) -> nn.Module:
    """repvgg_a0 at width 0.25 with blocks (1, 2, 2, 1), randomized BN, fitted head (eval mode)."""
    torch.manual_seed(seed)
    model = create_model("repvgg_a0", num_classes=CLASSES, width=0.25, num_blocks=(1, 2, 2, 1))
    calibrate_batchnorm(model, seed, shape=(16, *SHAPE))
    if wide:
        _widen_identity_branch(model)
    _fit_head(model, seed)
    return model.eval()


def export_deploy(model: nn.Module, path, example: np.ndarray):
    """Convert ``model`` and export the deploy form to ONNX at ``path``; returns the ConversionResult."""
    from reparam.engine import convert
    from reparam.exporters.onnx import export_onnx

    x = torch.from_numpy(example)
    result = convert(model, (x,), check=False)
    export_onnx(result, (x,), path, dynamo=False)
    return result
