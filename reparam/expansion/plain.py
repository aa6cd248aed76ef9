"""Hand back plain-architecture weights: fuse a trained model and load the result into the plain class.

Layers are matched by graph structure: the convs / linears of the deploy model and of the plain
model, each in dataflow order, must have the same geometry one for one. A fused layer's bias goes
to the plain layer's bias, or to the BatchNorm that alone consumes the plain layer's output (set to
pass values through and add the bias). Other modules with state (a BatchNorm that is not folded, a
LayerNorm...) are matched the same way, by order and type. Names are never used to match.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, fx, nn

from reparam.branching.structure import LAYERS, layer_geometry, layer_nodes, ordered_nodes, trace
from reparam.checkpoint import record_architecture
from reparam.engine import convert
from reparam.engine.core import ConversionResult
from reparam.engine.graph import BN, module_of
from reparam.engine.inputs import make_inputs
from reparam.errors import MismatchError, ReparamError
from reparam.expansion.core import eval_outputs, judge_against
from reparam.io import atomic_path
from reparam.tensors import eval_mode


@dataclass
class LayerMatch:
    """A plain layer, the deploy layer whose weights it received, and the trained modules behind it."""

    plain: str
    deploy: str
    bias_into: str | None
    sources: list[str] = field(default_factory=list)


@dataclass
class PlainWeights:
    """The plain model with the fused weights loaded (eval mode), its state dict and the matching."""

    model: nn.Module
    state_dict: dict[str, Tensor]
    matches: list[LayerMatch]
    error: float | None = None

    def render(self) -> str:
        """One line per matched layer and the numeric check."""
        lines = [f"plain weights: {len(self.matches)} layers matched by graph structure"]
        for m in self.matches:
            into = f" (bias -> {m.bias_into})" if m.bias_into else ""
            lines.append(f"  {m.plain} <- {m.deploy}{into}")
        if self.error is not None:
            lines.append(f"  plain model vs fused model: scale-relative error {self.error:.3g}")
        return "\n".join(lines)


def _describe(path: str, module: nn.Module | None) -> str:
    if module is None:
        return "(nothing)"
    geo = layer_geometry(module) if isinstance(module, LAYERS) else (type(module).__name__,)
    return f"{path} {geo}"


def _mismatch(
    what: str, i: int, p: tuple[str, nn.Module | None], d: tuple[str, nn.Module | None]
) -> ReparamError:
    return ReparamError(
        f"the plain architecture does not match the fused model at {what} #{i + 1} in dataflow order: "
        f"plain {_describe(*p)} vs fused {_describe(*d)}",
        hint="pass the plain class the model was expanded from (same widths, kernels, strides, "
        "padding and groups), with the same `as_arch_kwargs`",
    )


def _bn_after(gm: fx.GraphModule, node: fx.Node, features: int) -> tuple[str, BN] | None:
    users = list(node.users)
    if len(users) != 1:
        return None
    bn = module_of(gm, users[0])
    calls = sum(1 for n in gm.graph.nodes if n.op == "call_module" and n.target == users[0].target)
    if not isinstance(bn, BN) or users[0].args != (node,) or calls != 1 or bn.num_features != features:
        return None
    return str(users[0].target), bn


def _bn_before(gm: fx.GraphModule, node: fx.Node) -> tuple[str, BN] | None:
    """The BatchNorm whose output only ``node`` (a layer) reads, when ``node`` reads nothing else."""
    src = node.args[0] if len(node.args) == 1 and not node.kwargs else None
    bn = module_of(gm, src) if isinstance(src, fx.Node) else None
    calls = sum(
        1 for n in gm.graph.nodes if n.op == "call_module" and n.target == getattr(src, "target", None)
    )
    if not isinstance(bn, BN) or len(src.users) != 1 or calls != 1:
        return None
    return str(src.target), bn


def _out_features(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


class _Writer:
    """Collects the plain state dict, refusing a second, different value for a key."""

    def __init__(self, plain: nn.Module):
        self.state = {k: v.detach().clone() for k, v in plain.state_dict().items()}
        self.filled: set[str] = set()

    def put(self, key: str, value: Tensor) -> None:
        target = self.state[key]
        value = value.detach().to(target.dtype).reshape(target.shape)
        if key in self.filled and not torch.equal(self.state[key], value):
            raise ReparamError(
                f"plain parameter {key!r} is used at several places in the graph, but the fused model "
                "has different values there",
                hint="the plain architecture shares a layer that the trained model does not share",
            )
        self.state[key] = value
        self.filled.add(key)


def _pass_through_bn(w: _Writer, path: str, bn: BN, bias: Tensor) -> None:
    """Make the BatchNorm at ``path`` add ``bias`` and otherwise pass values through (eval mode)."""
    # running_var + eps == 1, so the normalisation divides by one.
    w.put(f"{path}.running_var", torch.full_like(bias, 1.0 - bn.eps))
    if bn.affine:
        w.put(f"{path}.running_mean", torch.zeros_like(bias))
        w.put(f"{path}.weight", torch.ones_like(bias))
        w.put(f"{path}.bias", bias)
    else:
        w.put(f"{path}.running_mean", -bias)
    if f"{path}.num_batches_tracked" in w.state:
        w.filled.add(f"{path}.num_batches_tracked")


def _write_bn_before(w: _Writer, gd, d_node: fx.Node, pre: tuple[str, BN], consumed: set[str]) -> None:
    """A plain BatchNorm feeding a layer: the fused model's own one there, or a pass-through when it was folded."""
    path, bn = pre
    src = d_node.args[0] if d_node.args else None
    kept = module_of(gd, src) if isinstance(src, fx.Node) else None
    if type(kept) is type(bn) and kept.num_features == bn.num_features:
        for key, value in kept.state_dict().items():
            w.put(f"{path}.{key}", value)
        consumed.add(str(src.target))
    else:  # the engine folded it into the layer that reads it
        _pass_through_bn(w, path, bn, torch.zeros(bn.num_features, dtype=torch.float64))


