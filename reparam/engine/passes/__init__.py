"""Built-in rewrite passes, registered in their default order."""

from reparam.engine.passes import identity, fold_bn, sequential, branches  # noqa: F401,I001  (order matters)
