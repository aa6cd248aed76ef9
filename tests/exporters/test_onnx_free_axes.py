"""ONNX files keep height and width free only where they compute the model's values there."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from reparam.engine import convert
from reparam.errors import ReparamError
from reparam.numerics import scale_relative_error
from tests.engine.test_capture_general import MobileOneAuthorsSE, Net, RepVGGAuthorsSE, _prepared

ort = pytest.importorskip("onnxruntime")


def _run(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


@pytest.mark.parametrize("se", [RepVGGAuthorsSE, MobileOneAuthorsSE])
def test_global_pools_of_sizes_read_in_forward_stay_free(se, tmp_path):
    from reparam.exporters.onnx import export_onnx

    model = _prepared(lambda: Net(se(8, 4) if se is RepVGGAuthorsSE else se(8)))
    deploy = convert(model, torch.randn(1, 3, 16, 16)).model
    path = tmp_path / "m.onnx"
    export_onnx(deploy, torch.randn(1, 3, 16, 16), path, dynamic_axes={"input": {2: "height", 3: "width"}})
    for shape in [(1, 3, 16, 16), (3, 3, 24, 24), (2, 3, 40, 40)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            ref = model(x).numpy()
        assert scale_relative_error(ref, _run(path, x)) <= 1e-5, shape


def test_a_file_whose_free_axes_compute_other_values_is_refused(tmp_path, monkeypatch):
    """Without the global-pool capture, the exporter leaves height and width symbolic while the
    average pool keeps the example's kernel: the file would pool a corner of larger maps."""
    from reparam.exporters.onnx import export as onnx_export

    monkeypatch.setattr(onnx_export, "global_pools_stay_free", contextlib.nullcontext)
    model = _prepared(lambda: Net(MobileOneAuthorsSE(8)))
    deploy = convert(model, torch.randn(1, 3, 16, 16)).model
    path = tmp_path / "m.onnx"
    with pytest.raises(
        ReparamError, match="dynamic but (computes other values|fails) at 3x3x32x32"
    ) as caught:
        onnx_export.export_onnx(
            deploy, torch.randn(1, 3, 16, 16), path, dynamic_axes={"input": {2: "height", 3: "width"}}
        )
    assert "`dynamic_batch`" in caught.value.hint  # the parameter that exports the batch axis alone
    assert not path.exists()


class _BatchReadAsNumber(torch.nn.Module):
    """Reads the batch as a Python number: a TorchScript trace keeps the example's batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x).reshape(int(x.shape[0]), -1)


def test_a_legacy_trace_that_keeps_the_batch_is_refused(tmp_path):
    from reparam.exporters.onnx import export_onnx

    path = tmp_path / "m.onnx"
    with pytest.raises(ReparamError, match=r"leaves input\[0\] dynamic but .* at 3x3x8x8") as caught:
        export_onnx(_BatchReadAsNumber(), torch.randn(1, 3, 8, 8), path, dynamo=False)
    assert "`dynamo=False`" in caught.value.hint
    assert not path.exists()
    with pytest.raises(ReparamError):  # torch.export sees the batch held
        export_onnx(_BatchReadAsNumber(), torch.randn(1, 3, 8, 8), path)
    assert not path.exists()
    export_onnx(_BatchReadAsNumber(), torch.randn(1, 3, 8, 8), path, dynamic_batch=False, dynamo=False)
    assert _run(path, torch.randn(1, 3, 8, 8)).shape == (1, 192)  # at the size it was traced, it is taken


def test_a_legacy_trace_is_run_at_another_batch(tmp_path, monkeypatch):
    from reparam.exporters.onnx import export as onnx_export

    probed = []
    real = onnx_export._check_free_axes
    monkeypatch.setattr(onnx_export, "_check_free_axes", lambda *a, **k: probed.append(k) or real(*a, **k))
    model = _prepared(lambda: Net(RepVGGAuthorsSE(8, 4)))
    result = onnx_export.export_onnx(model, torch.randn(1, 3, 16, 16), tmp_path / "m.onnx", dynamo=False)
    assert probed == [{"batch_too": True}] and result.exporter == "legacy"
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert scale_relative_error(model(x).numpy(), _run(tmp_path / "m.onnx", x)) <= 1e-5
