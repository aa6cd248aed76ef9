"""tensor_leaves: pytree order, and no garbage left per call for the common outputs."""

from __future__ import annotations

import gc

import torch
from torch.utils._pytree import tree_flatten

from reparam.tensors import tensor_leaves


def _pytree_leaves(value):
    return [t for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)]


def test_leaves_are_those_of_the_pytree_in_its_order():
    a, b, c = torch.zeros(1), torch.ones(2), torch.full((3,), 2.0)
    for value in (a, (a, b), [c, a, b], {"y": b, "x": a}, (a, [b, {"k": c}]), (a, 3, None, b), ()):
        got, want = tensor_leaves(value), _pytree_leaves(value)
        assert len(got) == len(want) and all(g is w for g, w in zip(got, want)), value


def test_a_tensor_or_a_tuple_of_tensors_leaves_no_reference_cycle():
    a, b = torch.zeros(1), torch.ones(2)
    gc.collect()
    gc.disable()
    try:
        calls = 50
        for _ in range(calls):
            tensor_leaves(a)
            tensor_leaves((a, b))
            tensor_leaves([a, b])
        # a cycle per call would leave several objects per call; a stray object of another
        # thread's does not fail the test
        assert gc.collect() < calls
    finally:
        gc.enable()
