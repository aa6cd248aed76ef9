"""Fold an eval-mode BatchNorm into the conv / transposed conv / linear layer that feeds it."""

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
    shallow_copy,
    shape_of,
)
from reparam.engine.shapes import propagate_shapes
from reparam.kernel_math import fold_bn, fold_bn_before, fold_bn_transposed

_LAYERS = CONV + CONV_T + (nn.Linear,)


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
            mean, var, gamma, beta = _bn_tensors(bn)
            weight = layer.weight.detach().double()
            bias = None if layer.bias is None else layer.bias.detach().double()
            if isinstance(layer, CONV_T):
                w, b = fold_bn_transposed(weight, bias, mean, var, gamma, beta, bn.eps, groups=layer.groups)
            else:
                w, b = fold_bn(weight, bias, mean, var, gamma, beta, bn.eps)
            try:
                weight_param = ctx.parameter(w, layer.weight, "weight")
                bias_param = ctx.parameter(b, layer.weight, "bias")
            except NotRepresentable as exc:
                ctx.leave(where, f"{where} not folded into {prod.target}: {exc}")
                continue
            new = shallow_copy(layer)
            new.weight, new.bias = weight_param, bias_param
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
        return PassResult(gm, bool(fused), fused)


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
