"""timm's re-parameterizable families, exported in training form, convert like timm's own fusion."""

from __future__ import annotations

import pytest

from tests.onnx_reparam._helpers import assert_equal_in_ort, convert, export, ops
from tests.timm_support import import_timm

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(("name", "deploy_convs"), [("mobileone_s0", 43), ("repvgg_a0", 22)])
def test_conv_count_of_timms_deploy_form(tmp_path, name, deploy_convs):
    timm = import_timm()
    src = export(timm.create_model(name, num_classes=10), tmp_path / f"{name}.onnx", (1, 3, 64, 64))
    result = convert(src, tmp_path)
    after = ops(result.output)
    assert after["Conv"] == deploy_convs and "BatchNormalization" not in after
    assert_equal_in_ort(src, result.output, (2, 3, 64, 64))


def test_fastvit_repmixer(tmp_path):
    timm = import_timm()
    src = export(timm.create_model("fastvit_t8", num_classes=10), tmp_path / "fastvit.onnx", (1, 3, 64, 64))
    result = convert(src, tmp_path)
    assert "BatchNormalization" not in ops(result.output)
    assert ops(result.output)["Conv"] < ops(src)["Conv"]
    assert_equal_in_ort(src, result.output, (1, 3, 64, 64))
