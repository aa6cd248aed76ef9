"""Built-in rewrite passes and their default order."""

from reparam.engine.base import set_default_order
from reparam.engine.passes import border_fill, branches, canonical, fold_bn, identity, sequential  # noqa: F401

# The order passes run in each round: graphs are first put into module form, identities dropped,
# summed branches merged (a branch's BatchNorm folded inside the merge, rounded once with the sum),
# the remaining BatchNorms folded (into the layer before, else the unpadded layer after), then
# sequential chains merged; a later round merges the branches those make mergeable.
DEFAULT_ORDER = [
    "canonicalize",
    "remove_identity",
    "merge_branches",
    "fold_bn",
    "fold_bn_before",
    "border_fill",
    "merge_1x1_kxk",
    "merge_kxk_1x1",
]
set_default_order(DEFAULT_ORDER)
