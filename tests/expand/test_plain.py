"""plain_weights(): fused weights loaded strictly into the plain class, matched by graph structure."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from reparam import reparameterize
from reparam.errors import MismatchError, ReparamError
from reparam.expansion import expand
from reparam.expansion.plain import plain_weights
from reparam.numerics import FP32_SCALE_REL, randomize_batchnorm, scale_relative_error
from reparam.zoo import create_model
from tests.expand._models import FanOut, FanOutGelu, FanOutRenamed, InputNorm, NoBiasHead, Seq1d, Vol3d


@torch.no_grad()
def _trained(plain: nn.Module, scheme: str, x: torch.Tensor, seed: int = 0) -> nn.Module:
    """Expand, then move every parameter and BN statistic (a stand-in for training)."""
    expanded, _ = expand(randomize_batchnorm(plain, seed=seed).eval(), scheme, example_inputs=x)
    gen = torch.Generator().manual_seed(seed + 7)
    for p in expanded.parameters():
        p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return randomize_batchnorm(expanded, seed=seed + 8).eval()


def _check_loads_and_matches(trained: nn.Module, plain_cls, x: torch.Tensor) -> None:
    result = plain_weights(trained, plain_cls(), example_inputs=x)
    assert result.error is not None and result.error <= FP32_SCALE_REL
    fresh = plain_cls()
    fresh.load_state_dict(result.state_dict, strict=True)
    with torch.no_grad():
        out, ref = fresh.eval()(x), trained(x)
    assert torch.isfinite(out).all()
    assert scale_relative_error(ref, out) <= FP32_SCALE_REL


@pytest.mark.parametrize(
    ("cls", "shape", "scheme"),
    [
        (FanOut, (2, 3, 20, 20), "acb"),
        (FanOut, (2, 3, 20, 20), "dbb"),
        (Seq1d, (2, 4, 33), "repvgg"),
        (Vol3d, (2, 2, 9, 9, 9), "acb"),
    ],
)
def test_plain_weights_load_strictly_and_compute_the_trained_model(cls, shape, scheme):
    torch.manual_seed(0)
    x = torch.randn(shape)
    _check_loads_and_matches(_trained(cls(), scheme, x), cls, x)


@pytest.mark.parametrize("pad", [0, 1])
def test_batchnorm_before_a_layer_is_taken_over_or_passes_through(pad):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 12, 12)
    trained = _trained(InputNorm(pad), "acb", x)
    deploy_bns = sum(isinstance(m, nn.BatchNorm2d) for m in reparameterize(trained, x).modules())
    assert deploy_bns == pad  # the engine folds a BatchNorm into the unpadded conv after it only
    _check_loads_and_matches(trained, lambda: InputNorm(pad), x)


def test_matching_ignores_names_nesting_and_registration_order():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 20, 20)
    trained = _trained(FanOut(), "repvgg", x)
    _check_loads_and_matches(trained, FanOutRenamed, x)
    result = plain_weights(trained, FanOutRenamed(), example_inputs=x)
    assert [m.plain for m in result.matches][:2] == ["entry.0", "body.4"]
    assert [m.deploy for m in result.matches][:2] == ["bn", "left"]


def test_zoo_resnet18_round_trip_to_plain_class():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    make = lambda: create_model("resnet18", width=0.125, num_classes=10)  # noqa: E731
    _check_loads_and_matches(_trained(make(), "acb", x), make, x)


def test_structure_mismatch_names_the_first_layer():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    trained = _trained(create_model("resnet18", width=0.125, num_classes=10), "acb", x)
    with pytest.raises(ReparamError, match=r"conv/linear layer #2 .*plain layer1\.0\.conv1\.conv .*\(1, 1\)"):
        plain_weights(trained, create_model("resnet50", width=0.125, num_classes=10), example_inputs=x)
    headless = create_model("resnet18", width=0.125, num_classes=10)
    headless.fc = nn.Identity()
    with pytest.raises(ReparamError, match=r"#21 .*plain \(nothing\) vs fused fc"):
        plain_weights(trained, headless, example_inputs=x)


def test_same_shapes_other_computation_fails_the_numeric_check():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 20, 20)
    trained = _trained(FanOut(), "acb", x)
    with pytest.raises(MismatchError, match="differs from the fused model"):
        plain_weights(trained, FanOutGelu(), example_inputs=x)


def test_a_plain_layer_that_cannot_hold_the_bias_is_refused():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 20, 20)
    trained = _trained(FanOut(), "acb", x)
    with pytest.raises(ReparamError, match="'head' has no bias and no BatchNorm"):
        plain_weights(trained, NoBiasHead(), example_inputs=x)
