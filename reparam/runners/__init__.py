"""Runners: one artifact kind each, named numpy arrays in, named numpy arrays out.

``TorchRunner`` (nn.Module, torch.export program or ``.pt2``), ``OnnxRuntimeRunner`` (``.onnx``),
``TensorRTRunner`` (engine file). ``runner_for`` picks one by object type or file suffix.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from reparam.errors import ReparamError
from reparam.runners.base import Runner, TensorSpec
from reparam.runners.onnxruntime_runner import OPTIMIZATION_LEVELS, OnnxRuntimeRunner
from reparam.runners.tensorrt_runner import TensorRTRunner
from reparam.runners.torch_runner import TorchRunner

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
SUFFIX_KINDS = {".pt2": "pt2", ".onnx": "onnx", **dict.fromkeys(ENGINE_SUFFIXES, "tensorrt")}

__all__ = [
    "ENGINE_SUFFIXES",
    "OPTIMIZATION_LEVELS",
    "OnnxRuntimeRunner",
    "Runner",
    "TensorRTRunner",
    "TensorSpec",
    "TorchRunner",
    "artifact_kind",
    "runner_for",
]


def artifact_kind(path: str | os.PathLike) -> str:
    """ "pt2", "onnx" or "tensorrt" by file suffix; a ReparamError for any other suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIX_KINDS:
        raise ReparamError(
            f"cannot tell what kind of artifact {Path(path).name} is from its suffix {suffix!r}",
            hint=f"use .pt2 for a deploy artifact, .onnx for ONNX, or one of {', '.join(ENGINE_SUFFIXES)} "
            "for a TensorRT engine",
        )
    return SUFFIX_KINDS[suffix]


def runner_for(obj: Any, **kwargs: Any) -> Runner:
    """A runner for a module / ExportedProgram, or for a ``.pt2`` / ``.onnx`` / engine path.

    ``kwargs`` go to the runner (e.g. ``optimization``/``threads`` for ONNX Runtime).
    """

    if isinstance(obj, Runner):
        return obj
    if isinstance(obj, torch.nn.Module | torch.export.ExportedProgram):
        return TorchRunner(obj, **kwargs)
    if isinstance(obj, str | os.PathLike):
        runner = {"pt2": TorchRunner, "onnx": OnnxRuntimeRunner, "tensorrt": TensorRTRunner}[
            artifact_kind(obj)
        ]
        return runner(obj, **kwargs)
    raise ReparamError(
        f"no runner for an object of type {type(obj).__name__}",
        hint="pass an nn.Module, an ExportedProgram or a .pt2/.onnx/engine path",
    )
