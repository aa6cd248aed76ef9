"""A serialized TensorRT engine (plan) as a file: importing TensorRT, what its header and sidecar say.

Shared by the runner that loads engines and the exporter that builds them; needs no GPU.

The plan format is not documented. What is confirmed publicly: the plan starts with a header whose
magic tag the runtime checks (``plan->header.magicTag == rt::kPLAN_MAGIC_TAG`` in its errors), and
an NVIDIA engineer pointed out that the TensorRT version is encoded in the first bytes; the one
offset we found confirmed in use is the major version at byte 24 (NVIDIA/TensorRT#3073, used by
autoware_universe#10320). The minor/patch offsets and the magic tag's value could not be confirmed
from NVIDIA's sources, so they are not decoded: the raw leading bytes are reported instead.
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from reparam.errors import ReparamError

INSTALL_HINT = (
    "pip install 'reparam[trt]' -- the TensorRT wheels come from NVIDIA's index "
    "(`pip install --extra-index-url https://pypi.nvidia.com tensorrt`) and need an NVIDIA GPU "
    "with a CUDA driver; see docs/export.md"
)


def import_tensorrt() -> ModuleType:
    """``import tensorrt``, or a ReparamError saying how to install it."""
    try:
        return importlib.import_module("tensorrt")
    except ImportError as exc:
        raise ReparamError(
            f"TensorRT is not installed ({exc}); building or running engines needs it", hint=INSTALL_HINT
        ) from exc


HEADER_BYTES = 32
MAJOR_OFFSET = 24
# TensorRT majors this offset has been reported for; a value outside is reported as unknown.
PLAUSIBLE_MAJORS = range(8, 20)


@dataclass(frozen=True)
class PlanHeader:
    """Fields read from a plan file's first bytes."""

    size: int
    leading_bytes: str  # hex of the first HEADER_BYTES bytes
    tensorrt_major: int | None
    note: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_plan_header(data: bytes) -> PlanHeader:
    """Parse the start of a plan (at least ``HEADER_BYTES`` bytes of it)."""
    if len(data) < HEADER_BYTES:
        raise ReparamError(
            f"{len(data)} bytes is too short for a TensorRT engine (the header alone is {HEADER_BYTES})",
            hint="the file is truncated or not a TensorRT engine",
        )
    major = data[MAJOR_OFFSET]
    known = major in PLAUSIBLE_MAJORS
    note = (
        (
            "TensorRT major version read from byte 24; minor/patch are not decoded (their offsets are "
            "undocumented)"
        )
        if known
        else (
            f"byte {MAJOR_OFFSET} holds {major}, not a known TensorRT major: "
            "the layout differs or this is not a TensorRT engine"
        )
    )
    return PlanHeader(
        size=len(data),
        leading_bytes=data[:HEADER_BYTES].hex(),
        tensorrt_major=major if known else None,
        note=note,
    )


def read_plan_header(path: str | os.PathLike) -> PlanHeader:
    """``parse_plan_header`` of the file at ``path`` (only its first bytes are read)."""
    p = Path(path)
    if not p.is_file():
        raise ReparamError(f"engine file {str(p)!r} does not exist", hint="check the path")
    with open(p, "rb") as f:
        head = f.read(HEADER_BYTES)
    header = parse_plan_header(head)
    return PlanHeader(
        size=p.stat().st_size,
        leading_bytes=header.leading_bytes,
        tensorrt_major=header.tensorrt_major,
        note=header.note,
    )


def engine_sidecar_path(path: str | os.PathLike) -> Path:
    """``<engine>.json``: the provenance written next to an engine by ``build_engine``."""
    p = Path(path)
    return p.with_name(p.name + ".json")


def read_engine_sidecar(path: str | os.PathLike) -> dict[str, Any] | None:
    """The engine's JSON sidecar, or None when there is none."""
    side = engine_sidecar_path(path)
    if not side.is_file():
        return None
    try:
        return json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReparamError(
            f"{side.name} is not valid JSON ({exc})", hint="rebuild the engine to rewrite it"
        ) from exc


def check_engine_version(path: str | os.PathLike, runtime_version: str) -> str | None:
    """A sentence explaining a version mismatch between the engine and the runtime, or None."""
    notes = []
    side = read_engine_sidecar(path) or {}
    built = side.get("tensorrt")
    if built and built != runtime_version:
        notes.append(f"the engine was built with TensorRT {built}, this is TensorRT {runtime_version}")
    else:
        try:
            header = read_plan_header(path)
        except ReparamError:
            return None
        runtime_major = runtime_version.split(".")[0]
        if header.tensorrt_major is not None and str(header.tensorrt_major) != runtime_major:
            notes.append(
                f"the engine header says TensorRT {header.tensorrt_major}.x, this is TensorRT "
                f"{runtime_version}"
            )
    return "; ".join(notes) or None
