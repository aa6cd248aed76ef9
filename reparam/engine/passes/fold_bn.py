"""Fold an eval-mode BatchNorm into the conv / transposed conv / linear layer that feeds it.

A BatchNorm1d over the flattened rows of a Linear's output (LeViT's ``LinearNorm``:
``bn(y.flatten(0, 1)).reshape_as(y)``) folds too: reshapes keep every element in its output
feature when the BatchNorm reads ``[rows, features]``, so its feature axis is the Linear's.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from reparam.engine.base import NotRepresentable, PassContext, PassResult, register_pass
from reparam.engine.graph import (
    BN,
    CONV,
    CONV_T,
    ModuleNames,
    block_path,
    choose_name,
    install,
    module_chains,
    module_of,
    shallow_copy,
    shape_of,
)
from reparam.engine.record import FusionEntry
from reparam.engine.rowwise import scaled_rows
from reparam.engine.shapes import propagate_shapes
from reparam.kernel_math import bn_scale_shift, fold_bn_before, fold_bn_transposed

_LAYERS = CONV + CONV_T + (nn.Linear,)
_aten = torch.ops.aten
# operations that keep the row-major order of the elements: only the shape changes
_REORDER_FREE_METHODS = {"flatten", "reshape", "view", "reshape_as", "view_as", "unflatten", "squeeze", "unsqueeze"}  # fmt: skip
_REORDER_FREE_FUNCTIONS = {
    torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.unflatten, _aten.view.default,
    _aten.reshape.default, _aten._unsafe_view.default, _aten.flatten.using_ints, _aten.squeeze.dim,
    _aten.unsqueeze.default, _aten.unflatten.int,
}  # fmt: skip


def _bn_tensors(bn: BN) -> tuple:
    def d(t):
        return None if t is None else t.detach().double()

    return d(bn.running_mean), d(bn.running_var), d(bn.weight), d(bn.bias)


BATCH_STATISTICS = (
    "BatchNorm has track_running_stats=False: it normalises with the statistics of each batch even "
    "in eval mode, so it is not a fixed affine map and stays unfused"
)


@register_pass
class FoldBN:
    """``bn(layer(x))`` → ``layer'(x)`` where ``layer``'s output feeds nothing but the BatchNorm."""

    name = "fold_bn"
    description = "fold BatchNorm into the preceding Conv1d/2d/3d, ConvTranspose1d/2d/3d or Linear"

    @torch.no_grad()
    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        propagate_shapes(gm, ctx.example_inputs)
        fused = []
        gone: set[fx.Node] = set()
        names = ModuleNames(gm)
        for node, bn, prod, layer in module_chains(gm, BN, _LAYERS, gone):
            where = str(node.target)
            ctx.current_block = ctx.full(block_path(node) or where)
            if not bn.track_running_stats or bn.running_mean is None or bn.running_var is None:
                ctx.leave(where, BATCH_STATISTICS)
                continue
            if len(prod.users) != 1:
                others = ", ".join(sorted(u.name for u in prod.users if u is not node))
                ctx.leave(
                    str(prod.target),
                    f"output of {prod.target} also feeds {others}; folding "
                    f"{where} into it would change those",
                )
                continue
            if len(prod.args) != 1 or prod.kwargs:
                ctx.leave(str(prod.target), "layer is called with extra arguments")
                continue
            out_features = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
            if bn.num_features != out_features:
                ctx.leave(
                    where,
                    f"BatchNorm has {bn.num_features} features but {prod.target} produces {out_features}",
                )
                continue
            if isinstance(layer, nn.Linear):
                shape = shape_of(prod)
                if shape is None or len(shape) != 2:
                    ctx.leave(
                        where,
                        "BatchNorm after Linear is folded only on 2-D [batch, features] "
                        f"outputs (output shape here: {shape or 'unknown'})",
                    )
                    continue
            new = _folded_copy(ctx, layer, bn, where, str(prod.target))
            if new is None:
                continue
            calls = names.count(str(prod.target))
            leaving = {node, prod}
            name = choose_name(
                gm, [ctx.parent_of_sources([str(prod.target), where]), str(prod.target)], leaving, names
            )
            detail = (
                f"{type(bn).__name__}(eps={bn.eps:g}, affine={bn.affine}) folded into {type(layer).__name__}"
            )
            if calls > 1:
                detail += f"; {prod.target} is called {calls} times, this call site got its own copy"
            install(gm, name, new, node, prod.args, leaving, names)
            gone |= leaving
            fused.append(ctx.record(name, new, [str(prod.target), where], detail))
        fused += _fold_through_reshapes(gm, ctx, gone, names)
        return PassResult(gm, bool(fused), fused)


def _folded_copy(ctx: PassContext, layer: nn.Module, bn: BN, where: str, target: str) -> nn.Module | None:
    """A copy of ``layer`` with the BatchNorm after it folded in (float64 arithmetic); None, with the
    reason left in ``ctx``, when the folded values do not fit the layer's dtype."""
    mean, var, gamma, beta = _bn_tensors(bn)
    bias = None if layer.bias is None else layer.bias.detach().double()
    try:
        if isinstance(layer, CONV_T):
            weight = layer.weight.detach().double()
            w, b = fold_bn_transposed(weight, bias, mean, var, gamma, beta, bn.eps, groups=layer.groups)
            weight_param = ctx.parameter(w, layer.weight, "weight")
        else:
            # the kernel is scaled row by row in float64 and rounded once, without a float64 copy of it
            scale, shift = bn_scale_shift(mean, var, gamma, beta, bn.eps)
            b = (bias if bias is not None else torch.zeros_like(scale)) * scale + shift
            weight = layer.weight.detach()
            exact = lambda: weight.double() * _rows(scale, weight)  # noqa: E731 (read only for a message)
            weight_param = ctx.parameter(exact, layer.weight, "weight", scaled_rows(weight, scale))
        bias_param = ctx.parameter(b, layer.weight, "bias")
    except NotRepresentable as exc:
        ctx.leave(where, f"{where} not folded into {target}: {exc}")
        return None
    new = shallow_copy(layer)
    new.weight, new.bias = weight_param, bias_param
    return new


