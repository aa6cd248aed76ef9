"""Expand a plain CNN into a re-parameterizable training form, and hand back plain-architecture weights.

``reparam.expand(model, scheme="acb")`` finds, by dataflow, every conv followed by BatchNorm and
replaces the pair with a multi-branch block (ACNet's ACB, RepVGG's block, or a DBB-like block)
whose fusion is exactly a conv of the original geometry. ``plain_weights(trained, plain_model)`` fuses
a trained model and writes its weights into the plain architecture, matched by graph structure.
"""

from reparam.expansion.block import Branch, ExpandedConv
from reparam.expansion.checkpoint import EXPANDED_ARCH, expanded_model, save_expanded
from reparam.expansion.core import INITS, ExpandedLayer, ExpandReport, Expansion, expand, expand_structure
from reparam.expansion.plain import LayerMatch, PlainWeights, plain_weights
from reparam.expansion.schemes import SCHEMES
from reparam.expansion.structure import conv_layout, graph_signature, op_counts

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
