"""Run a model once and read its block outputs: module hooks, fx graph nodes, or ONNX tensors.

A block's value is the tuple of every tensor it outputs (a block with several outputs is compared
output by output), as numpy arrays (float64 kept, other dtypes as float32). A module called several
times keeps its first call's value; the call counts say which blocks are safe to pair.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from reparam.equivalence.boundaries import Boundaries, BoundaryKind
from reparam.errors import require
from reparam.onnxruntime_options import optimization_level
from reparam.tensors import tensor_leaves, to_numpy

BlockValue = tuple[np.ndarray, ...]
Batch = Mapping[str, np.ndarray]


@dataclass
class BlockRun:
    """One run of a model: its output, each hooked block's value, call counts, and completion order."""

    output: Any = None
    values: dict[str, BlockValue] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)


def _block_value(value: Any) -> BlockValue:
    return tuple(to_numpy(t) for t in tensor_leaves(value))


@torch.no_grad()
def run_with_block_hooks(
    model: nn.Module, paths: Sequence[str], run: Callable[[], Any], *, keep_values: bool = True
) -> BlockRun:
    """Call ``run()`` with forward hooks on the modules at ``paths`` of ``model``.

    ``order`` lists the blocks in the order their forward finished (execution order). With
    ``keep_values=False`` only calls and order are recorded.
    """
    modules = dict(model.named_modules()) if paths else {}
    result = BlockRun()
    handles = []

    def hook_for(path: str):
        def hook(_module, _inputs, out):
            result.calls[path] = result.calls.get(path, 0) + 1
            if result.calls[path] == 1:
                result.order.append(path)
                if keep_values:
                    result.values[path] = _block_value(out)

        return hook

    try:
        for p in paths:
            if p in modules:
                handles.append(modules[p].register_forward_hook(hook_for(p)))
        result.output = run()
    finally:
        for h in handles:
            h.remove()
    return result


class _NodeRecorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, wanted: set[str]):
        super().__init__(gm)
        self.wanted = wanted
        self.values: dict[str, BlockValue] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if n.name in self.wanted:
            self.values[n.name] = _block_value(out)
        return out


@torch.no_grad()
def graph_node_values(gm: fx.GraphModule, names: set[str], args: Sequence[Any]) -> dict[str, BlockValue]:
    """Values of the named fx nodes for one run of ``gm`` on ``args``."""
    recorder = _NodeRecorder(gm, names)
    recorder.run(*args)
    return recorder.values


def onnx_tensor_values(
    path: str | os.PathLike, feeds: Batch, names: set[str], optimization: str = "all"
) -> dict:
    """Values of the named tensors of an ONNX file, read as extra graph outputs of an in-memory copy.

    Names the graph does not produce are skipped; ``{}`` when ``feeds`` lacks an input.
    """
    onnx = require("onnx", "onnx", "Reading block outputs of an ONNX model")
    ort = require("onnxruntime", "onnx", "Reading block outputs of an ONNX model")
    model = onnx.load(str(path))  # external weights load relative to the file
    produced = {o for node in model.graph.node for o in node.output}
    existing = {o.name for o in model.graph.output}
    wanted = sorted(names & produced)
    for tensor in sorted(set(wanted) - existing):
        model.graph.output.append(onnx.ValueInfoProto(name=tensor))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = optimization_level(ort, optimization)
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    inputs = {i.name: np.asarray(feeds[i.name]) for i in sess.get_inputs() if i.name in feeds}
    if len(inputs) != len(sess.get_inputs()) or not wanted:
        return {}
    return dict(zip(wanted, sess.run(wanted, inputs)))


def torch_args(batch: Batch, input_names: Sequence[str] | None = None) -> list[torch.Tensor]:
    """The batch's arrays as tensors in ``input_names`` order (the batch's own order if None)."""
    names = list(input_names) if input_names else list(batch)
    return [torch.from_numpy(np.ascontiguousarray(batch[n])) for n in names]


def block_outputs(target: nn.Module, boundaries: Boundaries, args: Sequence[Any]) -> dict[str, BlockValue]:
    """``{block path: value}`` of a deploy model or loaded ``.pt2`` module for one run on ``args``.

    ``boundaries`` (module or graph-node kind) says where each block's value lives in ``target``;
    blocks whose target cannot be found are left out.
    """
    if boundaries.kind is BoundaryKind.MODULE:
        run = run_with_block_hooks(target, list(boundaries.values()), lambda: target(*args))
        return {p: run.values[m] for p, m in boundaries.items() if m in run.values}
    if boundaries.kind is not BoundaryKind.GRAPH_NODE or not isinstance(target, fx.GraphModule):
        return {}
    resolved = boundaries.in_graph(target)
    values = graph_node_values(target, set(resolved.values()), args)
    return {p: values[n] for p, n in resolved.items() if n in values}


def onnx_block_outputs(
    path: str | os.PathLike, batch: Batch, boundaries: Boundaries | None = None
) -> dict[str, BlockValue]:
    """``{block path: value}`` of an ONNX file for one batch; boundaries default to the file's metadata."""
    if boundaries is None:
        onnx = require("onnx", "onnx", "Reading block outputs of an ONNX model")
        boundaries = Boundaries.read_onnx(onnx.load(str(path), load_external_data=False))
    values = onnx_tensor_values(path, batch, set(boundaries.values()))
    return {p: (np.asarray(values[t], dtype=np.float32),) for p, t in boundaries.items() if t in values}
