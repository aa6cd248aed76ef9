"""TensorRTRunner: a serialized TensorRT engine, with CUDA buffers held by torch."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reparam.errors import ReparamError
from reparam.runners.base import Runner, TensorSpec
from reparam.tensorrt_plan import check_engine_version, import_tensorrt


class TensorRTRunner(Runner):
    """Run an engine file: named I/O tensors, input shapes set within the engine's profile 0.

    Inputs are copied to CUDA (torch tensors), outputs allocated from the context's resolved shapes,
    then ``execute_async_v3`` runs on torch's current CUDA stream.
    """

    def __init__(self, engine_path: str | os.PathLike):
        self.path = str(engine_path)
        if not Path(engine_path).is_file():
            raise ReparamError(
                f"engine file {self.path!r} does not exist", hint="build it with `reparam export trt`"
            )
        trt = import_tensorrt()

        if not torch.cuda.is_available():
            raise ReparamError(
                "no CUDA device is visible; TensorRT engines run only on NVIDIA GPUs",
                hint="run on the machine (GPU model and TensorRT version) the engine was built for",
            )
        self._trt = trt
        self._torch = torch
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            why = check_engine_version(engine_path, trt.__version__)
            raise ReparamError(
                f"TensorRT {trt.__version__} could not load {Path(engine_path).name}"
                + (f": {why}" if why else ""),
                hint="engines only load on the TensorRT version and GPU they were built with: "
                "rebuild it here with `reparam export trt`",
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        self._dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.input_specs = [
            TensorSpec(
                n, tuple(d if d >= 0 else None for d in self.engine.get_tensor_shape(n)), self._dtypes[n]
            )
            for n in self.input_names
        ]
        self.profiles = {}
        for n in self.input_names:
            if any(d is None for d in next(s for s in self.input_specs if s.name == n).shape):
                lo, opt, hi = self.engine.get_tensor_profile_shape(n, 0)
                self.profiles[n] = (tuple(lo), tuple(opt), tuple(hi))

    def label(self) -> str:
        return f"TensorRTRunner({Path(self.path).name})"

    def _torch_dtype(self, dtype: np.dtype) -> Any:
        return self._torch.from_numpy(np.empty(0, dtype=dtype)).dtype

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        arrays = self.validate(inputs)
        keep = []
        for name in self.input_names:
            value = arrays[name]
            if name in self.profiles:
                lo, _, hi = self.profiles[name]
                if len(value.shape) != len(lo) or any(
                    not a <= s <= b for a, s, b in zip(lo, value.shape, hi)
                ):
                    raise ReparamError(
                        f"input {name!r} shape {list(value.shape)} is outside the engine's profile "
                        f"(min {list(lo)}, max {list(hi)})",
                        hint="rebuild with `min_shape`/`max_shape` covering it",
                    )
            if not self.context.set_input_shape(name, tuple(value.shape)):
                raise ReparamError(
                    f"TensorRT refused shape {list(value.shape)} for input {name!r}",
                    hint=f"expected inputs: {self.expected()}",
                )
            t = torch.from_numpy(np.ascontiguousarray(value)).cuda()
            keep.append(t)
            self.context.set_tensor_address(name, int(t.data_ptr()))
        outputs = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            t = torch.empty(shape, dtype=self._torch_dtype(self._dtypes[name]), device="cuda")
            outputs[name] = t
            self.context.set_tensor_address(name, int(t.data_ptr()))
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise ReparamError(
                f"TensorRT failed to run {Path(self.path).name}",
                hint="see TensorRT's log above; the engine may need more GPU memory",
            )
        stream.synchronize()
        return {n: t.cpu().numpy() for n, t in outputs.items()}
