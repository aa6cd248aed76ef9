import os

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
    cost = measure_zoo_model("acb_resnet56_cifar", 0.25, [1, 3, 16, 16], export=False, seed=0, runs=3)
    assert len(cost.run_totals_s) == 3
    assert cost.total_s == sorted(cost.run_totals_s)[1]  # the median run's phases are reported
    assert cost.trace_s + cost.passes_s + cost.check_s == pytest.approx(cost.total_s)
    assert cost.check_passed is True
    assert cost.param_bytes > 0 and cost.total_s > 0
    assert cost.export_s is None and cost.peak_rss_delta_bytes is not None


def test_worker_failure_is_a_reparam_error():
    with pytest.raises(ReparamError, match="unknown model .no_such_model.") as info:
        run_worker({"model": "no_such_model", "width": 1.0, "input_shape": [1, 3, 8, 8], "export": False})
    assert "reparam zoo" in info.value.hint


FAKE_TIMM = '''
"""A stand-in for timm with the two entry points the benchmark uses."""
__version__ = "0.0-fake"


def create_model(name, pretrained=False):
    from reparam.zoo import create_model as zoo

    assert name == "repvgg_a0" and not pretrained
    return zoo("repvgg_a0", width=0.25, num_classes=10)
'''

FAKE_TIMM_MODEL = """
import copy


def reparameterize_model(model, inplace=False):
    model = model if inplace else copy.deepcopy(model)
    for m in list(model.modules()):
        if hasattr(m, "reparameterize") and hasattr(m, "get_equivalent_kernel_bias"):
            m.reparameterize()
    return model
"""


@pytest.fixture
def own_timm_modules():
    """Whatever these tests import as ``timm`` is gone afterwards; a real timm imported before comes back."""
    import sys

    def timm_modules() -> dict:
        return {k: v for k, v in sys.modules.items() if k == "timm" or k.startswith("timm.")}

    saved = timm_modules()
    yield
    for name in timm_modules():
        del sys.modules[name]
    sys.modules.update(saved)


@pytest.mark.usefixtures("own_timm_modules")
def test_timm_comparison_runs_against_a_timm_like_package(tmp_path, monkeypatch):
    from reparam.bench.conversion import measure_timm

    pkg = tmp_path / "timm"
    (pkg / "utils").mkdir(parents=True)
    (pkg / "__init__.py").write_text(FAKE_TIMM)
    (pkg / "utils" / "__init__.py").write_text("")
    (pkg / "utils" / "model.py").write_text(FAKE_TIMM_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("timm", "timm.utils", "timm.utils.model"):
        monkeypatch.delitem(__import__("sys").modules, name, raising=False)
    cost = measure_timm("repvgg_a0", [1, 3, 32, 32], seed=0, runs=2)
    assert cost is not None and cost.source == "timm" and cost.model == "timm/repvgg_a0"
    assert cost.check_passed is True and cost.reference_s is not None and cost.reference_s > 0
    assert len(cost.paired_ratios) == 2 and all(r > 0 for r in cost.paired_ratios)
    err = next(n for n in cost.notes if "scale-relative error" in n)
    assert float(err.rsplit(" ", 1)[1]) < 1e-5  # reparam and the block's own reparameterize agree


def test_timm_comparison_is_skipped_without_timm(monkeypatch):
    import importlib.util

    from reparam.bench import conversion

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "timm" else real(name, *a)
    )
    assert conversion.measure_timm("repvgg_a0", [1, 3, 32, 32], seed=0) is None
    rows, notes = conversion.bench_conversion([], width=1.0, input_shape=[1, 3, 32, 32])
    assert rows == [] and any("timm is not installed" in n for n in notes)


@pytest.mark.usefixtures("own_timm_modules")
def test_timm_that_cannot_be_imported_is_a_note_not_a_crash(tmp_path, monkeypatch):
    from reparam.bench.conversion import measure_timm

    (tmp_path / "timm").mkdir()
    (tmp_path / "timm" / "__init__.py").write_text("import torchvision_that_is_missing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, "timm", raising=False)
    why = measure_timm("repvgg_a0", [1, 3, 32, 32], seed=0)
    assert isinstance(why, str) and "cannot be imported" in why and "torchvision_that_is_missing" in why


def test_other_load_subtracts_this_process_and_its_children(monkeypatch):
    from reparam.bench import machine

    ticks = iter([(100, 50, 400), (300, 200, 800)])  # (busy, own incl. reaped children, total)
    monkeypatch.setattr(machine, "_cpu_ticks", lambda: next(ticks))
    with machine.OtherLoad() as load:
        pass
    assert load.fraction == pytest.approx((200 - 150) / 400)
    monkeypatch.setattr(machine, "_cpu_ticks", lambda: None)
    with machine.OtherLoad() as unknown:
        pass
    assert unknown.fraction is None


def test_other_load_sees_a_spinning_process():
    import subprocess
    import sys
    import time

    from reparam.bench.machine import OtherLoad, _cpu_ticks

    if _cpu_ticks() is None:
        pytest.skip("/proc is not available")
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        with OtherLoad() as other:
            time.sleep(1.0)
    finally:
        busy.kill()
        busy.wait()
    # One spinning process is up to a whole CPU; even on a contended machine it gets a good part of one.
    assert other.fraction >= 0.4 / (os.cpu_count() or 1)
