"""Example inputs for the engine's built-in check: given, of a given shape, or of a guessed shape."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from reparam.engine.graph import CONV, CONV_T
from reparam.errors import ReparamError
from reparam.limits import check_input_budget
from reparam.tensors import module_dtype

# The one default image side of every command and library call that has to choose an input shape.
DEFAULT_IMAGE_SIZE = 224


def make_inputs(
    model: nn.Module,
    example_inputs: Any = None,
    input_shape: Sequence[int] | None = None,
    *,
    max_bytes: int | str | None = None,
) -> tuple[tuple | None, str | None]:
    """Example inputs as a tuple, plus a note when their shape had to be guessed.

    Given inputs win; else random inputs of ``input_shape``; else ``1×C×224×224`` (224 per spatial
    dim, as every command defaults) from the first conv's ``in_channels``, or ``1×F`` from the first
    linear layer.
    """
    if example_inputs is not None:
        if isinstance(example_inputs, torch.Tensor):
            return (example_inputs,), None
        return tuple(example_inputs), None
    dtype, device = module_dtype(model)
    gen = torch.Generator().manual_seed(0)
    note = None
    if input_shape is None:
        layer = next(
            ((n, m) for n, m in model.named_modules() if isinstance(m, CONV + CONV_T + (nn.Linear,))), None
        )
        if layer is None:
            return None, "no example inputs: could not infer an input shape (no conv or linear layer)"
        name, m = layer
        input_shape = (
            (1, m.in_features)
            if isinstance(m, nn.Linear)
            else (1, m.in_channels) + (DEFAULT_IMAGE_SIZE,) * len(m.kernel_size)
        )
        note = (
            f"input shape {'x'.join(map(str, input_shape))} inferred from the first layer {name!r}; "
            "pass input_shape (`input_shape`) to choose it"
        )
    shape = tuple(int(d) for d in input_shape)
    if not shape or any(d <= 0 for d in shape):
        raise ReparamError(f"invalid input shape {shape}", hint="give positive dims, e.g. 1x3x224x224")
    check_input_budget(model, [shape], dtype, max_bytes)
    x = torch.randn(shape, generator=gen, dtype=torch.float32).to(dtype=dtype, device=device)
    return (x,), note
