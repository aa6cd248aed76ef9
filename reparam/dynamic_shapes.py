"""Which input axes of a captured program may vary, and which the model's computation fixes.

Every capture by ``torch.export`` (the engine's fallback capture, the ``.pt2`` artifact) asks for
the batch axis and the spatial axes (2 and up) of every tensor input to stay symbolic, and lets
torch.export decide (``Dim.AUTO``): an axis that the model's computation ties to one size (a
``Linear`` after a flatten of H×W, a size read in ``forward`` used as a constant, a reshape to a
literal) is specialized, and the program's guards refuse any other size. What was fixed is read
back from the program's input placeholders and its guards, and reported.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx.experimental.symbolic_shapes import is_concrete_int, statically_known_true

from reparam.numerics import scale_relative_error
from reparam.tensors import batch_of_two, fresh, tensor_leaves
from reparam.torch_compat import avg_pool2d_bindings, fake_tensor_cache_off, size_guards

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
    (``guarded._guards_fn``, which checks sizes only) refuse that axis alone at other sizes: a
    doubled spatial size (even and odd), a batch of three. A relation between axes (``H * W == 256``
    of a flatten into a Linear) holds each of them. A free axis may still be bounded by its guards
    (a parity, a range); the program refuses a size outside them.
    """
    users = set(program.graph_signature.user_inputs)  # parameters and buffers are placeholders too
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in users]
    guards = size_guards(guarded)
    fixed = []
    for i, (node, a) in enumerate(zip(placeholders, args)):
        shape = getattr(node.meta.get("val"), "shape", None)
        for ax in varying_axes(a):
            number = shape is not None and ax < len(shape) and is_concrete_int(shape[ax])
            if number or (guards is not None and not _guards_accept(guards, args, i, ax)):
                fixed.append(FixedAxis(i, ax, int(a.shape[ax]), a.dim()))
    return fixed


def _probe_sizes(size: int, axis: int) -> tuple[int, ...]:
    """Other sizes an axis is tried at: a batch of three; a spatial size doubled, even and odd."""
    return (3,) if axis == 0 else (2 * size, 2 * size + 1)


def _guards_accept(guards: Any, args: Sequence[Any], index: int, axis: int) -> bool:
    """Whether the size guards pass with axis ``axis`` of input ``index`` at some other size: alone,
    or, for a spatial axis, with the input's other spatial axes doubled with it (``H == W``)."""
    size = int(args[index].shape[axis])
    if any(_guards_pass(guards, args, index, {axis: other}) for other in _probe_sizes(size, axis)):
        return True
    shape = args[index].shape
    return axis > 0 and _guards_pass(
        guards, args, index, {a: 2 * int(shape[a]) for a in range(2, len(shape))}
    )


def bounded_axes(guarded: nn.Module, args: Sequence[Any]) -> list[FixedAxis]:
    """The varying axes whose size guards refuse some of the probed sizes (a parity, a range, a value)."""
    guards = size_guards(guarded)
    if guards is None:
        return []
    return [
        FixedAxis(i, ax, int(a.shape[ax]), a.dim())
        for i, a in enumerate(args)
        for ax in varying_axes(a)
        if not all(_guards_pass(guards, args, i, {ax: other}) for other in _probe_sizes(int(a.shape[ax]), ax))
    ]


def nearest_taken_shape(guarded: nn.Module, args: Sequence[Any], steps: int = 64) -> tuple[int, ...] | None:
    """The nearest larger size of the first input, all its spatial axes grown together, that the
    program's size guards take (probed on meta tensors): what a refusal can suggest. None when
    there are no guards, no spatial axis, or none of the ``steps`` sizes is taken."""
    guards = size_guards(guarded)
    if guards is None or not args or not isinstance(args[0], torch.Tensor) or args[0].dim() < 3:
        return None
    shape = tuple(int(s) for s in args[0].shape)
    for step in range(1, steps + 1):
        sizes = {axis: shape[axis] + step for axis in range(2, len(shape))}
        if _guards_pass(guards, args, 0, sizes):
            return shape[:2] + tuple(sizes.values())
    return None


def _guards_pass(guards: Any, args: Sequence[Any], index: int, sizes: dict[int, int]) -> bool:
    """Whether the size guards pass (on meta tensors) with input ``index`` at ``sizes`` ({axis: size})."""
    probe = []
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor):
            shape = list(a.shape)
            if i == index:
                for axis, size in sizes.items():
                    shape[axis] = size
            a = torch.empty(shape, dtype=a.dtype, device="meta")
        probe.append(a)
    try:
        guards(*probe)
    except AssertionError:
        return False
    except Exception:  # a guard this probe cannot evaluate: the placeholder's size decides
        return True
    return True


_OTHER_PATH = "with a free batch it computes another path at batch 1"
# A capture whose output at batch 1 moves by more than this took another path there: a branch on a
# size that torch.export took for at least 2, as it takes every free size.
_SAME_PATH = 1e-3


def _batch_one_judge(reference: nn.Module, args: Sequence[Any]) -> Callable[[nn.Module], bool]:
    """Whether a captured module computes ``reference``'s output on the example's first row alone
    (the reference runs once, on the first question)."""
    one = tuple(a[:1] if isinstance(a, torch.Tensor) and a.dim() else a for a in args)
    want: list[torch.Tensor] = []

    def same(captured: nn.Module) -> bool:
        try:
            with torch.no_grad():
                if not want:
                    want.extend(tensor_leaves(reference(*fresh(one))))
                got = tensor_leaves(captured(*fresh(one)))
        except Exception:  # the capture refuses batch 1 (a guard) or fails there: not the same
            return False
        return len(want) == len(got) and all(
            w.shape == g.shape
            and scale_relative_error(w.detach().double().numpy(), g.detach().double().numpy()) <= _SAME_PATH
            for w, g in zip(want, got)
        )

    return same


