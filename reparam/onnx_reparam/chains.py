"""Walk back from a tensor through linear nodes to the tensor they all read: one exact term.

The walk absorbs a node only when its output is read by nothing else (no other node, no graph
output, no subgraph), so rewriting the chain never changes a tensor somebody else sees.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from reparam.engine.base import LeftAlone
from reparam.onnx_reparam import steps, terms
from reparam.onnx_reparam.graph import GraphView, describe_node
from reparam.onnx_reparam.terms import Term

PASS_NAME = "onnx"
HINTED = {*steps.AFFINE_OPS, "BatchNormalization", "AveragePool"}  # they need rank or channels


@dataclass
class Chain:
    """``term(source)`` computes the walked tensor; ``nodes`` are the nodes it replaces."""

    source: str
    term: Term
    nodes: list[Any] = field(default_factory=list)
    merges: int = 0

    @property
    def worth_rewriting(self) -> bool:
        """Two or more nodes, at least one a convolution-like op or a branch sum, and a real kernel."""
        anchored = any(n.op_type in steps.ANCHORS for n in self.nodes) or self.merges > 0
        return len(self.nodes) >= 2 and anchored and not self.term.is_identity


class Walker:
    """Builds chains over one :class:`GraphView` and collects what it had to leave alone."""

    def __init__(self, view: GraphView):
        self.view = view
        self.left_alone: list[LeftAlone] = []
        self.crops = True  # walk through Slice crops (a fused conv then needs no crop of its own)
        self.branch_depth = 0  # inside a branch of a sum: costlier sequential merges are judged there

    def note(self, node: Any, reason: str) -> None:
        entry = LeftAlone(PASS_NAME, describe_node(node), reason)
        if entry not in self.left_alone:
            self.left_alone.append(entry)

    def chain(self, tensor: str, root: bool = True) -> Chain:
        """The longest exact chain ending at ``tensor``."""
        view = self.view
        node = view.producer.get(tensor)
        if node is None or not node.input or (not root and not view.private(tensor)):
            return Chain(tensor, terms.identity())
        if node.op_type in ("Add", "Sum", "Sub") and not node.domain and len(self._data_inputs(node)) > 1:
            return self._branch_sum(node, tensor)
        if node.op_type == "Pad" and not node.domain:
            return self._pad(node, tensor)
        if node.op_type == "Slice" and not node.domain:
            return self._crop(node, tensor) if self.crops else Chain(tensor, terms.identity())
        affine = node.op_type in steps.AFFINE_OPS and not node.domain
        if affine and len(self._data_inputs(node)) != 1:
            return Chain(tensor, terms.identity())
        data = node.input[self._data_inputs(node)[0]] if affine else node.input[0]
        # the chain before tells rank and channels where shape inference does not
        inner = self.chain(data, root=False) if node.op_type in HINTED else None
        if inner is not None and inner.term.kernel is not None:
            view.hint(
                data, inner.term.kernel.dim() if inner.term.kind == "conv" else 2, inner.term.out_channels
            )
        step = steps.node_term(view, node)
        if step is None:
            return Chain(tensor, terms.identity())
        if isinstance(step, str):
            # a conv's own problem matters only when a BatchNorm or branch after it wanted it
            if node.op_type == "BatchNormalization" or (node.op_type in steps.ANCHORS and not root):
                self.note(node, step)
            return Chain(tensor, terms.identity())
        return self._extend(inner or self.chain(data, root=False), node, step, data)

    def _extend(self, inner: Chain, node: Any, step: Term, data: str) -> Chain:
        combined = terms.then(inner.term, step, costlier_ok=self.branch_depth > 0)
        if isinstance(combined, str):
            if inner.nodes:
                self.note(node, f"not fused with {describe_node(inner.nodes[-1])}: {combined}")
            return Chain(data, step, [node])  # start over at this node's input
        return Chain(inner.source, combined, [*inner.nodes, node], inner.merges)

    def _data_inputs(self, node: Any) -> list[int]:
        return [i for i, name in enumerate(node.input) if name and not self.view.is_constant(name)]

    def _pad(self, node: Any, tensor: str) -> Chain:
        step = steps.pad_step(self.view, node)
        if isinstance(step, str):
            return Chain(tensor, terms.identity())
        inner = self.chain(node.input[0], root=False)
        padded = terms.pad_after(inner.term, *step)
        if isinstance(padded, str):
            if step[2] != 0.0:
                return Chain(tensor, terms.identity())
            return Chain(node.input[0], terms.identity(step[0], step[1]), [node])
        return Chain(inner.source, padded, [*inner.nodes, node], inner.merges)

    def _crop(self, node: Any, tensor: str) -> Chain:
        step = steps.slice_step(self.view, node)
        if isinstance(step, str):
            return Chain(tensor, terms.identity())
        inner = self.chain(node.input[0], root=False)
        cropped = terms.crop_after(inner.term, *step)
        if isinstance(cropped, str):
            return Chain(node.input[0], terms.identity(*step), [node])
        return Chain(inner.source, cropped, [*inner.nodes, node], inner.merges)

    def _branch_sum(self, node: Any, tensor: str) -> Chain:
        data = self._data_inputs(node)
        self.branch_depth += 1
        try:
            chains = [self.chain(node.input[i], root=False) for i in data]
        finally:
            self.branch_depth -= 1
        sources = [c.source for c in chains]
        if len(set(sources)) > 1:
            missed = self._near_misses(chains)
            if missed:
                self.note(node, self._why_apart(missed))
            return Chain(tensor, terms.identity())
        if node.op_type == "Sub":
            negated = self._negated(chains, node.input[1])
            if isinstance(negated, str):
                self.note(node, f"branches not merged: {negated}")
                return Chain(tensor, terms.identity())
            chains[1] = Chain(chains[1].source, negated, chains[1].nodes, chains[1].merges)
        merged = terms.merge([c.term for c in chains])
        shift = self._constant_shift(node, data, sources[0])
        if isinstance(merged, Term) and shift is not None:
            merged = shift if isinstance(shift, str) else terms.then(merged, shift)
        nodes = [n for c in chains for n in c.nodes]
        if isinstance(merged, Term) and self.branch_depth == 0:
            before = sum(steps.node_cost(self.view, n) for n in nodes)
            if terms.cost(merged) > before:
                merged = (
                    f"the merged convolution would cost {terms.cost(merged)} instead of {before} per pixel"
                )
        if isinstance(merged, str):
            self.note(node, f"branches not merged: {merged}")
            return Chain(tensor, terms.identity())
        return Chain(sources[0], merged, [*nodes, node], sum(c.merges for c in chains) + 1)

    def _negated(self, chains: list[Chain], tensor: str) -> Term | str:
        """The second branch of a Sub, times -1."""
        known = [c.term for c in chains if c.term.kernel is not None]
        channels = known[0].out_channels if known else self.view.channels(tensor)
        rank = (known[0].kernel.dim() if known[0].kind == "conv" else 2) if known else self.view.rank(tensor)
        if channels is None or rank is None:
            return "the channel count of a subtracted branch is unknown"
        minus = torch.full((channels,), -1.0, dtype=torch.float64)
        return terms.then(chains[1].term, terms.affine(minus, torch.zeros_like(minus), rank - 2))

    def _constant_shift(self, node: Any, data: list[int], source: str) -> Term | str | None:
        """The constant inputs of a Sum/Add as one per-channel shift (None when there are none)."""
        consts = [self.view.constant(n) for i, n in enumerate(node.input) if n and i not in data]
        if not consts:
            return None
        total = None
        for c in consts:
            value = steps.channel_values(self.view, np.asarray(c), node.input[data[0]], node.op_type)
            if isinstance(value, str):
                return value
            total = value if total is None else total + value
        rank = self.view.rank(node.input[data[0]])
        return terms.affine(torch.ones_like(total), total, rank - 2)

    def _near_misses(self, chains: list[Chain]) -> list[str]:
        """Sources of bare branches a few nodes downstream of a weighted branch's source.

        Like the PyTorch engine, only such near misses are reported (a ReLU in a branch, a branch
        output read elsewhere), not every residual sum of two different tensors.
        """
        weighted = {c.source for c in chains if any(n.op_type in steps.ANCHORS for n in c.nodes)}
        missed = []
        for c in chains:
            if not c.nodes and c.source not in weighted and self._reaches(c.source, weighted):
                missed.append(c.source)
        return missed

    def _reaches(self, tensor: str, targets: set[str], budget: int = 2) -> bool:
        """Whether a target lies upstream of ``tensor`` within ``budget`` nodes.

        A BatchNorm or a constant scale/shift costs nothing (the engine folds them first); every
        other node, a branch sum included, costs one, so the walk stays within a few nodes.
        """
        seen: set[tuple[str, int]] = set()
        stack = [(tensor, budget)]
        while stack:
            name, left = stack.pop()
            node = self.view.producer.get(name)
            if node is None or (name, left) in seen:
                continue
            seen.add((name, left))
            inputs = [i for i in node.input if i and not self.view.is_constant(i)]
            free = node.op_type == "BatchNormalization" or (
                node.op_type in steps.AFFINE_OPS and len(inputs) == 1
            )
            cost = 0 if free else 1
            if cost > left:
                continue
            if any(i in targets for i in inputs):
                return True
            stack.extend((i, left - cost) for i in inputs)
        return False

    def _why_apart(self, sources: list[str]) -> str:
        """Why branches summed by one node do not read the same tensor (for the report)."""
        view = self.view
        details = []
        for s in dict.fromkeys(sources):
            producer = view.producer.get(s)
            if producer is None:
                details.append(f"'{s}' is a graph input or constant")
            elif not view.private(s):
                details.append(
                    f"'{s}' (from {producer.op_type} {describe_node(producer)}) is also read elsewhere"
                )
            else:
                details.append(
                    f"'{s}' comes from {producer.op_type} {describe_node(producer)}, which is not linear"
                )
        return "the branches read different tensors: " + "; ".join(details)