@torch.no_grad()
def _write_layer(
    w: _Writer, p_path: str, p_mod: nn.Module, d_mod: nn.Module, bn: tuple[str, BN] | None
) -> None:
    weight = d_mod.weight.detach().double()
    bias = d_mod.bias.detach().double() if d_mod.bias is not None else torch.zeros(_out_features(d_mod))
    w.put(f"{p_path}.weight", weight)
    if bn is not None:
        bn_path, bn_mod = bn
        if p_mod.bias is not None:
            w.put(f"{p_path}.bias", torch.zeros_like(bias))
        _pass_through_bn(w, bn_path, bn_mod, bias)
    elif p_mod.bias is not None:
        w.put(f"{p_path}.bias", bias)
    elif bool(bias.abs().max() > 0):
        raise ReparamError(
            f"the fused layer for plain {p_path!r} has a bias, but {p_path!r} has no bias and no "
            "BatchNorm consumes its output alone",
            hint="the plain class must have a bias or a BatchNorm after this layer to hold the fused bias",
        )


def _has_state(m: nn.Module | None) -> bool:
    return m is not None and bool(list(m.parameters(recurse=False)) or list(m.buffers(recurse=False)))


def _match_layers(gp, gd, w: _Writer, record) -> tuple[list[LayerMatch], set[str], set[str]]:
    """Match convs/linears one for one; returns the matches and the plain / fused BatchNorms used up."""
    plain_layers, deploy_layers = layer_nodes(gp), layer_nodes(gd)
    matches, absorbed, consumed = [], set(), set()
    for i in range(max(len(plain_layers), len(deploy_layers))):
        p = plain_layers[i] if i < len(plain_layers) else None
        d = deploy_layers[i] if i < len(deploy_layers) else None
        p_desc = (str(p[0].target), p[1]) if p else ("", None)
        d_desc = (str(d[0].target), d[1]) if d else ("", None)
        if p is None or d is None or layer_geometry(p[1]) != layer_geometry(d[1]):
            raise _mismatch("conv/linear layer", i, p_desc, d_desc)
        bn = _bn_after(gp, p[0], _out_features(p[1]))
        _write_layer(w, p_desc[0], p[1], d[1], bn)
        if bn:
            absorbed.add(bn[0])
        pre = _bn_before(gp, p[0])
        if pre and pre[0] not in absorbed:
            _write_bn_before(w, gd, d[0], pre, consumed)
            absorbed.add(pre[0])
        sources = record.sources_of(d_desc[0]) if record is not None else []
        matches.append(LayerMatch(p_desc[0], d_desc[0], bn[0] if bn else None, sources))
    return matches, absorbed, consumed


def _match_other_modules(gp, gd, w: _Writer, absorbed: set[str], consumed: set[str]) -> None:
    def stateful(gm, skip):
        return lambda n: (
            not isinstance(module_of(gm, n), LAYERS)
            and str(n.target) not in skip
            and _has_state(module_of(gm, n))
        )

    plain_nodes = ordered_nodes(gp, stateful(gp, absorbed))
    deploy_nodes = ordered_nodes(gd, stateful(gd, consumed))
    for i in range(max(len(plain_nodes), len(deploy_nodes))):
        p = plain_nodes[i] if i < len(plain_nodes) else None
        d = deploy_nodes[i] if i < len(deploy_nodes) else None
        p_mod = module_of(gp, p) if p is not None else None
        d_mod = module_of(gd, d) if d is not None else None
        p_state = p_mod.state_dict() if p_mod is not None else {}
        d_state = d_mod.state_dict() if d_mod is not None else {}
        same = (
            p_mod is not None
            and type(p_mod) is type(d_mod)
            and {k: v.shape for k, v in p_state.items()} == {k: v.shape for k, v in d_state.items()}
        )
        if not same:
            raise _mismatch(
                "other module with weights",
                i,
                (str(p.target) if p else "", p_mod),
                (str(d.target) if d else "", d_mod),
            )
        for key, value in d_state.items():
            w.put(f"{p.target}.{key}", value)


