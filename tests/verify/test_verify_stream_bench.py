"""``reparam.bench.verify_stream``: the paired cost of streaming verify against the raw runs."""

from __future__ import annotations

import numpy as np
import pytest

from reparam.bench.verify_stream import TARGET_RATIO, _stream, bench_verify_stream, seeded_batches


def test_the_streamed_batches_are_the_listed_ones():
    listed = seeded_batches(21, 8, (3, 4, 4), seed=5)
    streamed = list(_stream(21, 8, (3, 4, 4), seed=5))
    assert [b["input"].shape[0] for b in listed] == [8, 8, 5]
    assert all(np.array_equal(a["input"], b["input"]) for a, b in zip(listed, streamed))


@pytest.mark.slow
def test_a_small_run_measures_both_sides_and_verifies():
    cost = bench_verify_stream("resnet18", samples=32, batch_size=8, width=0.125, repeats=2, warmup=0)
    assert cost.passed and cost.candidates == ["model.pt2", "model.onnx"]
    assert cost.ratio.n == 2 and cost.ratio.median > 0 and cost.raw_s.median > 0
    assert set(cost.peak_traced_bytes) == {8, 32}
    data = cost.to_dict()
    assert data["target_ratio"] == TARGET_RATIO and data["input_shape"] == [8, 3, 32, 32]
