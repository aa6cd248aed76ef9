"""Training-form ONNX files written by torch.onnx (no constant folding) fuse to their deploy form."""

from __future__ import annotations

import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reparam.blocks.acb import ACB
from reparam.blocks.repvgg import RepVGGBlock
from tests.onnx_reparam._helpers import NEWEST_OPSET, assert_equal_in_ort, convert, export, ops

SHAPE = (2, 4, 12, 12)


def _fused(tmp_path, model, shape=SHAPE, **kwargs):
    src = export(model, tmp_path / "train.onnx", shape, **kwargs)
    result = convert(src, tmp_path)
    assert_equal_in_ort(src, result.output, shape)
    return src, result


@pytest.mark.parametrize("opset", [13, NEWEST_OPSET])
def test_acb_block_becomes_one_conv(tmp_path, opset):
    src, result = _fused(tmp_path, ACB(4, 6, 3, padding=1), opset=opset)
    assert ops(src)["BatchNormalization"] == 3
    assert ops(result.output) == {"Conv": 1}
    assert not result.report.left_alone


@pytest.mark.parametrize("stride", [1, 2])
def test_repvgg_block_becomes_one_conv(tmp_path, stride):
    block = RepVGGBlock(4, 4, 3, stride=stride, activation=nn.ReLU(), use_identity=stride == 1)
    src, result = _fused(tmp_path, block)
    assert ops(result.output) == {"Conv": 1, "Relu": 1}


def test_grouped_dilated_acb(tmp_path):
    _, result = _fused(tmp_path, ACB(4, 8, 3, padding=2, dilation=2, groups=2))
    assert ops(result.output) == {"Conv": 1}


class BorderFill(nn.Module):
    """BN, then a border holding the BN's value at zero: pad(y - t) + t, exported without ScatterND."""

    def __init__(self, c: int, pad: int):
        super().__init__()
        self.bn, self.pad = nn.BatchNorm2d(c), pad

    def forward(self, x):
        y = self.bn(x)
        bn = self.bn
        t = (bn.bias - bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
        t = torch.tensor(t.numpy()).reshape(1, -1, 1, 1)  # a constant of the exported graph
        return F.pad(y - t, [self.pad] * 4) + t


class DBBStyle(nn.Module):
    """Diverse Branch Block: kxk-BN, 1x1-BN, 1x1-BN-border-avg-BN and 1x1-BN-border-kxk-BN branches."""

    def __init__(self, c: int, k: int = 3):
        super().__init__()
        p = k // 2
        self.origin = nn.Sequential(nn.Conv2d(c, c, k, padding=p, bias=False), nn.BatchNorm2d(c))
        self.one = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c))
        self.avg = nn.Sequential(
            nn.Conv2d(c, c, 1, bias=False), BorderFill(c, p), nn.AvgPool2d(k, 1, 0), nn.BatchNorm2d(c)
        )
        self.one_kxk = nn.Sequential(
            nn.Conv2d(c, 2 * c, 1, bias=False),
            BorderFill(2 * c, p),
            nn.Conv2d(2 * c, c, k, bias=False),
            nn.BatchNorm2d(c),
        )

    def forward(self, x):
        return self.origin(x) + self.one(x) + self.avg(x) + self.one_kxk(x)


def test_dbb_style_block_with_bn_and_pad_border(tmp_path):
    src, result = _fused(tmp_path, DBBStyle(4))
    assert ops(src)["Pad"] == 2
    assert ops(result.output) == {"Conv": 1}


class PadThenConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.k3 = nn.Sequential(nn.Conv2d(4, 4, 3, bias=False), nn.BatchNorm2d(4))
        self.k1 = nn.Sequential(nn.Conv2d(4, 4, 1, bias=False), nn.BatchNorm2d(4))

    def forward(self, x):
        return self.k3(F.pad(x, [1, 1, 1, 1])) + self.k1(x)


def test_explicit_pad_node_joins_the_conv(tmp_path):
    src, result = _fused(tmp_path, PadThenConv())
    assert ops(src)["Pad"] == 1
    assert ops(result.output) == {"Conv": 1}


