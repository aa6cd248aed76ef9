"""Which input axes of a captured program may vary, and which the model's computation fixes.

Every capture by ``torch.export`` (the engine's fallback capture, the ``.pt2`` artifact) asks for
the batch axis and the spatial axes (2 and up) of every tensor input to stay symbolic, and lets
torch.export decide (``Dim.AUTO``): an axis that the model's computation ties to one size (a
``Linear`` after a flatten of H×W, a size read in ``forward`` used as a constant, a reshape to a
literal) is specialized, and the program's guards refuse any other size. What was fixed is read
back from the program's input placeholders and reported.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.fx.experimental.symbolic_shapes import is_concrete_int

from reparam.tensors import batch_of_two

_SPATIAL = {3: ("length",), 4: ("height", "width"), 5: ("depth", "height", "width")}


def axis_name(ndim: int, axis: int) -> str:
    """``batch``, ``height``, ``width``, ... for an axis of an N×C×... input; ``dim<k>`` otherwise."""
    if axis == 0:
        return "batch"
    names = _SPATIAL.get(ndim, ())
    return names[axis - 2] if 2 <= axis < 2 + len(names) else f"dim{axis}"


def varying_axes(t: Any) -> list[int]:
    """The axes asked to stay symbolic: batch and every axis after the channels."""
    if not isinstance(t, torch.Tensor) or t.dim() == 0:
        return []
    return [0, *range(2, t.dim())]


@dataclass(frozen=True)
class FixedAxis:
    """An input axis the captured program holds at one size."""

    input: int  # position among the tensor inputs
    axis: int
    size: int
    ndim: int

    @property
    def name(self) -> str:
        return axis_name(self.ndim, self.axis)

    def describe(self) -> str:
        where = f"input {self.input} " if self.input else ""
        return f"{where}{self.name} (axis {self.axis}) = {self.size}"

    def to_dict(self) -> dict[str, Any]:
        return {"input": self.input, "axis": self.axis, "name": self.name, "size": self.size}

    @classmethod
    def from_dict(cls, d: dict[str, Any], ndim: int = 4) -> FixedAxis:
        return cls(int(d["input"]), int(d["axis"]), int(d["size"]), ndim)


FIXED_BY_MODEL = (
    "the model's computation ties it to the size it was captured at (for example a Linear after a "
    "flatten of the feature map, or a size read in forward used as a constant)"
)


def auto_dynamic_shapes(args: Sequence[Any]) -> tuple[dict[int, Any] | None, ...]:
    """``dynamic_shapes`` for torch.export: ``Dim.AUTO`` on every varying axis of every tensor."""
    return tuple({ax: torch.export.Dim.AUTO for ax in varying_axes(a)} or None for a in args)


def fixed_axes(program: Any, guarded: nn.Module, args: Sequence[Any]) -> list[FixedAxis]:
    """The varying axes that an exported program holds at the example's size.

    An axis is held when the input placeholder's size is a number, or when the program's guards
    (``guarded._guards_fn``, which checks sizes only) refuse that axis alone at another size: a
    doubled spatial size, a batch of three. A relation between axes (``H * W == 256`` of a flatten
    into a Linear) holds each of them.
    """
    users = set(program.graph_signature.user_inputs)  # parameters and buffers are placeholders too
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in users]
    guards = getattr(guarded, "_guards_fn", None)
    fixed = []
    for i, (node, a) in enumerate(zip(placeholders, args)):
        shape = getattr(node.meta.get("val"), "shape", None)
        for ax in varying_axes(a):
            number = shape is not None and ax < len(shape) and is_concrete_int(shape[ax])
            if number or (guards is not None and not _guards_accept(guards, args, i, ax)):
                fixed.append(FixedAxis(i, ax, int(a.shape[ax]), a.dim()))
    return fixed


def _guards_accept(guards: Any, args: Sequence[Any], index: int, axis: int) -> bool:
    """Whether the size guards pass with axis ``axis`` of input ``index`` alone changed (on meta tensors)."""
    probe = []
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor):
            shape = list(a.shape)
            if i == index:
                shape[axis] = 3 if axis == 0 else 2 * shape[axis]
            a = torch.empty(shape, dtype=a.dtype, device="meta")
        probe.append(a)
    try:
        guards(*probe)
    except AssertionError:
        return False
    except Exception:  # a guard this probe cannot evaluate: the placeholder's size decides
        return True
    return True


def export_with_free_axes(
    export: Callable[[tuple, Any], Any], args: tuple
) -> tuple[Any, nn.Module, list[FixedAxis], str]:
    """Run ``export(example, dynamic_shapes)`` so that as many axes as the model allows stay free.

    Tries a batch of two (torch.export fixes any axis whose example size is 1) with every varying
    axis left to torch.export, then the example itself the same way, then static shapes. Returns
    ``(program, its module with the size guards, the axes it holds, why free axes failed: "" unless
    only the static capture worked)``; re-raises the static capture's error.
    """
    reasons = []
    tried = []
    two = batch_of_two(args)
    if any(a is not b for a, b in zip(two, args)):
        tried.append(two)
    tried.append(args)
    for example in tried:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                program = export(example, auto_dynamic_shapes(example))
                module = program.module()
        except Exception as exc:  # this model cannot be captured with free axes: try the next form
            text = str(exc).strip()
            reasons.append(f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}")
            continue
        fixed = fixed_axes(program, module, example)
        if example is two and any(f.axis == 0 for f in fixed):
            continue  # the batch was fixed at the doubled size: the example's own batch is the one to keep
        # the sizes held are the example's (the doubled batch is never among them)
        fixed = [FixedAxis(f.input, f.axis, int(args[f.input].shape[f.axis]), f.ndim) for f in fixed]
        return program, module, fixed, ""
    program = export(args, None)
    every = [
        FixedAxis(i, ax, int(a.shape[ax]), a.dim()) for i, a in enumerate(args) for ax in varying_axes(a)
    ]
    return program, program.module(), every, "; ".join(reasons) or "unknown"


def fixed_reason(static_reason: str = "") -> str:
    """Why a captured program fixes its axes: the model itself, or a capture that had to be static."""
    if static_reason:
        return f"torch.export could capture the model only at the example's sizes ({static_reason})"
    return FIXED_BY_MODEL


def fixed_note(fixed: Sequence[FixedAxis], static_reason: str = "") -> str:
    """One sentence for the report on the sizes a captured program fixes ("" when none are)."""
    if not fixed:
        return ""
    axes = ", ".join(f.describe() for f in fixed)
    return f"input sizes fixed in the deploy model: {axes}: {fixed_reason(static_reason)}"
