"""OnnxRuntimeRunner: an ONNX file on ONNX Runtime's CPU provider."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from reparam.errors import ReparamError, require
from reparam.onnxruntime_options import OPTIMIZATION_LEVELS, optimization_level
from reparam.runners.base import Runner, TensorSpec

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


class OnnxRuntimeRunner(Runner):
    """Run an ONNX file with ONNX Runtime.

    ``optimization``: graph optimization level ("all", "extended", "basic", "disable");
    ``threads``: intra-op threads (None: ONNX Runtime's default); ``providers`` defaults to CPU;
    ``config``: extra session config entries, e.g. ``{"session.intra_op.allow_spinning": "0"}``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        optimization: str = "all",
        threads: int | None = None,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        config: Mapping[str, str] | None = None,
    ):
        ort = require("onnxruntime", "onnx", "Running an ONNX model")
        if optimization not in OPTIMIZATION_LEVELS:
            raise ReparamError(
                f"unknown ONNX Runtime optimization level {optimization!r}",
                hint=f"use one of {', '.join(OPTIMIZATION_LEVELS)}",
            )
        if threads is not None and int(threads) < 1:
            raise ReparamError(
                f"threads must be at least 1, not {threads}", hint="leave it unset for the default"
            )
        self.path = str(path)
        if not Path(path).is_file():
            raise ReparamError(f"ONNX file {self.path!r} does not exist", hint="check the path")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = optimization_level(ort, optimization)
        opts.log_severity_level = 3
        if threads is not None:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        for key, value in (config or {}).items():
            opts.add_session_config_entry(key, value)
        try:
            self.session = ort.InferenceSession(self.path, opts, providers=list(providers))
        except Exception as exc:
            raise ReparamError(
                f"ONNX Runtime cannot load {Path(path).name}: {type(exc).__name__}: "
                f"{str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}",
                hint="check the file with `reparam inspect`; it may be truncated or use an "
                "operator this ONNX Runtime lacks",
            ) from exc
        self.optimization = optimization
        self.threads = threads
        self.input_specs = [
            TensorSpec(
                i.name,
                tuple(d if isinstance(d, int) else (d or None) for d in i.shape),
                np.dtype(_ORT_TYPES[i.type]) if i.type in _ORT_TYPES else None,
            )
            for i in self.session.get_inputs()
        ]
        self.input_names = [s.name for s in self.input_specs]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def label(self) -> str:
        return f"OnnxRuntimeRunner({Path(self.path).name})"

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = self.validate(inputs)
        outs = self.session.run(self.output_names, feeds)
        return dict(zip(self.output_names, (np.asarray(o) for o in outs)))
