"""Per-block tables run in execution order across candidates; a block warning names the limit it uses."""

from __future__ import annotations

import numpy as np

from reparam.equivalence import locate_divergence
from reparam.verify.report import merged_order


def test_merged_order_puts_stage_outputs_after_their_blocks():
    in_memory = ["stem", "layer1.0", "layer1.1", "layer2.0", "layer2.1"]
    onnx = ["stem", "layer1.0", "layer1.1", "layer1", "layer2.0", "layer2.1", "layer2"]
    expected = ["stem", "layer1.0", "layer1.1", "layer1", "layer2.0", "layer2.1", "layer2"]
    assert merged_order([in_memory, onnx]) == expected
    assert merged_order([onnx, in_memory]) == expected


def test_block_warning_names_the_profile_and_the_limit():
    rng = np.random.default_rng(0)
    ref = {"block": (rng.standard_normal(1000).astype(np.float32),)}
    cand = {"block": (ref["block"][0] + np.float32(1e-3) * rng.standard_normal(1000).astype(np.float32),)}
    div = locate_divergence(ref, cand, ["block"], "fp32", output_failed=False)
    assert div.first_diverging == "block"
    assert "within the fp32 tolerance" in div.note and "exceeds the fp32 limit" in div.note
    assert "> 1e-05" in div.note  # the limit itself, not only the error
