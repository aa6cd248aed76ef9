"""Replace every foldable chain of an ONNX graph by one Conv / Gemm / ConvTranspose node."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reparam.engine.base import LeftAlone
from reparam.engine.record import FusionEntry
from reparam.onnx_reparam.chains import PASS_NAME, Chain, Walker
from reparam.onnx_reparam.graph import GraphView, _onnx, describe_node


@dataclass
class RewriteResult:
    """What :func:`rewrite_graph` did to the model it was given (in place)."""

    fusions: list[FusionEntry] = field(default_factory=list)
    left_alone: list[LeftAlone] = field(default_factory=list)


def rewrite_graph(model: Any) -> RewriteResult:
    """Fold BatchNorms and merge summed branches of ``model``'s top-level graph, in place."""
    view = GraphView(model)
    walker = Walker(view)
    names = _NameMaker(model)
    result = RewriteResult()
    # Outputs first: a chain absorbs the nodes before it; what it cannot absorb is visited later.
    for tensor in [n.output[0] for n in reversed(model.graph.node) if n.output and n.output[0]]:
        node = view.producer.get(tensor)
        if node is None:  # absorbed by a chain already rewritten
            continue
        chain = _chain_without_negative_pads(walker, tensor)
        if chain.worth_rewriting and len(node.output) == 1:
            fused = _emit(chain, node.output[0], view, names)
            _replace(model, chain.nodes, fused)
            view.refresh()
            result.fusions.append(_entry(chain, fused))
    _drop_dead(model)
    result.left_alone = [x for x in walker.left_alone if _still_relevant(x, result.fusions)]
    view.refresh()
    result.left_alone += _unexplained_batchnorms(view, result.left_alone)
    return result


def _unexplained_batchnorms(view: GraphView, noted: list[LeftAlone]) -> list[LeftAlone]:
    """A reason for every BatchNormalization still in the graph that has none yet (as the engine does)."""
    where = {x.where for x in noted}
    out = []
    for node in view.graph.node:
        if node.op_type != "BatchNormalization" or describe_node(node) in where:
            continue
        before = view.producer.get(node.input[0])
        after = view.consumers.get(node.output[0], [])
        source = f"{before.op_type} {describe_node(before)}" if before else "a graph input"
        if before is not None and not view.private(node.input[0]):
            source += " (its output is also read elsewhere)"
        readers = ", ".join(sorted({n.op_type for n in after})) or "a graph output"
        reason = (
            f"BatchNorm stays: its input comes from {source}, which it cannot be folded into, "
            f"and its output goes to {readers}, not to one unpadded Conv or Gemm"
        )
        out.append(LeftAlone(PASS_NAME, describe_node(node), reason))
    return out


def _chain_without_negative_pads(walker: Walker, tensor: str) -> Chain:
    """The chain ending at ``tensor``; walked again without crops when it would need one itself."""
    chain = walker.chain(tensor)
    if min((*chain.term.begins, *chain.term.ends), default=0) >= 0:
        return chain
    walker.crops = False
    try:
        return walker.chain(tensor)
    finally:
        walker.crops = True


def _still_relevant(entry: LeftAlone, fusions: list[FusionEntry]) -> bool:
    """A reason stays in the report unless its node was fused by a later, longer chain after all."""
    return not any(entry.where in f.sources for f in fusions)


class _NameMaker:
    """Fresh node and initializer names that collide with nothing in the model."""

    def __init__(self, model: Any):
        g = model.graph
        self.taken = {n.name for n in g.node} | {i.name for i in g.initializer}
        self.taken |= {t for n in g.node for t in [*n.input, *n.output]}
        self.taken |= {i.name for i in g.input}

    def __call__(self, base: str) -> str:
        name, i = base, 1
        while name in self.taken:
            name, i = f"{base}_{i}", i + 1
        self.taken.add(name)
        return name


def _dtype_of(view: GraphView, chain: Chain, output: str) -> np.dtype:
    onnx = _onnx()
    elem = view.elem_type(output)
    if elem is None:
        for node in chain.nodes:
            if node.op_type in ("Conv", "Gemm", "ConvTranspose", "MatMul") and len(node.input) > 1:
                elem = view.elem_type(node.input[1])
                break
    return onnx.helper.tensor_dtype_to_np_dtype(elem) if elem else np.dtype(np.float32)


def _emit(chain: Chain, output: str, view: GraphView, names: _NameMaker) -> tuple[Any, list[Any]]:
    """The fused node (writing ``output``) and its two new initializers."""
    onnx = _onnx()
    term, dtype = chain.term, _dtype_of(view, chain, output)
    base = names(f"{chain.nodes[-1].name or output}_reparam")
    w_name, b_name = names(f"{base}.weight"), names(f"{base}.bias")
    weight = onnx.numpy_helper.from_array(term.kernel.numpy().astype(dtype), w_name)
    bias = onnx.numpy_helper.from_array(term.bias.numpy().astype(dtype), b_name)
    inputs = [chain.source, w_name, b_name]
    if term.kind == "gemm":
        node = onnx.helper.make_node("Gemm", inputs, [output], name=base, transB=1)
    elif term.kind == "convT":
        node = onnx.helper.make_node("ConvTranspose", inputs, [output], name=base)
        node.attribute.extend(a for a in term.node.attribute)
    else:
        node = onnx.helper.make_node(
            "Conv",
            inputs,
            [output],
            name=base,
            kernel_shape=list(term.kernel.shape[2:]),
            strides=list(term.strides),
            dilations=list(term.dilations),
            pads=[*term.begins, *term.ends],
            group=term.groups,
        )
    return node, [weight, bias]


def _replace(model: Any, old: list[Any], fused: tuple[Any, list[Any]]) -> None:
    """Put the fused node where the last absorbed node was and drop the absorbed ones."""
    node, inits = fused
    graph = model.graph
    gone = {n.output[0] for n in old}
    kept = []
    for n in graph.node:
        key = n.output[0] if n.output else None
        if key == old[-1].output[0]:
            kept.append(node)
        elif key not in gone:
            kept.append(n)
    copies = [type(node)() for _ in kept]
    for copy, n in zip(copies, kept):
        copy.CopyFrom(n)
    del graph.node[:]
    graph.node.extend(copies)
    graph.initializer.extend(inits)


def _drop_dead(model: Any) -> None:
    """Remove nodes whose outputs nobody reads, unused initializers and stale value_info."""
    from reparam.onnx_reparam.graph import subgraph_names

    graph = model.graph
    while True:
        used = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
        used |= subgraph_names(graph)
        dead = [i for i, n in enumerate(graph.node) if not any(o in used for o in n.output if o)]
        if not dead:
            break
        for i in reversed(dead):
            del graph.node[i]
    unused = [i for i, init in enumerate(graph.initializer) if init.name not in used]
    for i in reversed(unused):
        del graph.initializer[i]
    produced = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    stale = [i for i, vi in enumerate(graph.value_info) if vi.name not in produced]
    for i in reversed(stale):
        del graph.value_info[i]


def _entry(chain: Chain, fused: tuple[Any, list[Any]]) -> FusionEntry:
    node = fused[0]
    ops = Counter(n.op_type for n in chain.nodes)
    listed = ", ".join(f"{op}: {n}" for op, n in sorted(ops.items()))
    detail = f"{len(chain.nodes)} nodes ({listed}) -> {node.op_type} {chain.term.describe()}"
    return FusionEntry(PASS_NAME, node.name, [describe_node(n) for n in chain.nodes], detail)
