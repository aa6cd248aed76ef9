"""Randomized models, fusible and near miss: zero wrong models, zero raw exceptions.

Each generated model is converted *without* the built-in check, so that nothing but the passes
themselves stands between the model and a wrong result; the test then judges the deploy model
with the fp32 rule, at the example input and at other batch sizes and one other spatial size:
the deploy model must run wherever the original runs, with the same result. Every outcome must
be a correct model or one ReparamError.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from reparam.engine import convert
from reparam.errors import ReparamError
from reparam.numerics import fp32_limit, scale_relative_error
from reparam.profile import count_macs
from tests.engine._models import assert_untouched, count, fingerprint
from tests.engine._random_models import FAMILIES, FUSIBLE, generate

BN = nn.modules.batchnorm._BatchNorm
FAST_SEEDS = range(3)
# the slow test: SLOW_CHUNKS tests of CHUNK_SEEDS models each, for pytest-xdist to spread
SLOW_CHUNKS, CHUNK_SEEDS = 10, 200
OTHER_BATCHES = (1, 2, 3)
WIDER = 4  # the other spatial size: this many rows and columns more than the example


def _run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x.clone())


def _fp32_noise(model64: nn.Module, x: torch.Tensor, out: torch.Tensor) -> float:
    """The fp32 output's distance from the float64 model's output (``model64``, a double copy)."""
    with torch.no_grad():
        out64 = model64(x.clone().double())
    return scale_relative_error(out64.numpy(), out.double().numpy())


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def _other_inputs(seed: int, x: torch.Tensor) -> list[torch.Tensor]:
    """Fresh seeded inputs of batch 1, 2 and 3 at the example's C×H×W, and one wider and taller."""
    gen = torch.Generator().manual_seed(seed + 1)
    n, c, h, w = x.shape
    shapes = [(b, c, h, w) for b in OTHER_BATCHES] + [(n, c, h + WIDER, w + WIDER)]
    return [torch.randn(shape, generator=gen) for shape in shapes]


def _check_other_sizes(seed: int, family: str, reference: nn.Module, deploy: nn.Module, x) -> None:
    """The deploy model runs at every other input size the original runs at, with the same result.

    A size the original raises at is skipped; the limit is the fp32 rule for each input.
    """
    reference64 = copy.deepcopy(reference).double()
    for xs in _other_inputs(seed, x):
        size = tuple(xs.shape)
        try:
            ref = _run(reference, xs)
        except Exception:
            continue  # the original does not run at this size: nothing to keep
        try:
            got = _run(deploy, xs)
        except Exception as exc:
            raise AssertionError(
                f"{family} seed {seed}: the deploy model fails at input {size}, where the original "
                f"runs: {_first_line(exc)}"
            ) from exc
        assert got.shape == ref.shape, (
            f"{family} seed {seed}: output {tuple(got.shape)} at input {size}, not {tuple(ref.shape)}"
        )
        limit = fp32_limit(_fp32_noise(reference64, xs, ref))
        err = scale_relative_error(ref.numpy(), got.numpy())
        assert err <= limit, (
            f"{family} seed {seed}: wrong deploy model at input {size} (error {err:.3g} > {limit:.3g})"
        )


def judge(seed: int, family: str | None) -> str:
    """Convert one generated model; returns 'fused' or 'refused'; fails the test on a wrong model."""
    g = generate(seed, family)
    family = g.family
    reference_model = copy.deepcopy(g.model).eval()  # a training-mode BN is converted as its eval form
    before = fingerprint(g.model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = convert(g.model, g.x, check=False)
        except ReparamError as exc:
            assert exc.message and "\n" not in exc.message
            assert g.expected_convs is None, f"{family}: a fusible model was refused: {exc}"
            return "refused"
        finally:
            assert_untouched(g.model, before)
    deploy = result.model
    assert result.report.before.macs == count_macs(reference_model, (g.x.clone(),))
    assert result.report.after.macs == count_macs(deploy, (g.x.clone(),))
    ref, got = _run(reference_model, g.x), _run(deploy, g.x)
    assert ref.shape == got.shape
    limit = fp32_limit(_fp32_noise(copy.deepcopy(reference_model).double(), g.x, ref))
    err = scale_relative_error(ref.numpy(), got.numpy())
    assert err <= limit, f"{family} seed {seed}: wrong deploy model (error {err:.3g} > {limit:.3g})"
    _check_other_sizes(seed, family, reference_model, deploy, g.x)
    if g.expected_convs is not None:
        assert count(deploy, BN) == 0, f"{family}: BatchNorm left"
        assert count(deploy, nn.Conv2d) == g.expected_convs, f"{family}: {count(deploy, nn.Conv2d)} convs"
    if family == "training_bn":
        assert any("training mode" in str(w.message) for w in caught)
    if family in ("inplace_input", "inplace_between"):  # the in-place op survives as its out-of-place form
        assert ("x.mul(2)" if family == "inplace_input" else "inplace = False") in deploy.code
    return "fused"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("seed", FAST_SEEDS)
def test_generated_model_is_exact_or_refused(family, seed):
    judge(seed, family)


def test_fusible_families_reach_the_plain_conv_count():
    outcomes = {f: judge(11, f) for f in FUSIBLE}
    assert set(outcomes.values()) == {"fused"}


@pytest.mark.slow
@pytest.mark.parametrize("chunk", range(SLOW_CHUNKS))
def test_many_generated_models_are_exact_or_refused(chunk):
    """SLOW_CHUNKS x CHUNK_SEEDS models: every third seed of a family in turn, the others drawn."""
    seeds = range(chunk * CHUNK_SEEDS, (chunk + 1) * CHUNK_SEEDS)
    outcomes, failures = [], []
    for seed in seeds:
        family = None if seed % 3 else FAMILIES[seed % len(FAMILIES)]
        try:
            outcomes.append(judge(seed, family))
        except Exception as exc:  # every failure of the chunk is listed, not the first alone
            why = str(exc).strip().split("\n")[0] if isinstance(exc, AssertionError) else _first_line(exc)
            failures.append(f"seed {seed} ({generate(seed, family).family}): {why}")
    if failures:
        pytest.fail(f"{len(failures)} of {len(seeds)} models failed:\n" + "\n".join(failures), pytrace=False)
    assert outcomes.count("fused") > 0.7 * len(seeds)
