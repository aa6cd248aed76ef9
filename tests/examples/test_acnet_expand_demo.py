"""examples/acnet_expand_demo.py: one short seed runs end to end and the fused plain model is the trained one."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn")

_PATH = Path(__file__).resolve().parents[2] / "examples" / "acnet_expand_demo.py"


def _load():
    spec = importlib.util.spec_from_file_location("acnet_expand_demo", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("acnet_expand_demo", module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_one_seed_on_a_small_split():
    demo = _load()
    x_train, y_train, x_test, y_test = demo.load_digits_split(seed=0)
    data = (x_train[:64], y_train[:64], x_test[:64], y_test[:64])
    row = demo.run_seed(0, data, epochs=1, scheme="acb")
    assert row["expanded_convs"] == 7  # stem + 3 stages × 2 convs of the depth-8 network
    assert row["fused_vs_expanded_error"] <= 1e-5
    # the handed-back plain network is the trained expanded one: same predictions up to fp32 ties
    assert abs(row["fused_plain_accuracy"] - row["expanded_accuracy"]) <= 1 / 64
    for key in ("plain_accuracy", "expanded_accuracy", "fused_plain_accuracy"):
        assert 0.0 <= row[key] <= 1.0
