"""Model registry: ``@register_model`` adds a factory; ``create_model`` builds one by name."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from torch import nn

from reparam.errors import ReparamError

Factory = TypeVar("Factory", bound=Callable[..., nn.Module])


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its factory and what to tell users about it."""

    name: str
    factory: Callable[..., nn.Module]
    description: str
    paper: str
    counterpart: str | None = None

    def default_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the factory with their defaults."""
        params = inspect.signature(self.factory).parameters.values()
        return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


_REGISTRY: dict[str, ModelEntry] = {}


@overload
def register_model(fn: Factory) -> Factory: ...


@overload
def register_model(
    fn: None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    paper: str = "",
    counterpart: str | None = None,
) -> Callable[[Factory], Factory]: ...


def register_model(
    fn=None,
    *,
    name: str | None = None,
    description: str | None = None,
    paper: str = "",
    counterpart: str | None = None,
):
    """Register a model factory under ``name`` (default: the function's name).

    ``description`` defaults to the first line of the docstring; ``counterpart`` names the plain
    model whose layer shapes the fused form of this one matches.
    """

    def wrap(factory: Factory) -> Factory:
        key = name or factory.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is already registered")
        doc = (factory.__doc__ or "").strip().splitlines()
        _REGISTRY[key] = ModelEntry(
            name=key,
            factory=factory,
            description=description or (doc[0] if doc else ""),
            paper=paper,
            counterpart=counterpart,
        )
        return factory

    return wrap(fn) if fn is not None else wrap


def _entry(name: str) -> ModelEntry:
    if name in _REGISTRY:
        return _REGISTRY[name]
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ReparamError(
        f"unknown model {name!r}",
        hint=f"{hint}run `reparam zoo` for the list: {', '.join(sorted(_REGISTRY))}",
    )


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_REGISTRY)


def model_info(name: str) -> dict[str, Any]:
    """Description, paper, default keyword arguments and plain counterpart of a registered model."""
    entry = _entry(name)
    return {
        "name": entry.name,
        "description": entry.description,
        "paper": entry.paper,
        "default_kwargs": entry.default_kwargs(),
        "counterpart": entry.counterpart,
    }


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model; unknown names or keyword arguments raise a ReparamError."""
    entry = _entry(name)
    params = inspect.signature(entry.factory).parameters
    unknown = sorted(k for k in kwargs if k not in params)
    if unknown:
        raise ReparamError(
            f"model {name!r} does not take {', '.join(map(repr, unknown))}",
            hint=f"its keyword arguments are: {', '.join(params)}",
        )
    for key in ("num_classes", "in_chans"):
        if key in kwargs and (
            not isinstance(kwargs[key], int) or isinstance(kwargs[key], bool) or kwargs[key] < 1
        ):
            raise ReparamError(f"{key} must be a positive int, got {kwargs[key]!r}", hint=f"e.g. {key}=10")
    if "width" in kwargs and (not isinstance(kwargs["width"], int | float) or kwargs["width"] <= 0):
        raise ReparamError(
            f"width must be a positive number, got {kwargs['width']!r}", hint="e.g. width=0.25"
        )
    return entry.factory(**kwargs)
