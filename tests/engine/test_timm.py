"""timm's own re-parameterizable models fuse to timm's own deploy conv count, with no BN left."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from reparam.engine import convert
from reparam.numerics import randomize_batchnorm, scale_relative_error
from reparam.profile import count_macs
from tests.engine._models import assert_untouched, fingerprint
from tests.engine.test_published_designs import structure
from tests.timm_support import import_timm

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(("name", "deploy_convs"), [("repvgg_a0", 22), ("mobileone_s0", 43)])
def test_timm_model_fuses_like_timms_own_reparameterization(name, deploy_convs):
    timm = import_timm()
    from timm.utils.model import reparameterize_model

    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10)
    randomize_batchnorm(model, 0).eval()
    x = torch.randn(1, 3, 64, 64)
    before = fingerprint(model)
    result = convert(model, x)
    assert_untouched(model, before)
    assert result.report.before.macs == count_macs(model, (x,))
    assert result.report.after.macs == count_macs(result.model, (x,))
    assert structure(result.model) == {"convs": deploy_convs, "norms": 0, "param_only": 0}
    theirs = reparameterize_model(copy.deepcopy(model))
    assert sum(isinstance(m, nn.Conv2d) for m in theirs.modules()) == deploy_convs
    with torch.no_grad():
        ref, ours, timms = model(x), result.model(x), theirs(x)
    limit = result.report.check.tolerance
    assert scale_relative_error(ref.numpy(), ours.numpy()) <= limit
    assert scale_relative_error(timms.numpy(), ours.numpy()) <= 2 * limit
