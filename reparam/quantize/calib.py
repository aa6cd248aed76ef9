"""Calibration data for int8: named float batches checked against the ONNX model's inputs.

Accepted sources: an ``.npz`` with one array per model input (named like the inputs), or, for a
one-input model, the verifier's format (array ``input`` or the file's only array, see
``reparam.verify.inputs``); or batches already in memory (``[{name: array}, ...]``). Every problem
(missing file, wrong name, shape or dtype, no samples) is a ReparamError raised before anything is
quantized.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reparam.errors import ReparamError

Batch = dict[str, np.ndarray]


@dataclass(frozen=True)
class InputSpec:
    """One ONNX graph input: name, dims (int, or None/str for free dims) and numpy dtype."""

    name: str
    dims: tuple[int | str | None, ...]
    dtype: np.dtype

    def describe(self) -> str:
        dims = "x".join(str(d) if isinstance(d, int) else "?" for d in self.dims)
        return f"{self.name} {self.dtype.name}[{dims}]"


def onnx_input_specs(model: Any) -> list[InputSpec]:
    """The graph inputs of an ONNX ModelProto that are not initializers."""
    from onnx import helper

    inits = {i.name for i in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        t = vi.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim)
        specs.append(InputSpec(vi.name, dims, np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type))))
    return specs


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise ReparamError(
            f"calibration file {str(path)!r} does not exist",
            hint="pass `calib` DATA.npz with representative model inputs (samples on axis 0)",
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ReparamError(
            f"cannot read {path.name} as an .npz file ({exc})",
            hint="write it with numpy.savez(path, input=array)",
        ) from exc


def _pick_arrays(arrays: Mapping[str, np.ndarray], specs: Sequence[InputSpec], label: str) -> Batch:
    """The arrays for the model inputs: by input name, or ``input`` / the only array for one input."""
    names = [s.name for s in specs]
    if all(n in arrays for n in names):
        return {n: arrays[n] for n in names}
    if len(specs) == 1:
        key = "input" if "input" in arrays else (next(iter(arrays)) if len(arrays) == 1 else None)
        if key is not None:
            return {names[0]: arrays[key]}
    raise ReparamError(
        f"{label} has arrays {sorted(arrays) or 'none'}, but the model's inputs are {names}",
        hint=f"save one array per input, named like it: np.savez(path, {names[0]}=array)",
    )


def _check_array(name: str, array: np.ndarray, spec: InputSpec, label: str) -> np.ndarray:
    if not np.issubdtype(array.dtype, np.floating) and np.issubdtype(spec.dtype, np.floating):
        raise ReparamError(
            f"calibration array {name!r} in {label} has dtype {array.dtype}, the model input is {spec.dtype}",
            hint="store the inputs exactly as the model receives them (preprocessed, float32)",
        )
    if array.ndim != len(spec.dims) or any(
        isinstance(d, int) and d > 0 and d != s for d, s in zip(spec.dims[1:], array.shape[1:])
    ):
        raise ReparamError(
            f"calibration array {name!r} in {label} has shape {list(array.shape)}, "
            f"which does not fit the input {spec.describe()}",
            hint="samples on axis 0, the other dims as the model input",
        )
    return array.astype(spec.dtype, copy=False)


def split_batches(
    arrays: Mapping[str, np.ndarray], batch_size: int, fixed_batch: int | None = None
) -> list[Batch]:
    """Cut the arrays (samples on axis 0) into batches; a fixed batch dim drops the remainder."""
    if batch_size < 1:
        raise ReparamError(f"batch size must be at least 1 (got {batch_size})", hint="e.g. `batch_size` 8")
    size = fixed_batch or batch_size
    n = len(next(iter(arrays.values())))
    stop = n - n % size if fixed_batch else n
    return [
        {k: np.ascontiguousarray(v[i : i + size]) for k, v in arrays.items()} for i in range(0, stop, size)
    ]


def load_calibration(
    source: str | os.PathLike | Sequence[Mapping[str, np.ndarray]],
    specs: Sequence[InputSpec],
    *,
    batch_size: int = 8,
    max_samples: int | None = None,
) -> list[Batch]:
    """Calibration batches for a model with inputs ``specs``, validated (ReparamError on any problem)."""
    if isinstance(source, str | os.PathLike):
        label = Path(source).name
        raw = _read_npz(Path(source))
        arrays = _pick_arrays(raw, specs, label)
    else:
        label = "the calibration batches"
        batches = list(source)
        if not batches:
            raise ReparamError("the calibration set is empty", hint="give at least one batch of inputs")
        picked = [_pick_arrays({k: np.asarray(v) for k, v in b.items()}, specs, label) for b in batches]
        try:
            arrays = {s.name: np.concatenate([p[s.name] for p in picked]) for s in specs}
        except ValueError as exc:
            raise ReparamError(
                f"the calibration batches do not stack along axis 0 ({exc})",
                hint="give batches of the same per-sample shape",
            ) from exc
    arrays = {s.name: _check_array(s.name, arrays[s.name], s, label) for s in specs}
    counts = {k: int(v.shape[0]) for k, v in arrays.items()}
    if len(set(counts.values())) != 1:
        raise ReparamError(
            f"the calibration arrays have different sample counts {counts}",
            hint="give every input the same number of samples",
        )
    n = next(iter(counts.values()))
    if n == 0:
        raise ReparamError(
            f"{label} holds no samples", hint="give a few hundred representative inputs (at least one)"
        )
    if max_samples is not None:
        arrays = {k: v[:max_samples] for k, v in arrays.items()}
    fixed = specs[0].dims[0] if specs and isinstance(specs[0].dims[0], int) and specs[0].dims[0] > 0 else None
    if fixed and n < fixed:
        raise ReparamError(
            f"{label} holds {n} sample(s), fewer than the model's fixed batch of {fixed}",
            hint="give more samples, or export the model with a dynamic batch",
        )
    return split_batches(arrays, batch_size, fixed)


def make_reader(batches: Sequence[Batch]):
    """An onnxruntime ``CalibrationDataReader`` over ``batches`` (rewindable)."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self) -> Batch | None:
            return next(self._it, None)

        def rewind(self) -> None:
            self._it = iter(batches)

    return _Reader()


def load_labels(path: str | os.PathLike) -> np.ndarray | None:
    """The integer array ``label`` (or ``labels``) of an ``.npz``, or None when it has none."""
    arrays = _read_npz(Path(path))
    for key in ("label", "labels"):
        if key in arrays:
            labels = arrays[key]
            if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
                raise ReparamError(
                    f"array {key!r} in {Path(path).name} has shape {list(labels.shape)} and dtype "
                    f"{labels.dtype}; expected one integer class per sample",
                    hint="store the labels as int64 of shape (N,)",
                )
            return labels
    return None
