"""What the installed TensorRT can do, read by name (never by enum integers, which TensorRT 11 renumbered)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from reparam.tensorrt_plan import INSTALL_HINT, import_tensorrt

__all__ = ["INSTALL_HINT", "Capabilities", "capabilities_of", "import_tensorrt"]


def _names(enum: Any) -> frozenset[str]:
    if enum is None:
        return frozenset()
    members = getattr(enum, "__members__", None)
    if isinstance(members, dict):
        return frozenset(members)
    return frozenset(n for n in dir(enum) if n.isupper() and not n.startswith("_"))


@dataclass(frozen=True)
class Capabilities:
    """Feature switches of one TensorRT installation."""

    version: str
    builder_flags: frozenset[str] = field(default_factory=frozenset)
    network_flags: frozenset[str] = field(default_factory=frozenset)
    has_int8_calibrator: bool = False
    has_progress_monitor: bool = False
    has_timing_cache: bool = False
    has_memory_pool_limit: bool = False

    @property
    def major(self) -> int:
        try:
            return int(self.version.split(".")[0])
        except ValueError:
            return 0

    @property
    def has_fp16_flag(self) -> bool:
        return "FP16" in self.builder_flags

    @property
    def has_int8_flag(self) -> bool:
        return "INT8" in self.builder_flags

    @property
    def has_strongly_typed(self) -> bool:
        return "STRONGLY_TYPED" in self.network_flags

    @property
    def always_strongly_typed(self) -> bool:
        """TensorRT 11 builds every network strongly typed: no precision builder flags at all."""
        return not self.has_fp16_flag and not self.has_int8_flag


def capabilities_of(trt: Any) -> Capabilities:
    """Read the capabilities of a ``tensorrt`` module (or any object shaped like one) by name."""
    return Capabilities(
        version=str(getattr(trt, "__version__", "0")),
        builder_flags=_names(getattr(trt, "BuilderFlag", None)),
        network_flags=_names(getattr(trt, "NetworkDefinitionCreationFlag", None)),
        has_int8_calibrator=hasattr(trt, "IInt8EntropyCalibrator2"),
        has_progress_monitor=hasattr(trt, "IProgressMonitor"),
        has_timing_cache=hasattr(getattr(trt, "IBuilderConfig", None), "create_timing_cache")
        or hasattr(trt, "ITimingCache"),
        has_memory_pool_limit=hasattr(trt, "MemoryPoolType"),
    )
