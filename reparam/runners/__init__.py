"""Runners: one artifact kind each, named numpy arrays in, named numpy arrays out.

``TorchRunner`` (nn.Module, torch.export program or ``.pt2``), ``OnnxRuntimeRunner`` (``.onnx``),
``TensorRTRunner`` (engine file). ``runner_for`` picks one by object type or file suffix.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from reparam.errors import ReparamError
from reparam.runners.base import Runner, TensorSpec, output_names_for
from reparam.runners.onnxruntime_runner import OPTIMIZATION_LEVELS, OnnxRuntimeRunner
from reparam.runners.tensorrt_runner import TensorRTRunner
from reparam.runners.torch_runner import TorchRunner

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")

__all__ = [
    "ENGINE_SUFFIXES",
    "OPTIMIZATION_LEVELS",
    "OnnxRuntimeRunner",
    "Runner",
    "TensorRTRunner",
    "TensorSpec",
    "TorchRunner",
    "output_names_for",
    "runner_for",
]


def runner_for(obj: Any, **kwargs: Any) -> Runner:
    """A runner for a module / ExportedProgram, or for a ``.pt2`` / ``.onnx`` / engine path.

    ``kwargs`` go to the runner (e.g. ``optimization``/``threads`` for ONNX Runtime).
    """
    import torch

    if isinstance(obj, Runner):
        return obj
    if isinstance(obj, torch.nn.Module | torch.export.ExportedProgram):
        return TorchRunner(obj, **kwargs)
    if isinstance(obj, str | os.PathLike):
        suffix = Path(obj).suffix.lower()
        if suffix == ".pt2":
            return TorchRunner(obj, **kwargs)
        if suffix == ".onnx":
            return OnnxRuntimeRunner(obj, **kwargs)
        if suffix in ENGINE_SUFFIXES:
            return TensorRTRunner(obj, **kwargs)
        raise ReparamError(
            f"cannot tell which runner fits {Path(obj).name} (suffix {suffix!r})",
            hint=f"use .pt2, .onnx or one of {', '.join(ENGINE_SUFFIXES)}",
        )
    raise ReparamError(
        f"no runner for an object of type {type(obj).__name__}",
        hint="pass an nn.Module, an ExportedProgram or a .pt2/.onnx/engine path",
    )