def _rows(scale: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``scale`` shaped to multiply the rows of ``like``."""
    return scale.reshape((-1,) + (1,) * (like.dim() - 1))


def _reshaped(node: fx.Node) -> bool:
    """A reshape of ``node.args[0]``: the elements keep their row-major order (a flat view)."""
    if not node.args or not isinstance(node.args[0], fx.Node):
        return False
    if node.op == "call_method":
        return node.target in _REORDER_FREE_METHODS
    return node.op == "call_function" and node.target in _REORDER_FREE_FUNCTIONS


def _shape_reader(user: fx.Node, node: fx.Node) -> bool:
    """``user`` reads only ``node``'s shape (``y.reshape_as(node)``, ``node.shape``, ``node.size()``)."""
    if user.op == "call_method" and user.target in ("reshape_as", "view_as", "expand_as"):
        return len(user.args) == 2 and user.args[1] is node and user.args[0] is not node
    if user.op == "call_method" and user.target == "size":
        return True
    if user.op == "call_function" and user.target is _aten.sym_size.int:
        return True
    return user.op == "call_function" and user.target is getattr and user.args[1:] == ("shape",)


def _linear_behind(gm: fx.GraphModule, bn_node: fx.Node) -> tuple[fx.Node, list[fx.Node]] | None:
    """The Linear call and the reshapes between it and the BatchNorm (``bn(lin(x).flatten(0, 1))``)."""
    chain: list[fx.Node] = []
    node = bn_node.args[0]
    while isinstance(node, fx.Node) and _reshaped(node) and len(node.users) == 1:
        chain.append(node)
        node = node.args[0]
    if not chain or not isinstance(node, fx.Node) or not isinstance(module_of(gm, node), nn.Linear):
        return None
    return node, chain[::-1]


def _reshape_refusal(
    bn_node: fx.Node, bn: BN, lin: fx.Node, chain: list[fx.Node], layer: nn.Linear
) -> str | None:
    """Why the BatchNorm after reshapes of the Linear's output cannot fold into it (None: it can).

    Reshapes keep every element's row-major position, so an element stays in its Linear output
    feature exactly when the tensor the BatchNorm reads is ``[rows, features]`` with the Linear's
    features as the rows' entries: then the BatchNorm's feature axis is the Linear's output axis.
    """
    if not bn.track_running_stats or bn.running_mean is None or bn.running_var is None:
        return BATCH_STATISTICS
    others = [u for u in lin.users if u is not chain[0] and not _shape_reader(u, lin)]
    if others:
        return f"output of {lin.target} also feeds {', '.join(sorted(u.name for u in others))}"
    if len(lin.args) != 1 or lin.kwargs:
        return f"{lin.target} is called with extra arguments"
    shape = shape_of(bn_node.args[0])
    if shape is None:
        return "the shape the BatchNorm reads is unknown"
    if len(shape) != 2 or shape[1] != layer.out_features or bn.num_features != layer.out_features:
        return (
            f"it normalises axis 1 of a {list(shape)} reshape of {lin.target}'s output: that axis is not "
            f"the Linear's {layer.out_features} output features"
        )
    return None


def _fold_through_reshapes(
    gm: fx.GraphModule, ctx: PassContext, gone: set[fx.Node], names: ModuleNames
) -> list[FusionEntry]:
    """``bn(lin(x).flatten(0, 1)).reshape_as(lin(x))`` (LeViT's LinearNorm) → ``lin'(x)``."""
    fused = []
    for node in list(gm.graph.nodes):
        bn = module_of(gm, node)
        if node in gone or not isinstance(bn, BN) or len(node.args) != 1 or node.kwargs:
            continue
        found = _linear_behind(gm, node)
        if found is None or found[0] in gone:
            continue
        lin, chain = found
        layer = module_of(gm, lin)
        where = str(node.target)
        ctx.current_block = ctx.full(block_path(node) or where)
        reason = _reshape_refusal(node, bn, lin, chain, layer)
        if reason:
            ctx.leave(where, f"{where} not folded into {lin.target} through the reshapes between: {reason}")
            continue
        new = _folded_copy(ctx, layer, bn, where, str(lin.target))
        if new is None:
            continue
        sources = [str(lin.target), where]
        name = choose_name(gm, [ctx.parent_of_sources(sources), str(lin.target)], {lin, node}, names)
        install(gm, name, new, lin, lin.args, (), names)
        node.replace_all_uses_with(node.args[0])
        gm.graph.erase_node(node)
        names.remove(where)
        _drop_round_trip(gm, lin, chain)
        gone |= {lin, node}
        detail = (
            f"{type(bn).__name__}(eps={bn.eps:g}) over the flattened rows of {type(layer).__name__}'s output "
            "folded into it (the features stay the last axis)"
        )
        fused.append(ctx.record(name, new, sources, detail))
    return fused


def _drop_round_trip(gm: fx.GraphModule, lin: fx.Node, chain: list[fx.Node]) -> None:
    """``lin.flatten(0, 1).reshape_as(lin)`` is ``lin``: route its users there, drop the reshapes."""
    node = chain[-1]
    path = list(chain)
    while len(node.users) == 1:
        user = next(iter(node.users))
        if not _reshaped(user) or user.args[0] is not node:
            return
        path.append(user)
        if user.op == "call_method" and user.target in ("reshape_as", "view_as") and user.args[1] is lin:
            user.replace_all_uses_with(lin)
            for step in reversed(path):
                gm.graph.erase_node(step)
            return
        node = user


def _unpadded(layer: nn.Module) -> bool:
    if isinstance(layer, nn.Linear):
        return True
    if isinstance(layer.padding, str):
        return layer.padding == "valid" or all(k == 1 for k in layer.kernel_size)
    return not any(layer.padding)


@register_pass
class FoldBNBefore:
    """``layer(bn(x))`` → ``layer'(x)`` for an unpadded conv or a linear layer (pre-norm 1×1 convs)."""

    name = "fold_bn_before"
    description = "fold a BatchNorm into the unpadded Conv1d/2d/3d or Linear layer that follows it"

    @torch.no_grad()
    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        propagate_shapes(gm, ctx.example_inputs)
        fused = []
        gone: set[fx.Node] = set()
        names = ModuleNames(gm)
        for node, layer, src, bn in module_chains(gm, CONV + (nn.Linear,), BN, gone, inner_single_input=True):
            where = str(src.target)
            ctx.current_block = ctx.full(block_path(node) or where)
            reason = self._refusal(gm, node, src, layer, bn)
            if reason:
                ctx.leave(where, f"{where} not folded into the following {node.target}: {reason}")
                continue
            mean, var, gamma, beta = _bn_tensors(bn)
            groups = 1 if isinstance(layer, nn.Linear) else layer.groups
            bias = None if layer.bias is None else layer.bias.detach().double()
            w, b = fold_bn_before(
                layer.weight.detach().double(), bias, mean, var, gamma, beta, bn.eps, groups
            )
            try:
                weight_param = ctx.parameter(w, layer.weight, "weight")
                bias_param = ctx.parameter(b, layer.weight, "bias")
            except NotRepresentable as exc:
                ctx.leave(where, f"{where} not folded into {node.target}: {exc}")
                continue
            new = shallow_copy(layer)
            new.weight, new.bias = weight_param, bias_param
            leaving = {node, src}
            name = choose_name(
                gm, [ctx.parent_of_sources([where, str(node.target)]), str(node.target)], leaving, names
            )
            install(gm, name, new, node, src.args, leaving, names)
            gone |= leaving
            detail = f"{type(bn).__name__}(eps={bn.eps:g}) before {type(layer).__name__} folded into it"
            fused.append(ctx.record(name, new, [where, str(node.target)], detail))
        return PassResult(gm, bool(fused), fused)

    @staticmethod
    def _refusal(gm: fx.GraphModule, node: fx.Node, src: fx.Node, layer: nn.Module, bn: BN) -> str | None:
        if len(src.users) != 1:
            return "the BatchNorm's output also feeds other nodes"
        if not bn.track_running_stats or bn.running_mean is None or bn.running_var is None:
            return BATCH_STATISTICS
        in_features = layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels
        if bn.num_features != in_features:
            return f"BatchNorm has {bn.num_features} features, the layer reads {in_features}"
        if isinstance(layer, nn.Linear):
            shape = shape_of(src)
            if shape is None or len(shape) != 2:
                return "a Linear layer folds a preceding BatchNorm only on 2-D [batch, features] inputs"
        elif not _unpadded(layer):
            return (
                f"the conv zero-pads (padding {layer.padding}): padded zeros would stand for the "
                "BatchNorm's output at zero, not zero"
            )
        return None
