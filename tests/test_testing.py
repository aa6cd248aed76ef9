import numpy as np
import pytest
import torch

from reparam import reparameterize
from reparam.testing import assert_equivalent
from tests.verify._models import expected_block, save_zoo_checkpoint


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return save_zoo_checkpoint(tmp_path_factory.mktemp("ckpt") / "c.pt")


@pytest.fixture(scope="module")
def images():
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def test_correct_deploy_model_passes_with_every_input_form(trained, images):
    deploy = reparameterize(trained, images[:1])
    report = assert_equivalent(trained, deploy, images)
    metrics = report.candidates[0].outputs["output"].metrics
    assert report.passed and metrics.scale_rel <= max(1e-5, 10 * metrics.ref_noise)
    assert_equivalent(trained, deploy, [images[:2], images[2:]])
    assert_equivalent(trained, deploy, {"input": images.numpy()})


def test_perturbed_weight_fails_and_names_the_block(trained, images):
    deploy = reparameterize(trained, images[:1])
    record = deploy.reparam_record
    entry = record.entries[len(record.entries) // 2]
    with torch.no_grad():
        deploy.get_submodule(entry.fused).weight.mul_(1.5)
    block = expected_block(record, entry.sources[0])
    with pytest.raises(AssertionError, match=f"first diverging block: {block}\\b") as info:
        assert_equivalent(trained, deploy, images)
    assert "scale-relative error" in str(info.value)
    assert "| candidate" not in str(info.value)  # the terminal table, not markdown


def test_nan_output_fails(trained, images):
    deploy = reparameterize(trained, images[:1])
    conv = deploy.get_submodule(deploy.reparam_record.entries[0].fused)
    with torch.no_grad():
        conv.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(AssertionError, match="NaN/Inf"):
        assert_equivalent(trained, deploy, images)


def test_looser_tolerance_accepts_a_small_error(trained, images):
    deploy = reparameterize(trained, images[:1])
    with torch.no_grad():
        for p in deploy.parameters():
            p.mul_(1 + 3e-6 * torch.randn_like(p))  # ~1e-3 at the output of this deep plain net
    with pytest.raises(AssertionError):
        assert_equivalent(trained, deploy, images)
    assert_equivalent(trained, deploy, images, tolerance="fp16")
    assert_equivalent(trained, deploy, images, atol=1.0, rtol=1e-2)  # logits here reach ~500


def test_onnx_file_candidate(trained, images, tmp_path):
    pytest.importorskip("onnxruntime")
    from reparam.exporters.onnx import export_onnx

    deploy = reparameterize(trained, images[:1])
    path = tmp_path / "m.onnx"
    export_onnx(deploy, (images[:1],), path)
    report = assert_equivalent(trained, path, images)
    assert report.candidates[0].kind == "onnx"
    out = report.candidates[0].outputs["output"].metrics
    assert np.isfinite(out.scale_rel) and out.top1 == 1.0
