"""Structural views of a model's fx graph: conv/linear layout and an operator signature."""

from __future__ import annotations

import hashlib
from collections import Counter

from torch import fx, nn

from reparam.engine.graph import BN, CONV, CONV_T, module_of
from reparam.errors import ReparamError

LAYERS = CONV + CONV_T + (nn.Linear,)


def trace(model: nn.Module) -> fx.GraphModule:
    """``model`` itself when it is already a GraphModule, else its torch.fx trace (ReparamError if untraceable)."""
    if isinstance(model, fx.GraphModule):
        return model
    try:
        return fx.symbolic_trace(model)
    except Exception as exc:
        raise ReparamError(
            f"torch.fx cannot trace {type(model).__name__}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}",
            hint="the model's forward must be traceable by torch.fx (no data-dependent control flow)",
        ) from exc


def layer_geometry(module: nn.Module) -> tuple:
    """Everything that fixes a conv/linear layer's computation except its values (bias presence excluded)."""
    if isinstance(module, nn.Linear):
        return ("Linear", module.in_features, module.out_features)
    return (
        type(module).__name__,
        module.in_channels,
        module.out_channels,
        tuple(module.kernel_size),
        tuple(module.stride),
        module.padding if isinstance(module.padding, str) else tuple(module.padding),
        tuple(module.dilation),
        module.groups,
        module.padding_mode,
        *((tuple(module.output_padding),) if isinstance(module, CONV_T) else ()),
    )


def ordered_nodes(gm: fx.GraphModule, wanted) -> list[fx.Node]:
    """Nodes for which ``wanted(node)`` holds, in dataflow order.

    The order is (depth, graph position), the depth being the largest number of wanted nodes on a
    path from the inputs: it does not depend on where a rewrite inserted a node among independent
    branches (the engine puts a fused conv just before the sum it feeds, after the shortcut).
    """
    depth: dict[fx.Node, int] = {}
    out = []
    for index, node in enumerate(gm.graph.nodes):
        hit = bool(wanted(node))
        depth[node] = max((depth[a] for a in node.all_input_nodes), default=0) + int(hit)
        if hit:
            out.append((depth[node], index, node))
    return [node for _, _, node in sorted(out, key=lambda t: t[:2])]


def layer_nodes(gm: fx.GraphModule) -> list[tuple[fx.Node, nn.Module]]:
    """``call_module`` nodes of convs, transposed convs and linears, in dataflow order."""
    nodes = ordered_nodes(gm, lambda n: isinstance(module_of(gm, n), LAYERS))
    return [(n, module_of(gm, n)) for n in nodes]


def conv_layout(model: nn.Module) -> list[tuple]:
    """Geometry of every conv/linear call in dataflow order (see :func:`layer_nodes`).

    A model torch.fx cannot trace is listed in module registration order instead.
    """
    try:
        gm = trace(model)
    except ReparamError:
        return [layer_geometry(m) for m in model.modules() if isinstance(m, LAYERS)]
    return [layer_geometry(m) for _, m in layer_nodes(gm)]


def _node_signature(gm: fx.GraphModule, node: fx.Node) -> tuple:
    if node.op == "call_module":
        mod = module_of(gm, node)
        if isinstance(mod, LAYERS):
            return ("call_module", *layer_geometry(mod), mod.bias is not None)
        if isinstance(mod, BN):
            return ("call_module", type(mod).__name__, mod.num_features)
        return ("call_module", type(mod).__name__)
    if node.op == "call_function":
        return ("call_function", getattr(node.target, "__name__", str(node.target)))
    if node.op == "call_method":
        return ("call_method", str(node.target))
    return (node.op,)


def _constants(node: fx.Node) -> str:
    """The node's non-tensor arguments (slices, ints, dims), with tensor inputs as placeholders."""
    return repr(fx.node.map_arg((node.args, node.kwargs), lambda _: "<in>"))


def graph_signature(model: nn.Module) -> list[str]:
    """A digest per graph node of the operator, its attributes and, recursively, its inputs; sorted.

    Two models get the same list exactly when their graphs are the same DAG of the same operators
    with the same layer geometry and constant arguments, whatever the node names or the order in
    which independent nodes were created. Parameter values and module names do not enter.
    """
    gm = trace(model)
    digest: dict[fx.Node, str] = {}
    for node in gm.graph.nodes:
        inputs = ",".join(digest[a] for a in node.all_input_nodes)
        text = f"{_node_signature(gm, node)}|{_constants(node) if node.op != 'placeholder' else ''}|{inputs}"
        digest[node] = hashlib.sha1(text.encode()).hexdigest()[:16]
    return sorted(digest.values())


def op_counts(model: nn.Module) -> Counter:
    """How many times each operator (module type, function, method) occurs in the graph."""
    gm = trace(model)
    return Counter(_node_signature(gm, n)[:2] for n in gm.graph.nodes)
