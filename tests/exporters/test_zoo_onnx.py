"""Every zoo model's deploy form exports to ONNX and matches the training model in ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reparam.engine import reparameterize
from reparam.equivalence import fp32_noise
from reparam.numerics import calibrate_batchnorm, fp32_limit, scale_relative_error
from reparam.zoo import create_model, list_models

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from reparam.exporters.onnx import export_onnx  # noqa: E402

# Paper-depth models take longer to trace and export even at tiny width.
DEEP = {"acb_resnet50", "resnet50", "se_resnet50", "scalenet50", "sknet50", "sknet26"}
DEEP |= {"scalenet101", "scalenet152"}


@torch.no_grad()
def _fp32_limit(model: torch.nn.Module, x: torch.Tensor) -> float:
    """The shared fp32 rule: max(1e-5, 10 x the model's own fp32-vs-float64 error on ``x``)."""
    return fp32_limit(fp32_noise(model, (x,), model(x)))


def _tiny(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(name, width=0.125, num_classes=10)
    return calibrate_batchnorm(model, 0)


def _ops(path) -> dict[str, int]:
    model = onnx.load(str(path))
    counts: dict[str, int] = {}
    for n in model.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in DEEP else n for n in list_models()]
)
def test_zoo_deploy_onnx_matches_pytorch(name, tmp_path):
    model = _tiny(name)
    example = torch.randn(1, 3, 32, 32)
    # Does the exported file compute what the deploy model computes in PyTorch, and still what the
    # training model computes? The engine's own check runs on the way.
    deploy = reparameterize(model, (example,))
    result = export_onnx(deploy, (example,), tmp_path / "m.onnx", dynamo=False)
    assert "BatchNormalization" not in result.op_counts
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref_deploy = deploy(x).numpy()
        ref_train = model(x).numpy()
    out = sess.run(None, {"input": x.numpy()})[0]
    assert out.shape == ref_deploy.shape == (2, 10)
    assert 1e-3 < np.abs(ref_deploy).max() < 1e4
    # ONNX Runtime's conv kernels accumulate in another order than PyTorch's: allow each side its
    # fp32 noise (the fusion adds its own rounding to the comparison with the training model).
    tol = _fp32_limit(deploy, x)
    assert scale_relative_error(ref_deploy, out) <= tol
    assert scale_relative_error(ref_train, out) <= tol + _fp32_limit(model, x)


@pytest.mark.parametrize(
    ("acb", "plain"), [("acb_resnet18", "resnet18"), ("acb_resnet56_cifar", "resnet56_cifar")]
)
def test_acb_deploy_onnx_has_the_plain_networks_structure(acb, plain, tmp_path):
    """Fused ACB network == plain network in the ONNX graph: same Conv count, no BN, no branch Adds."""
    example = torch.randn(1, 3, 32, 32)
    acb_model = _tiny(acb)
    deploy = reparameterize(acb_model, (example,))
    export_onnx(deploy, (example,), tmp_path / "acb.onnx", dynamo=False)
    export_onnx(_tiny(plain), (example,), tmp_path / "plain.onnx", dynamo=False)  # BN folded by the exporter
    unfused = export_onnx(acb_model, (example,), tmp_path / "unfused.onnx", dynamo=False, simplify=False)
    fused_ops, plain_ops = _ops(tmp_path / "acb.onnx"), _ops(tmp_path / "plain.onnx")
    assert fused_ops.get("BatchNormalization", 0) == 0
    assert fused_ops["Conv"] == plain_ops["Conv"]
    assert fused_ops.get("Add", 0) == plain_ops.get("Add", 0)  # only the residual adds remain
    # The exporter alone folds BN but keeps every branch: the fusion is what removes them.
    assert unfused.op_counts["Conv"] > 2 * fused_ops["Conv"]
    assert unfused.op_counts.get("Add", 0) > fused_ops.get("Add", 0)
    x = np.random.default_rng(2).standard_normal((3, 3, 32, 32)).astype(np.float32)
    sess = ort.InferenceSession(str(tmp_path / "acb.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = acb_model(torch.from_numpy(x)).numpy()
    assert scale_relative_error(ref, sess.run(None, {"input": x})[0]) <= 1e-5