def _attr(gm: nn.Module, target: str) -> Tensor:
    return functools.reduce(getattr, target.split("."), gm)


def _match_attributes(gp, gd, w: _Writer) -> None:
    """Tensors the graph reads directly (``get_attr``: a class token, a scale), matched by order and shape."""
    plain_attrs = [n for n in gp.graph.nodes if n.op == "get_attr" and str(n.target) in w.state]
    deploy_attrs = [n for n in gd.graph.nodes if n.op == "get_attr"]
    for i, p in enumerate(plain_attrs):
        value = _attr(gd, str(deploy_attrs[i].target)) if i < len(deploy_attrs) else None
        if not isinstance(value, Tensor) or value.shape != w.state[str(p.target)].shape:
            raise ReparamError(
                f"the plain architecture's tensor {p.target!r} (#{i + 1} read directly by the graph) has "
                "no counterpart of the same shape in the fused model",
                hint="pass the plain class the model was expanded from",
            )
        w.put(str(p.target), value)


def plain_weights(
    trained: nn.Module,
    plain: nn.Module,
    example_inputs: Any = None,
    *,
    input_shape: Sequence[int] | None = None,
    converted: ConversionResult | None = None,
    check: bool = True,
) -> PlainWeights:
    """Fuse ``trained`` (or take its ``converted`` form) and load the weights into ``plain`` (in place).

    ``plain`` is an instance of the plain architecture (e.g. ``reparam.zoo.create_model("resnet18")``
    or the user's own class). The returned state dict loads with ``strict=True``; with ``check``, the
    loaded plain model must compute what the fused model computes (fp32 rule), else MismatchError.
    """
    if not isinstance(plain, nn.Module):
        raise ReparamError(
            f"expected a torch.nn.Module, got {type(plain).__name__}", hint="pass a model instance"
        )
    inputs, _ = make_inputs(trained, example_inputs, input_shape)
    if converted is None:
        with eval_mode(trained):  # the fused model is what eval mode computes
            converted = convert(trained, inputs)
    deploy = converted.model
    gp, gd = trace(plain), trace(deploy)
    writer = _Writer(plain)
    matches, absorbed, consumed = _match_layers(gp, gd, writer, converted.record)
    _match_other_modules(gp, gd, writer, absorbed, consumed)
    _match_attributes(gp, gd, writer)
    missing = [k for k in writer.state if k not in writer.filled and not k.endswith("num_batches_tracked")]
    if missing:
        raise ReparamError(
            f"the fused model has no value for plain parameter {missing[0]!r}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
            hint="the plain architecture holds state the trained model does not have",
        )
    plain.load_state_dict(writer.state, strict=True)
    plain.eval()
    result = PlainWeights(plain, writer.state, matches)
    if check:
        if inputs is None:
            raise ReparamError(
                "cannot check the plain weights without example inputs", hint="pass example_inputs"
            )
        reference = eval_outputs(deploy, inputs)
        passed, result.error = judge_against(deploy, inputs, reference, eval_outputs(plain, inputs))
        if not passed:
            raise MismatchError(
                f"the plain model loaded with the fused weights differs from the fused model "
                f"(scale-relative error {result.error:.3g})",
                hint="the layers matched by shape but the plain class computes something else "
                "(different activations or connections?)",
            )
    return result


def write_plain_checkpoint(
    path: str | os.PathLike,
    trained: nn.Module,
    converted: ConversionResult,
    plain: nn.Module,
    arch: str,
    arch_kwargs: Mapping[str, Any] | None,
    example_inputs: Any,
) -> PlainWeights:
    """Load the converted model's weights into ``plain`` (built from ``arch``; checked) and save them.

    The file is the plain class's state dict, loadable with ``load_state_dict(torch.load(path))``;
    ``arch`` and ``arch_kwargs`` ride in its metadata for reparam's own loaders.
    """

    result = plain_weights(trained, plain, example_inputs, converted=converted)
    payload = record_architecture(result.model.state_dict(), arch, arch_kwargs)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return result
