import pytest

from reparam.bench.latency import default_input_chw, parse_backends
from reparam.errors import ReparamError


def test_parse_backends_expands_ort_and_dedups():
    assert parse_backends("torch,ort") == ["torch", "ort-all", "ort-disable"]
    assert parse_backends(" ort-disable , ORT-ALL,ort-all") == ["ort-disable", "ort-all"]
    with pytest.raises(ReparamError, match="unknown backend 'trt'"):
        parse_backends("torch,trt")
    with pytest.raises(ReparamError, match="no backend"):
        parse_backends(" , ")


def test_default_input_sizes():
    assert default_input_chw("acb_resnet56_cifar") == (3, 32, 32)
    assert default_input_chw("repvgg_a0") == (3, 224, 224)


@pytest.mark.parametrize("name", ["acb_resnet56_cifar", "repvgg_a0"])
def test_deploy_form_has_the_plain_counterparts_layers_and_no_batchnorm(name):
    from torch import nn

    from reparam.bench.latency import build_forms, layer_shapes

    forms = build_forms(name, width=0.25, chw=(3, 16, 16))
    assert forms.notes == []
    train, deploy, plain = (forms.modules[f] for f in ("train", "deploy", "plain"))
    assert layer_shapes(deploy) == layer_shapes(plain)
    assert len(layer_shapes(train)) > len(layer_shapes(deploy))  # the branches are gone
    for module in (deploy, plain):
        assert not any(isinstance(m, nn.BatchNorm2d) for m in module.modules())
    assert deploy.reparam_report.check.passed and plain.reparam_report.check.passed
