"""The training form ``reparam.expand`` builds: multi-branch convs whose sum is one conv.

- :mod:`~reparam.branching.block`: ``ExpandedConv``, a conv (+ BN) with extra branches;
- :mod:`~reparam.branching.schemes`: the branches each scheme (acb, repvgg, dbb) adds;
- :mod:`~reparam.branching.find`: convs followed by one BatchNorm (or with a bias), by dataflow;
- :mod:`~reparam.branching.structure`: the conv layout and operator signature of a graph;
- :mod:`~reparam.branching.expand`: ``expand_structure``, the rewrite in place without checks.

The zoo's ``expanded`` model is built with these; :mod:`reparam.expansion` adds the checks,
checkpoints and the way back to the plain class.
"""

from reparam.branching.block import Branch, ExpandedConv
from reparam.branching.expand import INITS, ExpandedLayer, ExpandReport, count_params, expand_structure
from reparam.branching.schemes import SCHEMES, check_scheme
from reparam.branching.structure import conv_layout, graph_signature, op_counts

__all__ = [
    "INITS",
    "SCHEMES",
    "Branch",
    "ExpandReport",
    "ExpandedConv",
    "ExpandedLayer",
    "check_scheme",
    "conv_layout",
    "count_params",
    "expand_structure",
    "graph_signature",
    "op_counts",
]
