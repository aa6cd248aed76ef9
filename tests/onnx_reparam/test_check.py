"""The ONNX check's inputs over free axes and the reference's fp32 noise floor."""

from __future__ import annotations

import numpy as np
import pytest

from reparam.blocks.acb import ACB
from reparam.onnx_reparam import noise
from reparam.onnx_reparam.check import random_feeds
from reparam.runners.base import TensorSpec
from reparam.runners.onnxruntime_runner import OnnxRuntimeRunner
from tests.onnx_reparam._helpers import export


def test_free_axes_named_alike_change_together():
    specs = [
        TensorSpec("a", ("batch", 3, "h", "h"), np.dtype(np.float32)),
        TensorSpec("b", ("batch", None), np.dtype(np.int64)),
    ]
    shapes = [{k: v.shape for k, v in f.items()} for f in random_feeds(specs)]
    assert shapes == [
        {"a": (2, 3, 64, 64), "b": (2, 64)},
        {"a": (3, 3, 64, 64), "b": (3, 64)},
        {"a": (2, 3, 57, 57), "b": (2, 64)},
        {"a": (2, 3, 64, 64), "b": (2, 57)},
    ]
    assert shapes == [{k: v.shape for k, v in f.items()} for f in random_feeds(specs)]


def _outputs(path, shape=(2, 4, 12, 12)):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    out = OnnxRuntimeRunner(path).run({"input": x})
    return [{"input": x}], {k: [v] for k, v in out.items()}


def test_reference_noise_is_the_fp32_rounding_floor(tmp_path):
    src = export(ACB(4, 4, 3, padding=1), tmp_path / "acb.onnx")
    feeds, outputs = _outputs(src)
    floor = noise.reference_noise(src, feeds, outputs)
    assert floor is not None and 0.0 < max(floor.values()) < 1e-5


def test_an_implausible_float64_run_is_not_used(tmp_path, monkeypatch):
    """A float64 run 1 % away from the fp32 one is not rounding: it must not loosen the tolerance."""
    src = export(ACB(4, 4, 3, padding=1), tmp_path / "acb.onnx")
    feeds, outputs = _outputs(src)
    shifted = {k: [v[0] * 1.01] for k, v in outputs.items()}
    assert noise.reference_noise(src, feeds, shifted) is None


def test_inputs_that_do_not_fit_are_a_user_error(tmp_path):
    from reparam.errors import ReparamError
    from reparam.onnx_reparam import check_onnx

    fixed = export(ACB(4, 4, 3, padding=1), tmp_path / "a.onnx", (1, 4, 12, 12), dynamic=False)
    free = export(ACB(4, 4, 3, padding=1), tmp_path / "b.onnx", (1, 4, 12, 12), dynamic=True)
    with pytest.raises(ReparamError, match="shape"):
        check_onnx(free, fixed, inputs=[{"input": np.zeros((2, 4, 12, 12), np.float32)}])
