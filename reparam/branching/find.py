"""Find, by dataflow in the torch.fx graph, the convs (and the BatchNorms they feed) to expand."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from torch import fx, nn

from reparam.engine.graph import BN, CONV, module_of


@dataclass(frozen=True)
class Site:
    """A conv to expand (module path) and the BatchNorm that consumes its output alone (or None)."""

    conv: str
    bn: str | None


@dataclass(frozen=True)
class Skipped:
    """A conv left as it is, and why."""

    where: str
    reason: str


def _full(prefix: str, target: str) -> str:
    return f"{prefix}.{target}" if prefix else target


def traced_parts(
    module: nn.Module, prefix: str = ""
) -> tuple[list[tuple[str, fx.GraphModule]], list[Skipped]]:
    """fx graphs covering ``module``: the whole model, or its largest traceable submodules."""
    try:
        return [(prefix, fx.symbolic_trace(module))], []
    except Exception as exc:  # untraceable: look inside, like the engine does
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    parts: list[tuple[str, fx.GraphModule]] = []
    skipped: list[Skipped] = []
    for name, child in module.named_children():
        path = _full(prefix, name)
        if isinstance(child, CONV):
            skipped.append(
                Skipped(path, f"its parent {prefix or '(the model)'} cannot be traced by torch.fx ({why})")
            )
        elif list(child.children()):
            sub_parts, sub_skipped = traced_parts(child, path)
            parts += sub_parts
            skipped += sub_skipped
    return parts, skipped


def _bn_consumer(gm: fx.GraphModule, node: fx.Node, calls: Counter) -> tuple[fx.Node | None, str | None]:
    """The BatchNorm node that alone consumes ``node``'s output, or why there is none usable."""
    users = list(node.users)
    bn_users = [u for u in users if isinstance(module_of(gm, u), BN)]
    if not bn_users:
        return None, None
    bn_node = bn_users[0]
    bn = module_of(gm, bn_node)
    if len(users) > 1:
        others = ", ".join(sorted(u.name for u in users if u is not bn_node))
        return (
            None,
            f"its output feeds {bn_node.target} and also {others}, so the BatchNorm cannot be folded into it",
        )
    if bn_node.args != (node,) or bn_node.kwargs:
        return None, f"BatchNorm {bn_node.target} is called with extra arguments"
    if calls[bn_node.target] > 1:
        return None, f"BatchNorm {bn_node.target} is called {calls[bn_node.target]} times (shared module)"
    if not bn.track_running_stats or bn.running_mean is None:
        return None, f"BatchNorm {bn_node.target} has no running statistics (track_running_stats=False)"
    if bn.num_features != module_of(gm, node).out_channels:
        return (
            None,
            f"BatchNorm {bn_node.target} has {bn.num_features} features, not the conv's output channels",
        )
    return bn_node, None


def find_sites(gm: fx.GraphModule, prefix: str = "") -> tuple[list[Site], list[Skipped]]:
    """Every conv whose output goes to one BatchNorm only (or that has a bias and no BatchNorm)."""
    calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    sites, skipped = [], []
    for node in gm.graph.nodes:
        conv = module_of(gm, node)
        if not isinstance(conv, CONV):
            continue
        path = _full(prefix, str(node.target))
        if calls[node.target] > 1:
            skipped.append(Skipped(path, f"called {calls[node.target]} times (shared weights)"))
            continue
        if len(node.args) != 1 or node.kwargs:
            skipped.append(Skipped(path, "called with extra arguments"))
            continue
        bn_node, problem = _bn_consumer(gm, node, calls)
        if problem:
            skipped.append(Skipped(path, problem))
        elif bn_node is not None:
            sites.append(Site(path, _full(prefix, str(bn_node.target))))
        elif conv.bias is not None:
            sites.append(Site(path, None))
        else:
            skipped.append(
                Skipped(path, "no BatchNorm follows it and it has no bias: the fused conv would need a bias")
            )
    return sites, skipped
