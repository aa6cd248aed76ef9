"""Shapes from the cheap run equal the shapes of a real run, on every kind of model the engine sees."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from reparam.engine.capture import export_capture, trace
from reparam.engine.shapes import NeedsRealRun, cheap_shapes, propagate_shapes, real_shapes
from reparam.zoo import create_model, list_models
from tests.engine import _published as pub
from tests.engine._models import prepared
from tests.engine._random_models import FAMILIES, generate
from tests.timm_support import import_timm


def _same_shapes(model: nn.Module, x: torch.Tensor, *, cheap_must_work: bool = True) -> bool:
    """Real and cheap-run shapes agree (node by node); returns whether the cheap run worked."""
    model = model.eval()
    gm, why = trace(model)
    if gm is None:
        captured, why = export_capture(model, (x,))
        gm = captured.gm if captured is not None else None
    if gm is None and not cheap_must_work:
        return False  # converted part by part: each part is a model of its own
    assert gm is not None, why
    real = real_shapes(gm, (x,))
    assert real, "the real run shaped nothing"
    try:
        cheap = cheap_shapes(gm, (x,))
    except Exception:
        assert not cheap_must_work, "the cheap run failed on a model it is meant to cover"
        return False
    assert {n.name: cheap.get(n) for n in gm.graph.nodes} == {n.name: real.get(n) for n in gm.graph.nodes}
    return True


@pytest.mark.parametrize("name", list_models())
def test_zoo_models(name):
    model = prepared(create_model(name, num_classes=7, width=0.25))
    # ScaleNet's scale_pool is a function of its own, which the cheap run does not know
    worked = _same_shapes(model, torch.randn(2, 3, 32, 32), cheap_must_work=False)
    assert worked or name.startswith("scalenet")


@pytest.mark.parametrize(
    ("make", "shape"),
    [
        (lambda: pub.FunctionalConvBN(3, 4), (2, 3, 8, 8)),
        (lambda: pub.RepStyleWithNormAct(4), (2, 4, 8, 8)),
        (lambda: pub.OnlineReparam(4, 4, 2), (2, 4, 7, 7)),
        (lambda: pub.FillBorderWithBN(4, 1), (1, 4, 9, 9)),
        (lambda: pub.DiverseBranches(4, k=5), (1, 4, 11, 11)),
        (lambda: pub.PreNormPointwise(4), (2, 4, 8, 8)),
        (lambda: pub.ShapeCheckTop(4), (2, 3, 9, 9)),
        (lambda: pub.SyncNormNet(4), (2, 3, 8, 8)),
    ],
)
def test_published_designs(make, shape):
    _same_shapes(make(), torch.randn(*shape), cheap_must_work=False)


@pytest.mark.parametrize("family", FAMILIES)
def test_random_families(family):
    g = generate(0, family)
    _same_shapes(g.model, g.x, cheap_must_work=False)


class _Odd(nn.Module):
    """A shape that depends on values: the real run takes over."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.conv = nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect", stride=2)

    def forward(self, x):
        y = self.conv(x)
        kept = y.flatten()[y.flatten() > 0]  # length depends on the values
        return y + kept.sum() + self.embed(torch.zeros(1, dtype=torch.long, device=x.device)).sum()


def test_cheap_run_refuses_what_it_cannot_know_and_the_real_run_takes_over():
    gm, why = trace(_Odd().eval())
    assert gm is not None, why
    x = torch.randn(1, 4, 9, 9)
    with pytest.raises(NeedsRealRun):
        cheap_shapes(gm, (x,))
    assert propagate_shapes(gm, (x,))
    out = next(n for n in gm.graph.nodes if n.op == "output")
    assert out.meta["tensor_meta"].shape == (1, 4, 5, 5)


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv1d(3, 4, 3, stride=2, padding=2, dilation=2),
        nn.Conv2d(3, 6, (3, 5), stride=(2, 1), padding=(0, 2), groups=3),
        nn.Conv2d(3, 4, 4, padding="same", dilation=2),
        nn.Conv2d(3, 4, 3, padding="valid"),
        nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular"),
        nn.Conv3d(3, 4, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
    ],
)
def test_convolution_shape_formula(conv):
    x = torch.randn(2, 3, *([9] * (conv.weight.dim() - 2)))
    assert _same_shapes(nn.Sequential(conv, nn.ReLU()), x)
    assert _same_shapes(nn.Sequential(conv), x[0])  # unbatched input


def test_linear_and_normalisations():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.PReLU(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, 6), nn.LayerNorm(6), nn.BatchNorm1d(6), nn.Dropout(0.5),
    )  # fmt: skip
    assert _same_shapes(model, torch.randn(2, 3, 8, 8))
    assert _same_shapes(nn.Sequential(nn.Linear(4, 5)), torch.randn(2, 7, 4))  # any leading dims


@pytest.mark.slow
@pytest.mark.parametrize("name", ["repvgg_a0", "mobileone_s0"])
def test_timm_models(name):
    timm = import_timm()
    assert _same_shapes(timm.create_model(name, num_classes=10), torch.randn(1, 3, 64, 64))
