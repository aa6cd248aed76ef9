"""int8 calibration data (TensorRT 10): a ``.npz`` of arrays named like the ONNX inputs."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reparam.errors import ReparamError
from reparam.io import atomic_write_bytes


def load_calibration_batches(
    path: str | os.PathLike, inputs: Mapping[str, Sequence[int | str | None]], batch_size: int
) -> list[dict[str, np.ndarray]]:
    """Split the ``.npz`` at ``path`` into float32 batches of ``batch_size`` samples per input.

    Each array is named like an ONNX input and has samples on axis 0; a trailing partial batch is
    dropped (the calibrator needs one fixed batch size).
    """
    p = Path(path)
    if not p.is_file():
        raise ReparamError(f"calibration file {str(p)!r} does not exist", hint="check the `calib` path")
    if batch_size < 1:
        raise ReparamError(f"calibration batch size must be >= 1, not {batch_size}", hint="use the opt batch")
    try:
        with np.load(p, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (ValueError, OSError) as exc:
        raise ReparamError(
            f"cannot read {p.name} as .npz: {exc}",
            hint="write it with np.savez(path, input=array) (no pickled objects)",
        ) from exc
    missing = [n for n in inputs if n not in arrays]
    if missing:
        raise ReparamError(
            f"{p.name} has no arrays for input(s) {missing} (it has {sorted(arrays)})",
            hint=f"name the arrays like the ONNX inputs: {list(inputs)}",
        )
    counts = {n: arrays[n].shape[0] if arrays[n].ndim else 0 for n in inputs}
    if len(set(counts.values())) != 1:
        raise ReparamError(
            f"the calibration arrays have different sample counts {counts}",
            hint="give every input the same number of samples",
        )
    for name, dims in inputs.items():
        arr = arrays[name]
        if arr.ndim != len(dims) or any(
            isinstance(d, int) and d > 0 and d != s for d, s in zip(list(dims)[1:], arr.shape[1:])
        ):
            raise ReparamError(
                f"calibration array {name!r} has shape {list(arr.shape)}, the input is {list(dims)}",
                hint="samples on axis 0, the other dims as the ONNX input",
            )
    n = next(iter(counts.values()))
    if n < batch_size:
        raise ReparamError(
            f"{p.name} holds {n} sample(s), fewer than one batch of {batch_size}",
            hint="give more samples (a few hundred representative inputs is typical)",
        )
    return [
        {name: np.ascontiguousarray(arrays[name][i : i + batch_size], dtype=np.float32) for name in inputs}
        for i in range(0, n - batch_size + 1, batch_size)
    ]


def make_entropy_calibrator(
    trt: Any, batches: list[dict[str, np.ndarray]], cache_path: str | None = None
) -> Any:
    """An ``IInt8EntropyCalibrator2`` feeding ``batches`` from CUDA memory (torch tensors)."""

    class _Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self._batches = batches
            self._index = 0
            self._device: dict[str, torch.Tensor] = {}

        def get_batch_size(self) -> int:
            return int(next(iter(batches[0].values())).shape[0])

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self._index >= len(self._batches):
                return None
            batch = self._batches[self._index]
            self._index += 1
            ptrs = []
            for name in names:
                self._device[name] = torch.from_numpy(batch[name]).cuda()
                ptrs.append(int(self._device[name].data_ptr()))
            return ptrs

        def read_calibration_cache(self) -> bytes | None:
            if cache_path and os.path.exists(cache_path):
                return Path(cache_path).read_bytes()
            return None

        def write_calibration_cache(self, cache: Any) -> None:
            if cache_path:
                atomic_write_bytes(cache_path, bytes(cache))

    return _Calibrator()