class FreeCaptureRefused(Exception):
    """The capture with free axes computes something else where the example's sizes are."""


def export_with_free_axes(
    export: Callable[[tuple, Any], Any],
    args: tuple,
    reference: nn.Module | None = None,
    *,
    free_only: bool = False,
) -> tuple[Any, nn.Module, list[FixedAxis], str]:
    """Run ``export(example, dynamic_shapes)`` so that as many axes as the model allows stay free.

    Tries a batch of two (torch.export fixes any axis whose example size is 1) with every varying
    axis left to torch.export, then the example itself the same way, then static shapes. Returns
    ``(program, its module with the size guards, the axes it holds, why free axes failed: "" unless
    only the static capture worked)``; re-raises the static capture's error.

    torch.export takes every free size for at least 2, so a branch on ``x.size(0) > 1`` is traced
    as always taken without a guard: with ``reference`` (the module exported), a capture with a
    free batch must compute the reference's output at batch 1 too, or the next form is tried.

    ``free_only``: the caller uses a capture only when every axis is free (the engine), so only the
    first form is tried: the example's own batch of 1 is always held by torch.export, and a static
    capture holds every axis. Its error is raised, a capture at another path at batch 1 raises
    :class:`FreeCaptureRefused`, and a capture holding axes is returned with them.
    """
    reasons = []
    tried = []
    same_at_batch_one = _batch_one_judge(reference, args) if reference is not None else None
    two = batch_of_two(args)
    if any(a is not b for a, b in zip(two, args)):
        tried.append(two)
    tried.append(args)
    # each capture gets copies: torch.export marks the tensors it is given with the sizes it was
    # asked to leave free, and a later capture of the same tensors would inherit them
    for example in tried:
        try:
            with warnings.catch_warnings(), global_pools_stay_free(), fake_tensor_cache_off():
                warnings.simplefilter("ignore")
                program = export(fresh(example), auto_dynamic_shapes(example))
                module = program.module()
        except Exception as exc:  # this model cannot be captured with free axes: try the next form
            if free_only:
                raise
            text = str(exc).strip()
            reasons.append(f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}")
            continue
        if size_guards(module) is None:  # a torch whose exported module checks no sizes
            reasons.append("this torch keeps no size guards in an exported module")
            if free_only:
                raise FreeCaptureRefused(reasons[-1])
            break
        fixed = fixed_axes(program, module, example)
        batch_free = not any(f.axis == 0 for f in fixed)
        if example is two and not batch_free and not free_only:
            continue  # the batch was fixed at the doubled size: the example's own batch is the one to keep
        if batch_free and same_at_batch_one is not None and not same_at_batch_one(module):
            if free_only:
                raise FreeCaptureRefused(_OTHER_PATH)
            reasons.append(_OTHER_PATH)
            continue
        # the sizes held are the example's (the doubled batch is never among them)
        fixed = [FixedAxis(f.input, f.axis, int(args[f.input].shape[f.axis]), f.ndim) for f in fixed]
        return program, module, fixed, ""
    program = export(fresh(args), None)
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


def _same_size(a: Any, b: Any) -> bool:
    """Whether two sizes are equal without adding a guard (a symbolic size that is not known equal is not)."""
    if isinstance(a, torch.SymInt) or isinstance(b, torch.SymInt):
        return bool(statically_known_true(a == b))
    return a == b


def _global_pool_kernel(x: Any, kernel_size: Any, stride: Any, padding: Any) -> bool:
    """Whether ``avg_pool2d(x, kernel_size, stride, padding)`` averages each whole feature map.

    A kernel of sizes read in forward qualifies when one of them is known to be the feature map's
    and the others can be required to be (``kernel_size=x.size(3)`` on a square map, as RepVGG's SE
    writes it: the program then takes square inputs of any size).
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 3:
        return False
    pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
    kernel, sizes = pair(kernel_size), tuple(x.shape[-2:])
    if any(not isinstance(k, torch.SymInt) for k in kernel):
        return False  # a literal kernel: the model holds the size, as it does in eager code
    if stride not in (None, [], ()) and not all(map(_same_size, pair(stride), kernel)):
        return False
    if any(p != 0 for p in pair(padding)):
        return False
    known = [_same_size(k, s) for k, s in zip(kernel, sizes)]
    if not any(known):
        return False
    for k, s, same in zip(kernel, sizes, known):
        if not same:
            torch._check(k == s)  # a guard of the program: other sizes are refused, never pooled in part
    return True


@contextlib.contextmanager
def global_pools_stay_free() -> Iterator[None]:
    """Capture ``F.avg_pool2d(x, kernel_size=x.size(3))`` (a global pool written with sizes read in
    forward, as RepVGG's and MobileOne's SE blocks do) as the adaptive pool to one pixel it equals.

    ATen's ``avg_pool2d`` takes its kernel as plain integers, so torch.export would hold the
    feature map's size; ``adaptive_avg_pool2d(x, 1)`` computes the same mean at every size.
    """
    original = F.avg_pool2d

    def avg_pool2d(
        input,
        kernel_size,
        stride=None,
        padding=0,
        ceil_mode=False,
        count_include_pad=True,
        divisor_override=None,
    ):
        if divisor_override is None and _global_pool_kernel(input, kernel_size, stride, padding):
            return F.adaptive_avg_pool2d(input, 1)
        return original(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)

    # torch.nn.functional's is the builtin itself; a traced graph calls it from where it is defined
    bindings = avg_pool2d_bindings()
    for where in bindings:
        where.avg_pool2d = avg_pool2d
    try:
        yield
    finally:
        for where in bindings:
            where.avg_pool2d = original
