"""Give memory a finished stage freed back to the operating system."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (macOS, musl, Windows)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory(collect: bool = True) -> None:
    """Collect cycles (unless ``collect`` is False: nothing freed waits in one), then hand the
    heap's free pages back: glibc keeps them after large frees, so the next stage would otherwise
    start from the last one's peak."""
    if collect:
        gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
