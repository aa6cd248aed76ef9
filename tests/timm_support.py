"""Import timm for tests: installed with ``pip install --no-deps timm`` by ``make test``.

timm imports a few torchvision names at import time, and no CPU torchvision loads beside the torch
this project pins; ``tests/_stubs`` holds test-only stand-ins for exactly those names (see its
README). Tests skip with this reason when timm is not installed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

STUBS = Path(__file__).parent / "_stubs"


def import_timm():
    """The timm module, or a pytest skip saying how to install it."""
    try:
        import torchvision  # noqa: F401
    except ImportError:
        sys.path.append(str(STUBS))
    try:
        import timm
    except ImportError as exc:
        pytest.skip(f"timm is not installed ({exc}); `make test` installs it with pip install --no-deps timm")
    return timm
