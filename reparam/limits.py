"""Memory budgets checked before anything large is allocated.

A checkpoint recording ``width=2000`` or an input shape such as ``1x3x100000x100000`` would
otherwise allocate until the process dies. Parameters are counted on the ``meta`` device (no
storage) and activations by a forward pass over meta tensors, then compared with a limit:
``REPARAM_MAX_MEMORY`` (e.g. ``32G``) or half of the machine's physical memory.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from reparam.errors import ReparamError

ENV_VAR = "REPARAM_MAX_MEMORY"
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_bytes(text: str) -> int:
    """``"512M"``, ``"32G"``, ``"1.5T"`` or a plain byte count -> bytes."""
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = value[-1:] if value[-1:] in _UNITS and value[-1:] else ""
    try:
        number = float(value[: len(value) - len(unit)])
    except ValueError:
        number = -1.0
    if not number > 0:
        raise ReparamError(
            f"invalid memory size {text!r}",
            hint=f"write a size such as 512M or 32G (flag `max_memory`, {ENV_VAR})",
        )
    return int(number * _UNITS[unit])


def memory_limit(override: int | str | None = None) -> int:
    """The byte budget: ``override``, else ``$REPARAM_MAX_MEMORY``, else half the physical memory."""
    if override is not None:
        return override if isinstance(override, int) else parse_bytes(override)
    if os.environ.get(ENV_VAR):
        return parse_bytes(os.environ[ENV_VAR])
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.3g} GiB"


def refuse_over_limit(what: str, needed: int, limit: int) -> None:
    """Raise a ReparamError when ``needed`` bytes exceed ``limit``."""
    if needed > limit:
        raise ReparamError(
            f"{what} needs about {_gib(needed)}, more than the memory limit of {_gib(limit)}",
            hint=f"check the sizes; if they are right, raise the limit with `max_memory` or {ENV_VAR}",
        )


# weight initialization: torch.nn.init's in-place functions (they dispatch themselves to a mode
# before the tensor methods they call) and the tensors' own random fills
_RANDOM_FILLS = frozenset(
    [
        *(
            getattr(torch.nn.init, name)
            for name in dir(torch.nn.init)
            if name.endswith("_") and not name.startswith("_")
        ),
        *(
            getattr(torch.Tensor, name)
            for name in (
                "normal_",
                "uniform_",
                "log_normal_",
                "exponential_",
                "cauchy_",
                "geometric_",
                "random_",
            )
        ),
    ]
)


class _NoRandomFillsOnMeta(TorchFunctionMode):
    """Skips random fills of meta tensors: they hold no values to set, and torch computes ``normal_``
    on meta through its Python reference decompositions (about a second on first use in a process)."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func in _RANDOM_FILLS:
            # torch.nn.init passes its tensor by keyword
            target = args[0] if args else kwargs.get("tensor")
            if isinstance(target, torch.Tensor) and target.is_meta:
                return target
        return func(*args, **kwargs)


def build_on_meta(factory: Callable[[], nn.Module]) -> nn.Module | None:
    """``factory()`` built on the ``meta`` device (nothing allocated, weights not initialized);
    None where it cannot be."""
    try:
        with torch.device("meta"), _NoRandomFillsOnMeta():
            model = factory()
    except ReparamError:
        raise
    except Exception:  # a factory that cannot build on meta is measured after building instead
        return None
    return model if isinstance(model, nn.Module) else None


def state_bytes(model: nn.Module) -> int:
    """Bytes of the parameters and buffers of ``model``."""
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def activation_bytes(model: nn.Module, shapes: Sequence[Sequence[int]], dtype: torch.dtype) -> int:
    """Sum of the bytes of every leaf module's output for inputs of ``shapes`` (meta forward).

    An upper bound on what a forward pass holds at once; falls back to the inputs' own bytes when
    the model does not run on meta tensors.
    """
    inputs = [torch.empty(tuple(s), dtype=dtype, device="meta") for s in shapes]
    total = sum(t.numel() * t.element_size() for t in inputs)
    state = {
        k: torch.empty_like(v, device="meta") for k, v in (*model.named_parameters(), *model.named_buffers())
    }
    leaves = [m for m in model.modules() if not list(m.children())]
    outputs = 0

    def count(_m, _args, out):
        nonlocal outputs
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                outputs += t.numel() * t.element_size()

    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            torch.func.functional_call(model, state, tuple(inputs))
    except Exception:
        return total
    finally:
        for h in handles:
            h.remove()
    return total + outputs


def check_input_budget(
    model: nn.Module, shapes: Sequence[Sequence[int]], dtype: torch.dtype, max_bytes: int | str | None = None
) -> None:
    """Refuse input shapes whose inputs and activations would exceed the memory limit."""
    limit = memory_limit(max_bytes)
    input_bytes = sum(int(torch.Size(s).numel()) * dtype.itemsize for s in shapes)
    shown = " and ".join("x".join(map(str, s)) for s in shapes)
    refuse_over_limit(f"the input of shape {shown}", input_bytes, limit)
    refuse_over_limit(
        f"a forward pass on inputs of shape {shown}", activation_bytes(model, shapes, dtype), limit
    )
