"""Published ScaleNet structures: MACs/params at 224×224, the authors' block layout, file round trips."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from reparam.blocks import SABlock
from reparam.checkpoint import build_model
from reparam.errors import ReparamError
from reparam.numerics import randomize_batchnorm
from reparam.profile import count_macs, count_params
from reparam.zoo import create_model
from reparam.zoo.scalenet import (
    PUBLISHED,
    dump_structure,
    load_structure,
    packaged_structure_path,
    published_sa,
    uniform_structure,
)

X224 = torch.randn(1, 3, 224, 224)


def _macs_params(model) -> tuple[float, float]:
    return count_macs(model.eval(), (X224,)) / 1e9, count_params(model) / 1e6


@pytest.mark.parametrize(
    "name,structure,gmacs,mparams",
    [
        ("scalenet50", "scalenet50", 3.818, 31.48),
        ("scalenet50", "scalenet50_light", 2.861, 23.63),
        ("scalenet101", "scalenet101", 7.511, 54.79),
    ],
)
def test_published_macs_and_params(name, structure, gmacs, mparams):
    macs, params = _macs_params(create_model(name, structure=structure))
    assert macs == pytest.approx(gmacs, rel=0.01)
    assert params == pytest.approx(mparams, rel=0.01)


@pytest.mark.slow
def test_scalenet152_builds_from_its_structure():
    model = create_model("scalenet152").eval()
    assert sum(isinstance(m, SABlock) for m in model.modules()) == 50
    assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_structure_from_a_file_and_through_arch_kwargs(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(packaged_structure_path("scalenet50").read_text())
    a = create_model("scalenet50", structure=str(path), width=0.25)
    b = build_model("scalenet50", json.loads(json.dumps({"structure": str(path), "width": 0.25})))
    sa = [m.allocation for m in a.modules() if isinstance(m, SABlock)]
    assert sa == [tuple(e[:4]) for e in load_structure(path)]
    assert sa == [m.allocation for m in b.modules() if isinstance(m, SABlock)]


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_files_round_trip(name, tmp_path):
    text = packaged_structure_path(name).read_text()
    assert dump_structure(load_structure(name)) == text.strip()
    out = tmp_path / "again.json"
    out.write_text(dump_structure(json.loads(text)))
    assert load_structure(out) == json.loads(text)


def test_published_block_layout_follows_the_authors_rules():
    model = create_model("scalenet50", structure="scalenet50")
    blocks = [m for m in model.modules() if isinstance(m, SABlock)]
    last = blocks[-1]  # [138, 462, 97, 0, 7]: scale 7 dropped; 7/4 > 1 keeps a 3×3 kernel
    assert last.allocation == (138, 462, 97, 0) and last.scales == (1, 2, 4)
    assert last.upsample_modes == ("nearest", "bilinear", "nearest")  # 7 → 3 is not an integer factor
    light_last = [
        m
        for m in create_model("scalenet50", structure="scalenet50_light").modules()
        if isinstance(m, SABlock)
    ][-1]
    assert light_last.kernel_sizes == (3, 3, 3, 1)  # 7 / 2**3 <= 1: 1×1 on the 1×1 map
    # Strided blocks pool first and keep the shortcut 1×1 conv at stride 1.
    first = model.layer2[0]
    assert isinstance(first.pool, torch.nn.MaxPool2d) and first.shortcut.conv.stride == (1, 1)


def test_published_sa_computes_the_authors_order():
    """Pool → conv → upsample → BN → concat → ReLU (the authors' order) equals our block in eval mode."""
    sa = randomize_batchnorm(published_sa(8, [3, 2, 2, 1, 14]), seed=3).eval()
    x = torch.randn(2, 8, 14, 14)
    outs = []
    convs = [m for m in sa.modules() if isinstance(m, torch.nn.Conv2d)]
    bns = [m for m in sa.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for s, conv, bn in zip((1, 2, 4, 7), convs, bns):
        y = conv(F.max_pool2d(x, s, s) if s > 1 else x)
        if s > 1:
            exact = 14 % y.shape[2] == 0
            y = F.interpolate(
                y,
                size=[14, 14],
                mode="nearest" if exact else "bilinear",
                align_corners=None if exact else False,
            )
        outs.append(bn(y))
    with torch.no_grad():
        expected = F.relu(torch.cat(outs, 1))
        assert torch.allclose(sa(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "structure",
    [
        [[1, 2, 3, 4, 56]] * 15,
        [[0, 0, 0, 0, 56]] * 16,
        [[1, 2, 3, 56]] * 16,
        "no_such_file.json",
        [[1.5, 2, 3, 4, 56]] * 16,
    ],
)
def test_bad_structures_are_one_error(structure):
    with pytest.raises(ReparamError):
        create_model("scalenet50", structure=structure)


def test_structure_excludes_channels_per_scale():
    with pytest.raises(ReparamError, match="either structure"):
        create_model("scalenet50", structure="scalenet50", channels_per_scale=[[1, 1, 1, 1]] * 16)


def test_uniform_structure_sides_match_the_published_ones():
    published = load_structure("scalenet50")
    uniform = uniform_structure("scalenet50")
    assert [e[4] for e in uniform] == [e[4] for e in published]
    assert uniform[0][:4] == [16, 16, 16, 16] and uniform[-1][:4] == [128] * 4
    assert [e[4] for e in uniform_structure("scalenet26", input_size=32)] == [8, 8, 4, 4, 2, 2, 1, 1]


def test_scalenet26_runs_on_small_inputs_with_a_structure_for_them():
    structure = uniform_structure("scalenet26", 0.125, input_size=16)
    model = create_model("scalenet26", width=0.125, num_classes=10, in_chans=1, structure=structure).eval()
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 10)  # 1-pixel maps keep one pixel
