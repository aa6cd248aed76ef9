"""``expanded``: any zoo model in the training form ``reparam.expand`` gives it.

This is what an expanded checkpoint records, so that loading it builds only zoo code: the plain
architecture must be a zoo name (a user's own class is expanded with ``arch``
``reparam.expansion:expanded_model``, given by the caller).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from reparam.branching.expand import expand_structure
from reparam.errors import ReparamError
from reparam.zoo.registry import create_model, register_model

ACNET_PAPER = "Ding et al., ACNet: Strengthening the Kernel Skeletons for Powerful CNN via Asymmetric Convolution Blocks (ICCV 2019)"


@register_model(name="expanded", paper=ACNET_PAPER)
def expanded(
    num_classes: int | None = None,
    in_chans: int | None = None,
    width: float | None = None,
    arch: str = "resnet18",
    scheme: str = "acb",
    arch_kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """A zoo model expanded by reparam.expand (arch=zoo name, scheme=acb | repvgg | dbb)."""
    if not isinstance(arch, str) or ":" in arch:
        raise ReparamError(
            f"the zoo's 'expanded' model takes a zoo architecture, got {arch!r}",
            hint="for your own class pass `arch` reparam.expansion:expanded_model "
            '`arch_kwargs` \'{"arch": "package.module:Class", "scheme": "acb"}\'',
        )

    kwargs = dict(arch_kwargs or {})
    for key, value in (("num_classes", num_classes), ("in_chans", in_chans), ("width", width)):
        if value is not None:
            kwargs[key] = value
    model = create_model(arch, **kwargs)
    expand_structure(model, scheme, "fresh")
    return model
