import numpy as np
import pytest
import torch
from torch import fx, nn

import reparam.engine.core as core
from reparam.bench.conversion import _timed_attr, measure_zoo_model, peak_memory, run_worker, timed_convert
from reparam.errors import ReparamError


def test_peak_memory_sees_a_transient_allocation():
    with peak_memory() as mem:
        block = np.ones(48 * 2**20, dtype=np.uint8)  # 48 MiB, touched so it is resident
        del block
    assert mem["method"]
    assert 40 * 2**20 <= mem["delta_bytes"] <= 200 * 2**20


def test_timed_attr_accumulates_and_restores():
    class Owner:
        @staticmethod
        def f(x):
            return x + 1

    original = Owner.f
    totals: dict[str, float] = {}
    with _timed_attr(Owner, "f", totals, "f"):
        assert Owner.f(1) == 2 and Owner.f(2) == 3
        assert Owner.f is not original
    assert Owner.f is original
    assert totals["f"] > 0
    with _timed_attr(Owner, "missing", totals, "m"):
        pass
    assert "m" not in totals and not hasattr(Owner, "missing")


def test_timed_convert_splits_phases_of_one_real_conversion():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()).eval()
    result, phases = timed_convert(model, (torch.randn(1, 3, 16, 16),))
    assert result.report.check.passed
    assert not any(isinstance(m, nn.BatchNorm2d) for m in result.model.modules())
    assert phases["trace"] > 0 and phases["passes"] > 0 and phases["check"] >= 0
    assert phases["trace"] + phases["passes"] + phases["check"] == pytest.approx(phases["total"])
    assert fx.symbolic_trace.__name__ == "symbolic_trace"  # wrappers removed again
    assert core.run_passes.__name__ == "run_passes"


def test_measure_zoo_model_in_process_tiny():
    cost = measure_zoo_model("acb_resnet56_cifar", 0.25, [1, 3, 16, 16], export=False, seed=0)
    assert cost.check_passed is True
    assert cost.param_bytes > 0 and cost.total_s > 0
    assert cost.export_s is None and cost.peak_rss_delta_bytes is not None


def test_worker_failure_is_a_reparam_error():
    with pytest.raises(ReparamError, match="unknown model .no_such_model.") as info:
        run_worker({"model": "no_such_model", "width": 1.0, "input_shape": [1, 3, 8, 8], "export": False})
    assert "reparam zoo" in info.value.hint
