import torch
from torch import nn

from reparam.verify.quant import channel_ranges, classify, quantization_risk, range_ratio

from ._models import Record


class _Entry:
    def __init__(self, fused, sources):
        self.pass_name, self.fused, self.sources, self.detail = "test", fused, sources, {}


class _Branches(nn.Module):
    def __init__(self):
        super().__init__()
        self.square = nn.Conv2d(4, 8, 3, padding=1)
        self.ver = nn.Conv2d(4, 8, (3, 1), padding=(1, 0))
        self.point = nn.Conv2d(4, 8, 1)


def test_channel_ranges_and_ratio():
    w = torch.zeros(3, 2, 3, 3)
    w[0, 0, 0, 0], w[1, 1, 2, 2], w[2, 0, 1, 1] = -4.0, 1.0, 2.0
    assert channel_ranges(w).tolist() == [4.0, 1.0, 2.0]
    assert range_ratio(channel_ranges(w)) == 2.0
    assert classify(12.0) == "high"
    assert classify(5.0) == "elevated"
    assert classify(3.0) == "low"


def test_fused_layer_with_one_blown_up_channel_is_flagged():
    torch.manual_seed(0)
    original = nn.Sequential(_Branches())
    deploy = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1))
    with torch.no_grad():
        deploy[0].weight.copy_(original[0].square.weight)
        deploy[0].weight[5] *= 40.0  # a BN with tiny running variance does this after folding
    record = Record({}, entries=[_Entry("0", ["0"])])
    [risk] = quantization_risk(original, deploy, record)
    assert risk.source == "0.square"
    assert risk.channels == 8
    assert risk.before_ratio < 2.0
    assert risk.after_ratio > 20.0
    assert risk.growth == risk.after_ratio / risk.before_ratio
    assert risk.risk == "high"
    with torch.no_grad():
        deploy[0].weight.copy_(original[0].square.weight * 1.1)
    assert quantization_risk(original, deploy, record)[0].risk == "low"


def _fused_repvgg(widen):
    from reparam.blocks import RepVGGBlock
    from reparam.engine import convert
    from reparam.numerics import randomize_batchnorm

    model = nn.Sequential(RepVGGBlock(8, 8), nn.ReLU()).eval()
    randomize_batchnorm(model, seed=3)
    with torch.no_grad():
        widen(model[0])
    result = convert(model, (torch.randn(2, 8, 6, 6),), check=False)
    return {r.fused: r for r in quantization_risk(model, result.model, result.record)}


def _set_gain(bn, channel, gain):
    bn.weight[channel] = gain * torch.sqrt(bn.running_var[channel] + bn.eps)


def test_risk_names_the_branch_and_factor_that_widened_the_fused_kernel():
    risks = _fused_repvgg(lambda b: _set_gain(b.rbr_identity, 3, 60.0))
    [risk] = risks.values()
    assert risk.risk == "high" and risk.culprit == "0.rbr_identity"
    assert "BN gain" in risk.reason and "[3]" in risk.reason and "without this branch" in risk.reason
    by_name = {b.branch: b for b in risk.branches}
    assert set(by_name) == {"0.rbr_dense", "0.rbr_1x1", "0.rbr_identity"}
    assert by_name["0.rbr_identity"].kind == "identity bn" and by_name["0.rbr_identity"].gain_max >= 60.0
    assert by_name["0.rbr_identity"].ratio_without < 4.0 < risk.after_ratio  # decomposition was exact
    assert by_name["0.rbr_dense"].ratio_without > 10.0

    risks = _fused_repvgg(lambda b: b.rbr_1x1[0].weight[5].mul_(80.0))
    [risk] = risks.values()
    assert risk.culprit == "0.rbr_1x1" and risk.reason.startswith("conv weights")
    assert any("per-channel" in r for r in risk.remedies)

    [benign] = _fused_repvgg(lambda b: None).values()
    assert benign.risk == "low" and benign.culprit is None and benign.remedies == []
    # a low layer names no culprit, so its branches are not rebuilt in float64 to weigh each one
    assert benign.branches and all(b.ratio_without is None for b in benign.branches)


def test_acb_branch_pairs_are_found_by_definition_order():
    from reparam.blocks import ACB
    from reparam.engine import convert
    from reparam.numerics import randomize_batchnorm

    model = nn.Sequential(ACB(8, 8, 3, padding=1), nn.ReLU()).eval()
    randomize_batchnorm(model, seed=4)
    with torch.no_grad():
        _set_gain(model[0].hor_bn, 2, 50.0)
    result = convert(model, (torch.randn(2, 8, 6, 6),), check=False)
    [risk] = quantization_risk(model, result.model, result.record)
    assert {b.branch for b in risk.branches} == {"0.square_conv", "0.hor_conv", "0.ver_conv"}
    assert all(b.kind == "conv+bn" and b.ratio_without is not None for b in risk.branches)
    assert risk.culprit == "0.hor_conv" and "BN gain" in risk.reason and "[2]" in risk.reason
