"""Small torch helpers every layer shares: output leaves, output names, a module's dtype, eval mode."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from reparam.errors import ReparamError


def tensor_leaves(value: Any) -> list[torch.Tensor]:
    """The tensors of a model output (tensor, tuple, list, dict), in pytree order."""
    # torch's tree_flatten leaves a reference cycle (its recursive helper) per call: a verifier
    # running it per batch would hold garbage until the collector runs
    if isinstance(value, torch.Tensor):
        return [value]
    if type(value) in (tuple, list) and all(isinstance(t, torch.Tensor) for t in value):
        return list(value)
    return [t for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)]


def output_names(n: int) -> list[str]:
    """The naming convention: one output is "output", several are "output0", "output1", ..."""
    return ["output"] if n == 1 else [f"output{i}" for i in range(n)]


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A CPU numpy copy; float64 stays float64, every other dtype becomes float32."""
    dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
    return t.detach().to("cpu", dtype).clone().numpy()


def module_dtype(module: nn.Module) -> tuple[torch.dtype, torch.device]:
    """dtype and device of the module's first floating-point parameter or buffer (float32/CPU if none)."""
    for t in [*module.parameters(), *module.buffers()]:
        if t.is_floating_point():
            return t.dtype, t.device
    return torch.float32, torch.device("cpu")


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Eval mode for the block, then every submodule's own train/eval mode again.

    Modules of loaded torch.export programs refuse ``.eval()``/``.train()`` (their mode was fixed
    at export); they are left as they are.
    """
    modes = {m: m.training for module in modules for m in module.modules()}
    if not any(modes.values()):  # already in eval mode (every batch of a verification): nothing to switch
        yield
        return
    for module in modules:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            module.eval()
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode


def fresh(inputs: tuple) -> tuple:
    """Copies of example inputs: a model that writes into its input must not change them."""
    return tuple(t.clone() if isinstance(t, torch.Tensor) else t for t in inputs)


def as_args(example_inputs: Any) -> tuple:
    """Example inputs as a tuple of positional arguments (a tensor, or a tuple/list of them)."""

    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, Sequence) and not isinstance(example_inputs, str):
        return tuple(example_inputs)
    raise ReparamError(
        f"example_inputs must be a tensor or a tuple of tensors, not {type(example_inputs).__name__}",
        hint="pass e.g. (torch.randn(1, 3, 224, 224),)",
    )


def batch_of_two(args: tuple, dynamic: Sequence[bool] | None = None) -> tuple:
    """``args`` with a batch of two rows where the batch is 1 (and the argument's batch is dynamic).

    torch.export specializes a dim whose example size is 1; a dynamic batch is traced with two rows.
    """
    dynamic = [True] * len(args) if dynamic is None else list(dynamic)
    return tuple(
        a.expand(2, *a.shape[1:]).contiguous()
        if isinstance(a, torch.Tensor) and a.dim() and a.shape[0] == 1 and dyn
        else a
        for a, dyn in zip(args, dynamic)
    )
