"""Tiny ScaleNet seeds shared by the slim tests (8 channels per scale, 32×32 inputs)."""

from __future__ import annotations

import pytest

from reparam.numerics import calibrate_batchnorm
from reparam.zoo import create_model

SHAPE = (1, 3, 32, 32)
# Published form at 32×32: every scale over-provisioned with 8 channels; sides of that resolution.
SEED_STRUCTURE = [[8, 8, 8, 8, 8]] * 3 + [[8, 8, 8, 8, 4]] * 4 + [[8, 8, 8, 8, 2]] * 6 + [[8, 8, 8, 8, 1]] * 3
PUBLISHED_KW = {"structure": SEED_STRUCTURE, "width": 0.125, "num_classes": 10}
PROJECT_KW = {"width": 0.125, "num_classes": 10, "channels_per_scale": [[8, 8, 8, 8]] * 16}


def make_seed(kwargs: dict, seed: int = 0):
    """A seed with random BN γ/β and statistics measured on random data (eval mode)."""
    return calibrate_batchnorm(create_model("scalenet50", **kwargs), seed, shape=(8, *SHAPE[1:]))


@pytest.fixture(scope="module")
def published_seed():
    return make_seed(PUBLISHED_KW)


@pytest.fixture(scope="module")
def project_seed():
    return make_seed(PROJECT_KW)
