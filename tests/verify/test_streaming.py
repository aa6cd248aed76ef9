"""Streaming verification: any iterable of batches, memory flat in their number, blocks localized
where asked, the fp32 noise floor measured only when needed, and golden results checked by the
same loop as a live reference."""

from __future__ import annotations

import copy
import tracemalloc
from dataclasses import replace

import numpy as np
import pytest
import torch

from reparam.equivalence import BoundaryKind
from reparam.errors import ReparamError
from reparam.verify import core as verify_core
from reparam.verify import reference as verify_reference
from reparam.verify.core import compute_reference, make_candidate, verify
from reparam.verify.golden import save_golden, verify_golden
from tests.verify._models import Record, tiny_pair


def _batches(n: int, seed: int = 0, rows: int = 2):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield {"input": rng.standard_normal((rows, 3, 8, 8)).astype(np.float32)}


def _broken(gm):
    bad = copy.deepcopy(gm)
    with torch.no_grad():
        bad.get_submodule("layer1.1.conv").weight.mul_(1.5)
    return bad


def test_a_generator_gives_the_report_a_list_gives():
    ref, gm, boundaries = tiny_pair()
    record = Record(boundaries)
    cands = [
        make_candidate(gm, name="good", record=record),
        make_candidate(_broken(gm), name="bad", record=record),
    ]
    from_list = verify(ref, cands, list(_batches(20)), localize="always")
    from_stream = verify(ref, cands, _batches(20), localize="always")
    for a, b in zip(from_list.candidates, from_stream.candidates):
        assert a.passed == b.passed
        assert a.outputs["output"].metrics == b.outputs["output"].metrics
        assert a.divergence.first_diverging == b.divergence.first_diverging
    good, bad = from_stream.candidates
    assert good.passed and not bad.passed and bad.divergence.first_diverging == "layer1.1"
    assert from_stream.candidates[0].outputs["output"].metrics.shape == (40, 5)


def test_blocks_are_localized_only_where_asked():
    ref, gm, boundaries = tiny_pair()
    record = Record(boundaries)
    cands = [
        make_candidate(gm, name="good", record=record),
        make_candidate(_broken(gm), name="bad", record=record),
    ]
    good, bad = verify(ref, cands, _batches(3)).candidates  # the default: "auto"
    assert good.divergence is None and bad.divergence.first_diverging == "layer1.1"
    for mode in ("on_failure", "auto"):
        good, bad = verify(ref, cands, _batches(3), localize=mode).candidates
        assert good.divergence is None
        assert bad.divergence.first_diverging == "layer1.1"
    good, bad = verify(ref, cands, _batches(3), localize="never").candidates
    assert good.divergence is None and bad.divergence is None
    with pytest.raises(ValueError, match="localize"):
        verify(ref, cands, _batches(1), localize="sometimes")


def test_the_float64_reference_runs_only_when_a_candidate_exceeds_the_fixed_limit(monkeypatch):
    ref, gm, boundaries = tiny_pair()
    copies = []
    real = verify_reference.float64_copy
    monkeypatch.setattr(verify_reference, "float64_copy", lambda m: copies.append(1) or real(m))
    report = verify(ref, [make_candidate(gm, record=Record(boundaries))], _batches(4), localize="auto")
    assert report.passed and copies == []  # exact copy: below 1e-5, no float64 run
    nudged = copy.deepcopy(gm)
    with torch.no_grad():
        nudged.fc.bias.add_(3e-5 * nudged.fc.bias.abs().max())
    report = verify(ref, [make_candidate(nudged, record=Record(boundaries))], _batches(4), localize="never")
    assert copies == [1] and report.candidates[0].outputs["output"].metrics.ref_noise is not None


def test_memory_is_flat_in_the_number_of_batches():
    ref, gm, boundaries = tiny_pair()
    cands = [make_candidate(gm, record=Record(boundaries))]
    verify(ref, cands, _batches(2, rows=8), quant=False)  # first-run costs would hide growth
    peaks = {}
    for n in (3 * verify_core.CHUNK_BATCHES, 24 * verify_core.CHUNK_BATCHES):
        tracemalloc.start()
        verify(ref, cands, _batches(n, rows=8), quant=False)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    small, large = peaks.values()
    # garbage left per batch (a reference cycle) grows with the batches until the collector runs
    assert large < 1.1 * small, peaks


