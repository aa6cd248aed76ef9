"""A candidate the verifier owns gives its memory back without a cyclic collection where it can."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch import nn

from reparam.artifact import save_artifact
from reparam.verify.core import make_candidate


@pytest.fixture
def no_collection():
    gc.collect()
    gc.disable()  # only the release may free what it lets go
    try:
        yield
    finally:
        gc.enable()


def test_a_released_pt2_frees_its_weights_at_once(tmp_path, no_collection):
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    save_artifact(model, (torch.randn(2, 3, 8, 8),), tmp_path / "m.pt2")
    cand = make_candidate(tmp_path / "m.pt2")
    weights = [weakref.ref(t) for t in cand.module.parameters()]
    assert len(weights) == 4
    still_held = cand.release()
    assert not still_held() and all(w() is None for w in weights)  # the loaded program is in a cycle
    cand.open()  # a file opens again after a release
    assert len(list(cand.module.parameters())) == 4


def test_a_disposable_module_whose_weights_another_holds_asks_for_a_collection(no_collection):
    model = nn.Conv2d(3, 4, 3)
    cand = make_candidate(model, name="in memory")
    cand.disposable = True
    weight = model.weight
    del model
    still_held = cand.release()
    assert still_held()
    del weight
    assert not still_held()


def test_a_module_the_caller_keeps_is_left_whole():
    model = nn.Conv2d(3, 4, 3)
    still_held = make_candidate(model).release()
    assert not still_held() and model.weight.shape == (4, 3, 3, 3)
