"""ONNX Runtime session settings by name, for everything that opens a session (runners, block reads)."""

from __future__ import annotations

from typing import Any

OPTIMIZATION_LEVELS = ("all", "extended", "basic", "disable")


def optimization_level(ort: Any, optimization: str) -> Any:
    """ONNX Runtime's graph optimization level for "all", "extended", "basic" or "disable"."""
    return {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }[optimization]
