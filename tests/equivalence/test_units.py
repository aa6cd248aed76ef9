"""Units of the equivalence core: Boundaries, the built-in check's verdict, noise, block capture."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import fx, nn

from reparam.engine.record import RewriteRecord
from reparam.equivalence import (
    Boundaries,
    BoundaryKind,
    block_metrics,
    fp32_noise,
    graph_boundaries,
    judge_error,
    output_error,
)
from reparam.equivalence.boundaries import ONNX_METADATA_KEY


def test_boundaries_round_trip_through_the_record_json():
    record = RewriteRecord(boundaries=Boundaries(BoundaryKind.MODULE, {"a": "a", "b.c": "b.c"}))
    data = record.to_dict()
    assert data["boundary_kind"] == "module" and data["boundaries"] == {"a": "a", "b.c": "b.c"}
    again = RewriteRecord.from_dict(data)
    assert again.boundaries == record.boundaries and again.boundaries.kind is BoundaryKind.MODULE
    # a record written before boundary kinds were stored is read as graph-node boundaries
    old = RewriteRecord.from_dict({"entries": [], "boundaries": {"a": "relu_1"}})
    assert old.boundaries.kind is BoundaryKind.GRAPH_NODE and dict(old.boundaries) == {"a": "relu_1"}
    with pytest.raises(ValueError):
        Boundaries.from_dict({"boundaries": {}, "boundary_kind": "something else"})


def test_onnx_metadata_is_read_back_and_garbage_reads_as_empty():
    onnx = pytest.importorskip("onnx")
    model = onnx.ModelProto()
    Boundaries(BoundaryKind.ONNX_TENSOR, {"layer1": "t1"}).write_onnx(model)
    Boundaries(BoundaryKind.ONNX_TENSOR, {"layer2": "t2"}).write_onnx(model)  # replaces, never duplicates
    assert [p.key for p in model.metadata_props] == [ONNX_METADATA_KEY]
    assert dict(Boundaries.read_onnx(model)) == {"layer2": "t2"}
    model.metadata_props[0].value = "{not json"
    assert (
        not Boundaries.read_onnx(model)
        and Boundaries.read_onnx(onnx.ModelProto()).kind is BoundaryKind.ONNX_TENSOR
    )
    model.metadata_props[0].value = "[1, 2]"
    assert not Boundaries.read_onnx(model)


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x))


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.second = _Block(), _Block()

    def forward(self, x):
        return self.second(self.first(x))


def test_graph_boundaries_name_the_node_that_leaves_each_block():
    gm = fx.symbolic_trace(_Net())
    boundaries = graph_boundaries(gm, {"first", "second"})
    assert boundaries.kind is BoundaryKind.GRAPH_NODE
    nodes = {n.name: n for n in gm.graph.nodes}
    assert nodes[boundaries["first"]].target is torch.relu
    assert set(nodes[boundaries["first"]].users) == {nodes["second_conv"]}
    assert boundaries.in_graph(gm) == boundaries  # found by name in the graph itself
    assert not Boundaries(BoundaryKind.MODULE, {"first": "first"}).in_graph(gm)


def test_the_verdict_measures_noise_only_past_the_fixed_limit():
    calls = []

    def noise():
        calls.append(1)
        return 1e-5

    assert judge_error(5e-6, torch.float32, noise).passed and not calls
    verdict = judge_error(5e-5, torch.float32, noise)
    assert verdict.passed and verdict.limit == pytest.approx(1e-4) and verdict.noise == 1e-5 and calls == [1]
    assert not judge_error(2e-4, torch.float32, noise).passed
    assert not judge_error(math.inf, torch.float32, noise).passed
    assert not judge_error(math.nan, torch.float32, noise).passed
    # other dtypes have their own fixed limit and no noise rule
    calls.clear()
    assert (
        judge_error(5e-3, torch.float16, noise).passed and not judge_error(2e-2, torch.float16, noise).passed
    )
    assert not judge_error(1e-9, torch.float64, noise).passed and not calls


def test_fp32_noise_is_the_float32_error_against_float64():
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(64, 64) for _ in range(6)]).eval()
    x = torch.randn(4, 64)
    with torch.no_grad():
        out = model(x)
    noise = fp32_noise(model, (x,), out)
    assert noise is not None and 0 < noise < 1e-5
    assert model[0].weight.dtype == torch.float32  # measured on a copy
    assert fp32_noise(model, (x,), out + 1) > 1e-3


def test_block_metrics_take_the_worst_output_and_refuse_unpaired_values():
    a = np.ones((2, 3), np.float32)
    worst = block_metrics((a, a), (a, a + 0.5))
    assert worst.scale_rel == pytest.approx(0.5)
    with pytest.raises(ValueError):
        block_metrics((a, a), (a,))
    with pytest.raises(ValueError):
        block_metrics((), ())
    nan = a.copy()
    nan[0, 0] = np.nan
    assert block_metrics((a,), (nan,)).nonfinite == 1


def test_output_error_compares_every_tensor_of_a_structured_output():
    ref = {"a": torch.ones(3), "b": (torch.zeros(2), torch.full((2,), 2.0))}
    same = output_error(ref, {"a": torch.ones(3), "b": (torch.zeros(2), torch.full((2,), 2.0))})
    assert same.scale_rel == 0 and same.ref_max_abs == 2.0
    off = output_error(ref, {"a": torch.ones(3), "b": (torch.zeros(2), torch.full((2,), 2.5))})
    assert off.scale_rel == pytest.approx(0.25) and off.max_abs == pytest.approx(0.5)
    assert output_error(torch.ones(3), torch.ones(4)).scale_rel == math.inf
