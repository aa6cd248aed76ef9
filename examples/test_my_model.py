"""Guard a deployment in your own test suite with ``reparam.testing.assert_equivalent``.

Run with ``pytest examples/test_my_model.py``. Replace the ``trained`` fixture with your model
(for a checkpoint: ``reparam.checkpoint.load_model("ckpt.pt")``).
"""

from __future__ import annotations

import pytest
import torch

from reparam import reparameterize
from reparam.numerics import randomize_batchnorm
from reparam.testing import assert_equivalent
from reparam.zoo import create_model


@pytest.fixture(scope="module")
def trained() -> torch.nn.Module:
    # Stand-in for a trained model: random weights, and non-trivial BN statistics so the check means something.
    model = create_model("repvgg_a0", num_classes=10, width=0.25)
    return randomize_batchnorm(model, seed=0).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_deploy_model_matches_training_model(trained, images):
    deploy = reparameterize(trained, images[:1])
    assert_equivalent(trained, deploy, images)


def test_onnx_file_matches_training_model(trained, images, tmp_path):
    pytest.importorskip("onnxruntime")
    from reparam.exporters.onnx import export_onnx

    deploy = reparameterize(trained, images[:1])
    export_onnx(deploy, (images[:1],), tmp_path / "model.onnx")
    # A list of tensors is verified batch by batch; the fp32 profile is the default.
    assert_equivalent(trained, tmp_path / "model.onnx", [images[:4], images[4:]])


def test_a_broken_deploy_model_is_caught(trained, images):
    deploy = reparameterize(trained, images[:1])
    conv = next(m for m in deploy.modules() if isinstance(m, torch.nn.Conv2d))
    with torch.no_grad():
        conv.weight[0] += 0.5  # what a wrong fusion formula would do
    with pytest.raises(AssertionError, match="first diverging block"):
        assert_equivalent(trained, deploy, images)
