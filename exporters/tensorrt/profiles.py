"""Optimization profiles (min/opt/max shapes per input), derived from the ONNX's dynamic dims when not given."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from reparam.errors import ReparamError, require

DEFAULT_MAX_BATCH = 32
Dims = Sequence[int | str | None]  # ONNX dims: ints, or names / None / -1 for dynamic


@dataclass(frozen=True)
class Profile:
    """Shapes for one input: every dim satisfies min <= opt <= max."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    def contains(self, shape: Sequence[int]) -> bool:
        return len(shape) == len(self.min) and all(
            lo <= s <= hi for lo, s, hi in zip(self.min, shape, self.max)
        )


def _dynamic(d: int | str | None) -> bool:
    return d is None or isinstance(d, str) or int(d) < 0


def onnx_input_dims(path: str | os.PathLike) -> dict[str, list[int | str | None]]:
    """``{input name: dims}`` of an ONNX file (dynamic dims as their name, or None)."""
    onnx = require("onnx", "onnx", "Reading ONNX inputs")
    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    out: dict[str, list[int | str | None]] = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims: list[int | str | None] = []
        for d in vi.type.tensor_type.shape.dim:
            dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
        out[vi.name] = dims
    return out


def _per_input(
    value: Sequence[int] | Mapping[str, Sequence[int]] | None, names: list[str], what: str
) -> dict[str, tuple[int, ...]]:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        unknown = [k for k in value if k not in names]
        if unknown:
            raise ReparamError(
                f"{what} names unknown input(s) {unknown}", hint=f"the ONNX inputs are {names}"
            )
        return {k: tuple(int(d) for d in v) for k, v in value.items()}
    if len(names) != 1:
        raise ReparamError(
            f"the ONNX has {len(names)} inputs; a single {what} is ambiguous",
            hint="give shapes per input name",
        )
    return {names[0]: tuple(int(d) for d in value)}


def _check_fits(name: str, dims: Dims, shape: tuple[int, ...], what: str) -> None:
    if len(shape) != len(dims):
        raise ReparamError(
            f"{what} {list(shape)} for input {name!r} has rank {len(shape)}, the ONNX input has "
            f"rank {len(dims)} ({list(dims)})",
            hint="give one size per dim, e.g. 1x3x224x224",
        )
    for i, (d, s) in enumerate(zip(dims, shape)):
        if s <= 0:
            raise ReparamError(
                f"{what} {list(shape)} for {name!r} has a non-positive dim", hint="sizes must be >= 1"
            )
        if not _dynamic(d) and int(d) != s:
            raise ReparamError(
                f"{what} {list(shape)} for {name!r} changes dim {i}, which the ONNX fixes at {d}",
                hint=f"only the dynamic dims ({[j for j, x in enumerate(dims) if _dynamic(x)]}) "
                "can vary; re-export with dynamic axes to change others",
            )


def derive_profiles(
    inputs: Mapping[str, Dims],
    *,
    input_shape: Sequence[int] | Mapping[str, Sequence[int]] | None = None,
    min_shape: Sequence[int] | Mapping[str, Sequence[int]] | None = None,
    opt_shape: Sequence[int] | Mapping[str, Sequence[int]] | None = None,
    max_shape: Sequence[int] | Mapping[str, Sequence[int]] | None = None,
    max_batch: int | None = None,
) -> dict[str, Profile]:
    """min/opt/max shapes for every input that has a dynamic dim (static inputs need no profile).

    Explicit ``min_shape``/``opt_shape``/``max_shape`` win. Otherwise only a dynamic batch (dim 0)
    is derived: min batch 1, opt batch = ``input_shape``'s batch (1 when not given), max batch =
    ``max_batch`` (default max(opt, 32)). Other dynamic dims come from ``input_shape`` (fixed
    min = opt = max) or must be given explicitly.
    """
    names = list(inputs)
    given = {
        k: _per_input(v, names, w)
        for k, v, w in (
            ("min", min_shape, "`min_shape`"),
            ("opt", opt_shape, "`opt_shape`"),
            ("max", max_shape, "`max_shape`"),
            ("hint", input_shape, "input shape"),
        )
    }
    if max_batch is not None and int(max_batch) < 1:
        raise ReparamError(f"max batch must be >= 1, not {max_batch}", hint="e.g. `max_batch` 32")
    profiles: dict[str, Profile] = {}
    for name, dims in inputs.items():
        dims = list(dims)
        dynamic = [i for i, d in enumerate(dims) if _dynamic(d)]
        explicit = {k: given[k].get(name) for k in ("min", "opt", "max")}
        for k, shape in explicit.items():
            if shape is not None:
                _check_fits(name, dims, shape, f"--{k}-shape")
        hint = given["hint"].get(name)
        if hint is not None:
            _check_fits(name, dims, hint, "input shape")
        if not dynamic:
            continue
        if all(v is not None for v in explicit.values()):
            lo, opt, hi = explicit["min"], explicit["opt"], explicit["max"]
        elif any(v is not None for v in explicit.values()):
            base = explicit["opt"] or hint or explicit["min"] or explicit["max"]
            lo = explicit["min"] or base
            opt = explicit["opt"] or base
            hi = explicit["max"] or base
        else:
            rest = [i for i in dynamic if i != 0]
            if rest and hint is None:
                raise ReparamError(
                    f"input {name!r} has dynamic dims {rest} besides the batch",
                    hint="give `input_shape`, or `min_shape`/`opt_shape`/`max_shape`",
                )
            template = list(hint) if hint is not None else [1 if _dynamic(d) else int(d) for d in dims]
            if 0 in dynamic:
                opt_b = template[0]
                hi_b = int(max_batch) if max_batch is not None else max(opt_b, DEFAULT_MAX_BATCH)
                if hi_b < opt_b:
                    raise ReparamError(
                        f"max batch {hi_b} is below the batch {opt_b} of the input shape",
                        hint="raise `max_batch` or lower the input shape's batch",
                    )
                lo = tuple([1, *template[1:]])
                opt = tuple(template)
                hi = tuple([hi_b, *template[1:]])
            else:
                lo = opt = hi = tuple(template)
        if not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
            raise ReparamError(
                f"profile for {name!r} is not ordered: min {list(lo)}, opt {list(opt)}, max {list(hi)}",
                hint="every dim needs min <= opt <= max",
            )
        profiles[name] = Profile(tuple(lo), tuple(opt), tuple(hi))
    return profiles
