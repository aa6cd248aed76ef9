"""Capture that holds on model code written elsewhere: sizes read in ``forward``, shape ``if``s,
keyword module names, untraceable parents. Every deploy model — in memory, ``.pt2`` and ONNX —
runs at batch sizes other than the example's, and at other spatial sizes wherever the original
does; where a size is held, the deploy model refuses it instead of computing something else."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reparam.cli.main import main
from reparam.engine import convert
from reparam.numerics import fp32_limit, randomize_batchnorm, scale_relative_error
from tests.engine._models import count

BN = nn.modules.batchnorm._BatchNorm


def conv_bn(cin: int, cout: int, k: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout))


class RepVGGAuthorsSE(nn.Module):
    """The RepVGG authors' SEBlock: the pool's kernel is a size read in forward, as a keyword."""

    def __init__(self, channels: int, internal: int):
        super().__init__()
        self.down = nn.Conv2d(channels, internal, 1, bias=True)
        self.up = nn.Conv2d(internal, channels, 1, bias=True)
        self.input_channels = channels

    def forward(self, inputs):
        x = F.avg_pool2d(inputs, kernel_size=inputs.size(3))
        x = torch.sigmoid(self.up(F.relu(self.down(x))))
        return inputs * x.view(-1, self.input_channels, 1, 1)


class MobileOneAuthorsSE(nn.Module):
    """The MobileOne authors' SEBlock: sizes unpacked from ``inputs.size()`` into a list argument."""

    def __init__(self, channels: int, ratio: float = 0.5):
        super().__init__()
        self.reduce = nn.Conv2d(channels, int(channels * ratio), 1, bias=True)
        self.expand = nn.Conv2d(int(channels * ratio), channels, 1, bias=True)

    def forward(self, inputs):
        b, c, h, w = inputs.size()
        x = F.avg_pool2d(inputs, kernel_size=[h, w])
        x = torch.sigmoid(self.expand(F.relu(self.reduce(x))))
        return inputs * x.view(-1, c, 1, 1)


class RepBlock(nn.Module):
    """3×3, 1×1 and identity branches, each with its BatchNorm, then ReLU and an SE gate."""

    def __init__(self, c: int, se: nn.Module):
        super().__init__()
        self.rbr_dense, self.rbr_1x1, self.rbr_identity, self.se = (
            conv_bn(c, c, 3),
            conv_bn(c, c, 1),
            nn.BatchNorm2d(c),
            se,
        )

    def forward(self, x):
        return self.se(F.relu(self.rbr_dense(x) + self.rbr_1x1(x) + self.rbr_identity(x)))


class Net(nn.Module):
    """Stem, one re-parameterizable block, a head that reads the batch size (``view(x.size(0), -1)``)."""

    def __init__(self, se: nn.Module, shape_if: bool = False):
        super().__init__()
        self.stem, self.block, self.fc, self.shape_if = (
            conv_bn(3, 8, 3),
            RepBlock(8, se),
            nn.Linear(8, 5),
            shape_if,
        )

    def forward(self, x):
        x = self.block(self.stem(x))
        if self.shape_if and x.shape[-1] > 2:  # torch.fx cannot follow this: torch.export captures the model
            x = F.relu(x)
        x = F.adaptive_avg_pool2d(x, 1)
        return self.fc(x.view(x.size(0), -1))


def _prepared(factory, seed: int = 0) -> nn.Module:
    """The model ``factory()`` builds, seeded, with random BatchNorm statistics and affine parameters."""
    torch.manual_seed(seed)
    return randomize_batchnorm(factory(), seed).eval()


