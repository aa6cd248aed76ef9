"""Remove modules that are the identity at inference (``nn.Identity``, dropout in eval mode).

Also dropped: what torch.export writes for them (an eval-mode dropout is captured as
``aten.clone``, or ``aten.dropout`` with ``train=False``; a functional graph's clone without a
memory format computes its input), and torch.export's metadata checks on a constant the model owns (``w.to(device)`` of a
plain tensor attribute is captured as ``_assert_tensor_metadata(w, ...)``). They compute nothing,
held when the model was captured, and would otherwise keep the constant, and refuse the deploy
model on another device, after the layer that read it is fused.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from reparam.engine.base import PassContext, PassResult, register_pass
from reparam.engine.graph import module_of

_IDENTITY = (
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)


@register_pass
class RemoveIdentity:
    """Route the users of identity-at-inference modules to their input, so branches line up."""

    name = "remove_identity"
    description = "drop nn.Identity and dropout modules (the identity in eval mode)"

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        changed = False
        for node in list(gm.graph.nodes):
            if _constant_metadata_check(node):
                gm.graph.erase_node(node)
                changed = True
                continue
            if _identity_call(node):
                node.replace_all_uses_with(node.args[0])
                gm.graph.erase_node(node)
                changed = True
                continue
            mod = module_of(gm, node)
            if not isinstance(mod, _IDENTITY) or len(node.args) != 1 or node.kwargs:
                continue
            if isinstance(mod, nn.Identity) is False and mod.training:
                continue
            src = node.args[0]
            if not isinstance(src, fx.Node):
                continue
            ctx.current_block = ctx.full(str(node.target))
            node.replace_all_uses_with(src)
            gm.graph.erase_node(node)
            changed = True
        return PassResult(gm, changed, [])


def _constant_metadata_check(node: fx.Node) -> bool:
    """An unused ``_assert_tensor_metadata`` of a constant (a ``get_attr``) of the graph."""
    if node.op != "call_function" or node.target is not torch.ops.aten._assert_tensor_metadata.default:
        return False
    checked = node.args[0] if node.args else None
    return not node.users and isinstance(checked, fx.Node) and checked.op == "get_attr"


_VIEWS = {torch.ops.aten.view.default, torch.ops.aten._unsafe_view.default}


def _identity_call(node: fx.Node) -> bool:
    """``aten.dropout(x, p, train=False)``, or an ``aten.clone`` that keeps the layout and feeds no
    view (a reshape is captured as a contiguous clone and a view: that copy is needed)."""
    if node.op != "call_function" or not node.args or not isinstance(node.args[0], fx.Node):
        return False
    if any(u.op == "output" for u in node.users):
        return False  # a returned copy stays a copy: the caller may write into it
    if node.target is torch.ops.aten.clone.default:
        return (
            set(node.kwargs) <= {"memory_format"}
            and node.kwargs.get("memory_format") in (None, torch.preserve_format)
            and not any(u.target in _VIEWS for u in node.users)
        )
    if node.target is torch.ops.aten.dropout.default:
        train = node.args[2] if len(node.args) > 2 else node.kwargs.get("train")
        return train is False
    return False
