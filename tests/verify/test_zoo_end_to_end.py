"""The project's own equivalence check: every zoo model, training form vs deploy form vs ONNX Runtime."""

import numpy as np
import pytest

from reparam.engine import convert
from reparam.verify import random_batches, verify
from reparam.zoo import list_models
from tests.verify._models import save_zoo_checkpoint

pytest.importorskip("onnxruntime")


# ScaleNet-101/-152 are ScaleNet-50's blocks at depth (tests/slim checks their structures); their
# fp32 references are too ill-conditioned at this width for the noise bound below.
DEEPER_SCALENETS = {"scalenet101", "scalenet152"}


@pytest.mark.slow  # ~3 s of ONNX export per model
@pytest.mark.parametrize("arch", [m for m in list_models() if m not in DEEPER_SCALENETS])
def test_training_vs_deploy_vs_onnx(arch, tmp_path):
    import torch

    from reparam.exporters.onnx import export_onnx

    model = save_zoo_checkpoint(tmp_path / "c.pt", arch=arch, seed=1, width=0.125)
    batches = random_batches((2, 3, 32, 32), batches=2, seed=1)
    example = (torch.from_numpy(batches[0]["input"]),)
    result = convert(model, example, check=False)
    export_onnx(result, example, tmp_path / "m.onnx")
    report = verify(model, [result, tmp_path / "m.onnx"], batches, localize="always")
    assert report.passed, report.render_text()
    for cand in report.candidates:
        metrics = cand.outputs["output"].metrics
        # within fp32 rounding: 1e-5, or 10x the reference's own fp32 error on deep ill-conditioned nets
        # (the verifier measures that error only when the plain rule alone would not pass)
        noise = metrics.ref_noise
        assert metrics.scale_rel <= (1e-5 if noise is None else max(1e-5, 10 * noise)) and metrics.top1 == 1.0
        assert noise is None or noise < 1e-4
        # a meaningful comparison: outputs in a sane, non-degenerate range
        assert 1e-3 < metrics.ref_max_abs < 1e4 and np.isfinite(metrics.cosine)
    deploy_blocks = report.candidates[0].divergence.blocks
    assert deploy_blocks and all(b.passed for b in deploy_blocks)
