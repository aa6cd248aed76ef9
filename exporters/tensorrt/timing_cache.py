"""Timing caches keyed by TensorRT version and GPU: a small header in front of TensorRT's own bytes.

TensorRT only combines timing caches within one version, and timings are per GPU, so a cache file
records both and a mismatched one is refused instead of silently ignored.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from reparam.errors import ReparamError
from reparam.io import atomic_write_bytes

MAGIC = b"REPARAM-TRT-TIMING-CACHE 1\n"


def pack_timing_cache(raw: bytes, tensorrt: str, gpu: str) -> bytes:
    """TensorRT's serialized cache with a header line naming the TensorRT version and GPU."""
    header = json.dumps({"tensorrt": tensorrt, "gpu": gpu}, sort_keys=True).encode()
    return MAGIC + header + b"\n" + bytes(raw)


def unpack_timing_cache(data: bytes, tensorrt: str, gpu: str, *, path: str = "timing cache") -> bytes:
    """TensorRT's bytes from a packed cache; a ReparamError when it was made elsewhere."""
    if not data.startswith(MAGIC):
        raise ReparamError(
            f"{path} was not written by reparam, so its TensorRT version and GPU are unknown",
            hint="delete it (reparam writes a fresh one) or pass another `timing_cache` path",
        )
    line, sep, raw = data[len(MAGIC) :].partition(b"\n")
    try:
        header = json.loads(line)
    except json.JSONDecodeError:
        header = None
    if not sep or not isinstance(header, dict):
        raise ReparamError(
            f"{path} has a damaged header", hint="delete it; the next build writes a fresh one"
        )
    if header.get("tensorrt") != tensorrt or header.get("gpu") != gpu:
        raise ReparamError(
            f"{path} was made with TensorRT {header.get('tensorrt')} on {header.get('gpu')}, this build uses "
            f"TensorRT {tensorrt} on {gpu}",
            hint="timing caches only combine within one TensorRT version and GPU: use one cache file per pair, "
            f"e.g. `timing_cache` {default_cache_name(tensorrt, gpu)}",
        )
    return raw


def default_cache_name(tensorrt: str, gpu: str) -> str:
    """A file name that keeps caches of different TensorRT versions and GPUs apart."""
    safe = "".join(c if c.isalnum() or c in ".-" else "-" for c in gpu).strip("-")
    return f"timing-trt{tensorrt}-{safe}.cache"


def load_timing_cache(path: str | os.PathLike, tensorrt: str, gpu: str) -> bytes | None:
    """TensorRT's cache bytes from ``path``; None when the file does not exist yet."""
    p = Path(path)
    if not p.exists():
        return None
    return unpack_timing_cache(p.read_bytes(), tensorrt, gpu, path=str(p))


def save_timing_cache(path: str | os.PathLike, raw: bytes, tensorrt: str, gpu: str) -> None:
    """Write the packed cache atomically."""
    atomic_write_bytes(path, pack_timing_cache(raw, tensorrt, gpu))