def _agrees(original: nn.Module, deploy: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        ref, got, ref64 = original(x), deploy(x), original.double()(x.double())
    original.float()
    limit = fp32_limit(scale_relative_error(ref64.numpy(), ref.double().numpy()))
    assert torch.isfinite(got).all()
    assert scale_relative_error(ref.numpy(), got.numpy()) <= limit, tuple(x.shape)


SIZES = [(1, 16), (2, 16), (3, 16), (2, 24), (3, 20)]
NOT_SQUARE = (2, 3, 24, 18)


@pytest.mark.parametrize("se", [RepVGGAuthorsSE, MobileOneAuthorsSE])
def test_size_reads_in_keyword_and_list_arguments_stay_symbolic(se):
    model = _prepared(lambda: Net(se(8, 4) if se is RepVGGAuthorsSE else se(8)))
    result = convert(model, torch.randn(1, 3, 16, 16))
    assert result.report.tracing == "whole model"
    assert count(result.model, BN) == 0 and count(result.model, nn.Conv2d) == 2 + 2  # stem, block, SE pair
    for batch, size in SIZES:
        _agrees(model, result.model, torch.randn(batch, 3, size, size))


def test_a_capture_that_would_hold_a_size_gives_way_to_per_submodule_conversion():
    """A shape ``if`` sends capture to torch.export, where the SE pool (``kernel_size=x.size(3)``)
    is a global pool only on square maps: that capture takes square inputs only, so the model is
    converted submodule by submodule instead, keeping its own control flow, and takes every size
    the original takes."""
    model = _prepared(lambda: Net(RepVGGAuthorsSE(8, 4), shape_if=True))
    result = convert(model, torch.randn(1, 3, 16, 16))
    assert result.report.tracing.startswith("per submodule")
    assert any("takes only some sizes of its height, width" in n for n in result.report.notes)
    assert count(result.model, BN) == 0 and count(result.model, nn.Conv2d) == 4
    for batch, size in SIZES:
        _agrees(model, result.model, torch.randn(batch, 3, size, size))
    _agrees(model, result.model, torch.randn(*NOT_SQUARE))  # the original pools 24x18 in 18x18 windows


class BatchBranch(nn.Module):
    """A branch on the batch size: torch.export takes every free size for at least 2."""

    def __init__(self):
        super().__init__()
        self.body = conv_bn(3, 4, 3)

    def forward(self, x):
        y = self.body(x)
        return y if x.size(0) > 1 else y * 0.5


@pytest.mark.parametrize("batch", [1, 2])
def test_a_branch_on_the_batch_size_is_right_at_every_batch(batch):
    model = _prepared(BatchBranch)
    result = convert(model, torch.randn(batch, 3, 8, 8))
    for b, size in SIZES:
        _agrees(model, result.model, torch.randn(b, 3, size, size))


def test_torch_export_capture_keeps_spatial_sizes_free_where_the_model_allows():
    model = _prepared(lambda: Net(MobileOneAuthorsSE(8), shape_if=True))
    result = convert(model, torch.randn(1, 3, 16, 16))
    assert "torch.export" in result.report.tracing
    for batch, size in SIZES:
        _agrees(model, result.model, torch.randn(batch, 3, size, size))


class KeywordHeads(nn.Module):
    """Detection-head style names: Python keywords, digits first, non-ASCII, in a ModuleDict."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 8, 3)
        self.heads = nn.ModuleDict({k: conv_bn(8, 4, 1) for k in ("class", "def", "lambda", "1x1", "é")})
        setattr(self, "import", conv_bn(8, 4, 3))

    def forward(self, x):
        x = self.stem(x)
        return torch.cat([h(x) for h in self.heads.values()] + [getattr(self, "import")(x)], 1)


def test_module_names_that_are_keywords_convert():
    model = _prepared(KeywordHeads)
    result = convert(model, torch.randn(1, 3, 12, 12))
    assert count(result.model, BN) == 0 and count(result.model, nn.Conv2d) == 7
    for batch, size in SIZES:
        _agrees(model, result.model, torch.randn(batch, 3, size, size))


class Child(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = conv_bn(8, 8, 3), conv_bn(8, 8, 1)
        self.width, self.split, self.cfg = 8, [4, 4], {"keep": 6}

    def forward(self, x):
        return self.a(x) + self.b(x)


class UntraceableParent(nn.Module):
    """Data-dependent control flow (neither torch.fx nor torch.export captures it) and reads of a
    child's plain attributes, some only on batches of more than one."""

    def __init__(self):
        super().__init__()
        self.stem, self.block = conv_bn(3, 8, 3), Child()

    def forward(self, x):
        x = self.stem(x)
        if float(x.abs().sum()) < 0:  # never true; a value-dependent branch
            return x
        keep = self.block.cfg["keep"] if x.shape[0] > 1 else self.block.split[0]
        return x[:, : self.block.width][:, :keep] + self.block(x)[:, :keep]


def test_untraceable_parent_reading_child_attributes():
    model = _prepared(UntraceableParent)
    result = convert(model, torch.randn(1, 3, 12, 12))
    assert result.report.tracing.startswith("per submodule")
    assert count(result.model, BN) == 0 and count(result.model, nn.Conv2d) == 2
    for batch, size in SIZES:
        _agrees(model, result.model, torch.randn(batch, 3, size, size))


class FlattenHead(nn.Module):
    """A Linear after a flatten of the feature map: the model itself holds H×W."""

    def __init__(self):
        super().__init__()
        self.stem, self.fc = conv_bn(3, 4, 3), nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        return self.fc(self.stem(x).flatten(1))


@pytest.fixture
def checkpoints(tmp_path, monkeypatch):
    """State dicts of two models in a module of the working directory, as a user's own code is."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "usernets.py").write_text(
        "from tests.engine.test_capture_general import FlattenHead, MobileOneAuthorsSE, Net\n"
        "def SENet():\n    return Net(MobileOneAuthorsSE(8), shape_if=True)\n"
    )
    torch.save(_prepared(lambda: Net(MobileOneAuthorsSE(8), shape_if=True)).state_dict(), tmp_path / "se.pth")
    torch.save(_prepared(FlattenHead).state_dict(), tmp_path / "flat.pth")
    return tmp_path


def _onnx_run(path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_pt2_and_onnx_keep_free_axes_free(checkpoints, capsys):
    pytest.importorskip("onnxruntime")
    assert (
        main(["convert", "se.pth", "--arch", "usernets:SENet", "--input-shape", "1x3x16x16", "-o", "se.pt2"])
        == 0
    )
    assert main(["export", "onnx", "se.pt2", "-o", "se.onnx", "--dynamic", "batch,height,width"]) == 0
    assert main(["export", "onnx", "se.pt2", "-o", "big.onnx", "--input-shape", "2x3x32x32"]) == 0
    capsys.readouterr()
    from reparam.artifact import load_artifact

    model = _prepared(lambda: Net(MobileOneAuthorsSE(8), shape_if=True))
    deploy = load_artifact(checkpoints / "se.pt2")
    for batch, size in SIZES:
        x = torch.randn(batch, 3, size, size)
        _agrees(model, deploy, x)
        with torch.no_grad():
            ref = model(x).numpy()
        assert scale_relative_error(ref, _onnx_run(checkpoints / "se.onnx", x.numpy())) <= 1e-5
    assert main(["inspect", "se.pt2", "--json"]) == 0
    assert '"batch",\n        3,\n        "height",\n        "width"' in capsys.readouterr().out


def test_pt2_names_held_axes_and_export_refuses_them(checkpoints, capsys):
    assert (
        main(
            [
                "convert",
                "flat.pth",
                "--arch",
                "usernets:FlattenHead",
                "--input-shape",
                "1x3x8x8",
                "-o",
                "flat.pt2",
            ]
        )
        == 0
    )
    assert "accepts inputs of shape batchx3x8x8 only (height 8, width 8)" in capsys.readouterr().err
    for extra in (["--input-shape", "1x3x16x16"], ["--dynamic", "batch,height"]):
        assert main(["export", "onnx", "flat.pt2", "-o", "flat.onnx", *extra]) == 2
        err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("note:")]
        assert err[0].startswith("error: flat.pt2 holds the input's height (axis 2) at 8")
        assert "Linear after a flatten" in err[0] and len(err) == 2 and err[1].strip().startswith("hint:")
        assert not (checkpoints / "flat.onnx").exists()
    assert main(["export", "onnx", "flat.pt2", "-o", "flat.onnx", "--input-shape", "3x3x8x8"]) == 0
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        ref = _prepared(FlattenHead)(x).numpy()
    assert scale_relative_error(ref, _onnx_run(checkpoints / "flat.onnx", x.numpy())) <= 1e-5


class CachedBias(nn.Module):
    """timm LeViT's way: an eval-mode forward caches a tensor computed from parameters per device."""

    def __init__(self):
        super().__init__()
        self.body = conv_bn(3, 4, 3)
        self.biases = nn.Parameter(torch.randn(4, 6))
        self.register_buffer("idxs", torch.tensor([0, 2, 4, 5]), persistent=False)
        self.cache: dict[str, torch.Tensor] = {}

    def bias(self, device: torch.device) -> torch.Tensor:
        if self.training:
            return self.biases[:, self.idxs]
        if str(device) not in self.cache:
            self.cache[str(device)] = self.biases[:, self.idxs]
        return self.cache[str(device)]

    def forward(self, x):
        return self.body(x) + self.bias(x.device).sum(1).view(1, -1, 1, 1)


@pytest.mark.parametrize("shape_if", [False, True])
def test_a_forward_that_caches_leaves_the_callers_model_as_it_was(shape_if):
    """Capture runs forward on graph values; whatever the forward caches then is put back (a real
    run of the model may fill the cache, with real tensors), so the model converts again and runs."""
    model = _prepared(CachedBias)
    if shape_if:  # torch.export's capture runs forward too
        model.forward = lambda x: CachedBias.forward(model, x) if x.shape[-1] > 2 else x
    for _ in range(2):
        result = convert(model, torch.randn(1, 3, 8, 8))
        assert all(type(v) is torch.Tensor for v in model.cache.values()) and count(result.model, BN) == 0
    _agrees(model, result.model, torch.randn(2, 3, 8, 8))


class NormDropLinear(nn.Module):
    """A classifier head BatchNorm1d -> Dropout -> Linear behind a shape ``if`` (EfficientViT's):
    torch.export writes the eval-mode dropout as a copy between the BatchNorm and the Linear."""

    def __init__(self, p: float):
        super().__init__()
        self.bn, self.drop, self.fc = nn.BatchNorm1d(8), nn.Dropout(p), nn.Linear(8, 4)

    def forward(self, x):
        if x.shape[1] > 4:
            x = x * 1.0
        return self.fc(self.drop(self.bn(x)))


@pytest.mark.parametrize("p", [0.0, 0.5])
def test_an_eval_dropout_captured_by_torch_export_does_not_stop_a_fold(p):
    model = _prepared(lambda: NormDropLinear(p))
    result = convert(model, torch.randn(2, 8))
    assert "torch.export" in result.report.tracing and count(result.model, BN) == 0
    for batch in (1, 3):
        x = torch.randn(batch, 8)
        with torch.no_grad():
            assert scale_relative_error(model(x).numpy(), result.model(x).numpy()) <= 1e-5
