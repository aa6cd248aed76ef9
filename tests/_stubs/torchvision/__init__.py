"""Test-only stand-in for the few torchvision names timm imports (see tests/_stubs/README.md)."""

__version__ = "0.0.0+stub"
