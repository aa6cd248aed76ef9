"""Expand a plain CNN into a re-parameterizable training form, and hand back plain-architecture weights.

``reparam.expand(model, scheme="acb")`` finds, by dataflow, every conv followed by BatchNorm and
replaces the pair with a multi-branch block (ACNet's ACB, RepVGG's block, or a DBB-like block)
whose fusion is exactly a conv of the original geometry. ``plain_weights(trained, plain_model)`` fuses
a trained model and writes its weights into the plain architecture, matched by graph structure.
"""

from reparam.branching import (
    INITS,
    SCHEMES,
    Branch,
    ExpandedConv,
    ExpandedLayer,
    ExpandReport,
    conv_layout,
    expand_structure,
    graph_signature,
    op_counts,
)
from reparam.expansion.checkpoint import EXPANDED_ARCH, expanded_model, save_expanded
from reparam.expansion.core import Expansion, expand
from reparam.expansion.plain import LayerMatch, PlainWeights, plain_weights

__all__ = [
    "EXPANDED_ARCH",
    "INITS",
    "SCHEMES",
    "Branch",
    "ExpandReport",
    "ExpandedConv",
    "ExpandedLayer",
    "LayerMatch",
    "PlainWeights",
    "Expansion",
    "conv_layout",
    "expand",
    "expand_structure",
    "expanded_model",
    "graph_signature",
    "op_counts",
    "plain_weights",
    "save_expanded",
]
