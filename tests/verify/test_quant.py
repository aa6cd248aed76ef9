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