class SharedConv(nn.Module):
    """One conv module used twice, with a different BN each time (one initializer, two readers)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn1, self.bn2 = nn.BatchNorm2d(4), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn2(self.conv(torch.relu(self.bn1(self.conv(x)))))


def test_shared_weights(tmp_path):
    _, result = _fused(tmp_path, SharedConv())
    assert ops(result.output) == {"Conv": 2, "Relu": 1}


def test_dynamic_axes_are_kept(tmp_path):
    _, result = _fused(tmp_path, ACB(4, 4, 3, padding=1))
    dims = onnx.load(str(result.output)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 4, "height", "width"]
    assert len(result.check.input_shapes) == 4  # base sizes, then each free axis changed alone


def test_bn_before_unpadded_conv_and_after_avgpool(tmp_path):
    model = nn.Sequential(
        nn.BatchNorm2d(4), nn.Conv2d(4, 6, 1), nn.ReLU(), nn.AvgPool2d(2), nn.BatchNorm2d(6), nn.ReLU()
    )
    _, result = _fused(tmp_path, model)
    assert ops(result.output) == {"Conv": 2, "Relu": 2}


def test_bn_around_linear_layers(tmp_path):
    model = nn.Sequential(nn.BatchNorm1d(8), nn.Linear(8, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))
    _, result = _fused(tmp_path, model, shape=(4, 8))
    assert ops(result.output) == {"Gemm": 2, "Relu": 1}


def test_bn_after_conv_transpose(tmp_path):
    model = nn.Sequential(nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2), nn.BatchNorm2d(6))
    _, result = _fused(tmp_path, model)
    assert ops(result.output) == {"ConvTranspose": 1}


def test_external_data_input(tmp_path):
    src = export(ACB(4, 4, 3, padding=1), tmp_path / "train.onnx")
    model = onnx.load(str(src))
    external = tmp_path / "external.onnx"
    onnx.save(model, str(external), save_as_external_data=True, location="external.bin", size_threshold=0)
    assert (tmp_path / "external.bin").is_file()
    result = convert(external, tmp_path)
    assert ops(result.output) == {"Conv": 1}
    assert_equal_in_ort(external, result.output, SHAPE)


@pytest.mark.slow
def test_torch_export_based_exporter(tmp_path):
    """torch.onnx.export(dynamo=True): it folds Conv+BN itself; branches and the identity BN stay."""
    model = nn.Sequential(ACB(4, 4, 3, padding=1), nn.ReLU(), RepVGGBlock(4, 4, 3))
    from reparam.numerics import randomize_batchnorm

    model = randomize_batchnorm(model, seed=0).eval()
    src = tmp_path / "dynamo.onnx"
    torch.onnx.export(model, (torch.randn(*SHAPE),), str(src), dynamo=True, input_names=["input"])
    assert ops(src)["Add"] == 4
    result = convert(src, tmp_path)
    assert ops(result.output) == {"Conv": 2, "Relu": 2}
    assert_equal_in_ort(src, result.output, SHAPE)


class Branches1d(nn.Module):
    def __init__(self, conv=nn.Conv1d, bn=nn.BatchNorm1d):
        super().__init__()
        self.k3 = nn.Sequential(conv(4, 4, 3, padding=1, bias=False), bn(4))
        self.k1 = nn.Sequential(conv(4, 4, 1, bias=False), bn(4))
        self.identity = bn(4)

    def forward(self, x):
        return self.k3(x) + self.k1(x) + self.identity(x)


@pytest.mark.parametrize(
    ("shape", "conv", "bn"),
    [
        ((2, 4, 15), nn.Conv1d, nn.BatchNorm1d),
        ((1, 4, 5, 6, 7), nn.Conv3d, nn.BatchNorm3d),
    ],
)
def test_1d_and_3d_branches(tmp_path, shape, conv, bn):
    src = export(Branches1d(conv, bn), tmp_path / "train.onnx", shape, dynamic=False)
    result = convert(src, tmp_path)
    assert ops(result.output) == {"Conv": 1}
    assert_equal_in_ort(src, result.output, shape)


def test_acb_with_cropped_branches(tmp_path):
    """ACB with padding 0: its 1x3 and 3x1 branches read a cropped input (Slice nodes)."""
    src, result = _fused(tmp_path, ACB(4, 6, 3, padding=0))
    assert ops(src)["Slice"] == 2
    assert ops(result.output) == {"Conv": 1}


class CropThenConv(nn.Module):
    """A crop before a lone conv cannot join it (a Conv has no negative padding): the BN still folds."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4))

    def forward(self, x):
        return self.body(x[:, :, 1:-1, 2:])


def test_crop_before_a_lone_conv_stays(tmp_path):
    src, result = _fused(tmp_path, CropThenConv())
    after = ops(result.output)
    assert (
        after["Conv"] == 1 and after["Slice"] == ops(src)["Slice"] > 0 and "BatchNormalization" not in after
    )
