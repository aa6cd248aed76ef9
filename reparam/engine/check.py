"""Example inputs, output comparison and block localization for the engine's built-in check."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import fx, nn
from torch.utils._pytree import tree_flatten

from reparam.engine.graph import CONV, CONV_T
from reparam.errors import ReparamError
from reparam.limits import check_input_budget
from reparam.numerics import scale_relative_error

TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10, torch.float16: 1e-2, torch.bfloat16: 5e-2}


def model_dtype(model: nn.Module) -> tuple[torch.dtype, torch.device]:
    """dtype and device of the model's first floating-point parameter or buffer (float32/CPU if none)."""
    for t in [*model.parameters(), *model.buffers()]:
        if t.is_floating_point():
            return t.dtype, t.device
    return torch.float32, torch.device("cpu")


def tolerance_for(dtype: torch.dtype) -> float:
    """Scale-relative tolerance of the built-in check: 1e-5 for float32, scaled for other dtypes."""
    return TOLERANCE.get(dtype, 1e-5)


@torch.no_grad()
def fp32_noise(original: nn.Module, inputs: tuple, reference_out: Any) -> float | None:
    """Scale-relative error of ``reference_out`` (the fp32 original's output) against the original run in float64."""
    try:
        m64 = copy.deepcopy(original).eval().double()
        in64 = tuple(
            t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in inputs
        )
        out64 = m64(*in64)
    except Exception:  # a model that cannot run in float64 keeps the base tolerance
        return None
    _, rel, _ = compare_outputs(out64, reference_out)
    return rel


def make_inputs(
    model: nn.Module,
    example_inputs: Any = None,
    input_shape: Sequence[int] | None = None,
    *,
    max_bytes: int | str | None = None,
) -> tuple[tuple | None, str | None]:
    """Example inputs as a tuple, plus a note when their shape had to be guessed.

    Given inputs win; else random inputs of ``input_shape``; else ``1×C×32×32`` (one 32 per spatial
    dim) from the first conv's ``in_channels``, or ``1×F`` from the first linear layer.
    """
    if example_inputs is not None:
        if isinstance(example_inputs, torch.Tensor):
            return (example_inputs,), None
        return tuple(example_inputs), None
    dtype, device = model_dtype(model)
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
            else (1, m.in_channels) + (32,) * len(m.kernel_size)
        )
        note = (
            f"input shape {'x'.join(map(str, input_shape))} inferred from the first layer {name!r}; "
            "pass input_shape (--input-shape) to choose it"
        )
    shape = tuple(int(d) for d in input_shape)
    if not shape or any(d <= 0 for d in shape):
        raise ReparamError(f"invalid input shape {shape}", hint="give positive dims, e.g. 1x3x224x224")
    check_input_budget(model, [shape], dtype, max_bytes)
    x = torch.randn(shape, generator=gen, dtype=torch.float32).to(dtype=dtype, device=device)
    return (x,), note


def tensors(out: Any) -> list[torch.Tensor]:
    """Tensor leaves of a model output (tensor, tuple, list, dict)."""
    return [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]


def compare_outputs(ref: Any, new: Any) -> tuple[float, float, float]:
    """``(max abs error, scale-relative error, max |ref|)`` over all output tensors."""
    a, b = tensors(ref), tensors(new)
    if len(a) != len(b):
        raise ReparamError(
            f"the deploy model returns {len(b)} tensors, the original {len(a)}",
            hint="report this model: the conversion changed its outputs",
        )
    abs_err = rel = peak = 0.0
    for x, y in zip(a, b):
        if x.shape != y.shape:
            return float("inf"), float("inf"), float("nan")
        x64, y64 = x.detach().double().cpu(), y.detach().double().cpu()
        if x64.numel():
            this_rel = scale_relative_error(x64.numpy(), y64.numpy())
            diff = float((x64 - y64).abs().nan_to_num(nan=float("inf")).max())
            abs_err = max(abs_err, float("inf") if this_rel == float("inf") else diff)
            finite = x64[torch.isfinite(x64)]
            peak = max(peak, float(finite.abs().max()) if finite.numel() else 0.0)
            rel = max(rel, this_rel)
    return abs_err, rel, peak


def capture(
    model: nn.Module, paths: Sequence[str], run: Callable[[], Any], *, keep_outputs: bool = True
) -> tuple[Any, dict, dict, list]:
    """Run ``run()`` with forward hooks on ``paths``: output, first output per path, call counts, order.

    With ``keep_outputs=False`` no output is kept (the returned dict is empty).
    """
    modules = dict(model.named_modules())
    first: dict[str, Any] = {}
    calls: dict[str, int] = {}
    order: list[str] = []
    order_set: set[str] = set()
    handles = []

    def hook_for(path: str):
        def hook(_m, _inp, out):
            calls[path] = calls.get(path, 0) + 1
            if path not in order_set:
                order_set.add(path)
                order.append(path)
                if keep_outputs:
                    ts = tensors(out)
                    first[path] = ts[0].detach().clone() if len(ts) == 1 else None

        return hook

    try:
        for p in paths:
            if p in modules:
                handles.append(modules[p].register_forward_hook(hook_for(p)))
        with torch.no_grad():
            out = run()
    finally:
        for h in handles:
            h.remove()
    return out, first, calls, order


class _Recorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, wanted: set[str]):
        super().__init__(gm)
        self.wanted = wanted
        self.values: dict[str, torch.Tensor] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if n.name in self.wanted and isinstance(out, torch.Tensor):
            self.values[n.name] = out.detach().clone()
        return out


@torch.no_grad()
def node_values(gm: fx.GraphModule, names: set[str], inputs: tuple) -> dict[str, torch.Tensor]:
    """Values of the named fx nodes for one run of ``gm`` on ``inputs``."""
    rec = _Recorder(gm, names)
    rec.run(*inputs)
    return rec.values


def diverging_blocks(
    reference: dict[str, Any],
    order: list[str],
    candidate: dict[str, torch.Tensor],
    boundaries: dict[str, str],
    tol: float,
) -> list[str]:
    """Blocks (in execution order) whose output differs beyond ``tol``; innermost first within a chain."""
    bad = []
    for path in order:
        ref = reference.get(path)
        node = boundaries.get(path)
        if ref is None or node is None or node not in candidate:
            continue
        got = candidate[node]
        if (
            got.shape != ref.shape
            or scale_relative_error(ref.double().cpu().numpy(), got.double().cpu().numpy()) > tol
        ):
            bad.append(path)
    # a block is reported only if none of its children is (the children explain it)
    return [p for p in bad if not any(q != p and q.startswith(p + ".") for q in bad)]