def test_progress_counts_every_batch_run():
    ref, gm, boundaries = tiny_pair()
    cands = [make_candidate(gm, record=Record(boundaries))] * 2
    ticks = []
    verify(ref, cands, list(_batches(verify_core.CHUNK_BATCHES + 3)), tick=lambda *t: ticks.append(t))
    done = [d for _, d, _ in ticks]
    assert done == sorted(done) and ticks[-1][1:] == (3 * (verify_core.CHUNK_BATCHES + 3),) * 2
    ticks.clear()
    verify(ref, cands, _batches(2), tick=lambda *t: ticks.append(t))
    assert ticks[-1][1:] == (6, 0)  # a generator's length is not known


def test_golden_results_are_checked_by_the_loop_of_a_live_reference(tmp_path):
    ref, gm, boundaries = tiny_pair()
    batches = list(_batches(3))
    save_golden(ref, batches, tmp_path / "g")
    bad = _broken(gm)
    record = Record(boundaries)
    live = verify(ref, [make_candidate(bad, name="bad", record=record)], batches, quant=False)
    saved = verify_golden(tmp_path / "g", [make_candidate(bad, name="bad", record=record)])
    [a], [b] = live.candidates, saved.candidates
    # the golden noise floor was measured over every batch, the live one on the worst batch
    assert replace(a.outputs["output"].metrics, ref_noise=None) == replace(
        b.outputs["output"].metrics, ref_noise=None
    )
    assert not b.passed and b.divergence.first_diverging == a.divergence.first_diverging == "layer1.1"
    assert record.boundaries.kind is BoundaryKind.GRAPH_NODE
    assert saved.inputs["source"].startswith("golden results")


def _nudged(gm):
    nudged = copy.deepcopy(gm)
    with torch.no_grad():
        nudged.fc.bias.add_(3e-5 * nudged.fc.bias.abs().max())
    return nudged


def test_a_reference_computed_up_front_gives_the_live_reports_and_loads_only_when_needed():
    ref, gm, boundaries = tiny_pair()
    record = Record(boundaries)
    batches = list(_batches(4))
    loads = []

    def load():
        loads.append(1)
        return copy.deepcopy(ref)

    def computed():
        return compute_reference(copy.deepcopy(ref), batches, load, name="reference")

    exact = verify(computed(), [make_candidate(gm, record=record)], batches, quant=False)
    assert exact.passed and loads == []  # nothing needed the module again
    cands = [
        make_candidate(gm, name="good", record=record),
        make_candidate(_nudged(gm), name="nudged", record=record),
        make_candidate(_broken(gm), name="bad", record=record),
    ]
    live = verify(ref, cands, batches, quant=False)
    up_front = verify(computed(), cands, batches, quant=False)
    assert loads == [1]  # once, for the noise floor and the blocks of both
    for a, b in zip(live.candidates, up_front.candidates):
        assert a.passed == b.passed and a.outputs["output"].metrics == b.outputs["output"].metrics
        assert (a.divergence is None) == (b.divergence is None)
        if a.divergence is not None:
            assert a.divergence.first_diverging == b.divergence.first_diverging
    good, nudged, bad = up_front.candidates
    assert good.passed and nudged.outputs["output"].metrics.ref_noise is not None
    assert not bad.passed and bad.divergence.first_diverging == "layer1.1"


def test_a_reference_loaded_again_must_reproduce_its_outputs():
    ref, gm, boundaries = tiny_pair()
    batches = list(_batches(2))
    changed = copy.deepcopy(ref)
    with torch.no_grad():
        changed.fc.weight.mul_(1.01)
    reference = compute_reference(ref, batches, lambda: changed, name="ckpt.pth")
    bad = make_candidate(_broken(gm), name="bad", record=Record(boundaries))
    with pytest.raises(ReparamError, match="ckpt.pth loaded again does not reproduce its outputs"):
        verify(reference, [bad], batches, quant=False)
