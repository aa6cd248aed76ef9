"""Pass interface, registry and the context shared by the passes of one conversion."""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, fx, nn

from reparam.engine.graph import ALIASES, common_parent
from reparam.engine.record import FusionEntry
from reparam.engine.rowwise import magnitude
from reparam.errors import ReparamError

FP16_MAX = 65504.0


@dataclass
class PassResult:
    """What one run of a pass did: the (possibly new) module, whether it changed, what it fused."""

    module: fx.GraphModule
    changed: bool
    fused: list[FusionEntry] = field(default_factory=list)


@dataclass(frozen=True)
class LeftAlone:
    """A pattern a pass recognised but did not rewrite, and why."""

    pass_name: str
    where: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"pass": self.pass_name, "where": self.where, "reason": self.reason}


@runtime_checkable
class Pass(Protocol):
    """A graph rewrite: ``run(gm, ctx)`` returns a PassResult; it must keep the graph's outputs exact."""

    name: str
    description: str

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult: ...


_REGISTRY: dict[str, Pass] = {}


def register_pass(p: Any) -> Any:
    """Register a pass (an instance, or a class that is instantiated without arguments); returns ``p``.

    Usable as a class decorator. Passes run in registration order unless the caller picks others.
    """
    instance = p() if isinstance(p, type) else p
    if not isinstance(instance, Pass):
        raise TypeError(f"{p!r} is not a pass (needs name, description and run(gm, ctx))")
    if instance.name in _REGISTRY:
        raise ValueError(f"a pass named {instance.name!r} is already registered")
    _REGISTRY[instance.name] = instance
    return p


_DEFAULT_ORDER: list[str] = []


def set_default_order(names: Iterable[str]) -> None:
    """The order registered passes run in by default (``reparam.engine.passes`` sets the built-in one)."""
    _DEFAULT_ORDER[:] = list(names)


def available_passes() -> list[str]:
    """Names of the registered passes in their default order (the built-in ones are registered when
    ``reparam.engine`` is imported)."""
    return [*_DEFAULT_ORDER, *(n for n in _REGISTRY if n not in _DEFAULT_ORDER)]


def get_pass(name: str) -> Pass:
    """The registered pass called ``name``, or a ReparamError listing the available ones."""
    names = available_passes()
    if name not in _REGISTRY:
        raise ReparamError(f"unknown pass {name!r}", hint=f"available passes: {', '.join(names)}")
    return _REGISTRY[name]


def select_passes(passes: Iterable[str | Pass] | str | None, skip: Iterable[str] = ()) -> list[Pass]:
    """Resolve the ``passes``/``skip`` arguments of the engine into pass objects, in the order given.

    ``passes`` may name registered passes or be pass objects of the caller's own (anything with
    ``name``, ``description`` and ``run(gm, ctx)``); None means the default order.
    """
    if isinstance(passes, str):
        passes = [p.strip() for p in passes.split(",") if p.strip()]
    chosen = list(passes) if passes is not None else available_passes()
    skip = [skip] if isinstance(skip, str) else list(skip)
    for name in skip:
        get_pass(name)
    resolved = []
    for p in chosen:
        if isinstance(p, str):
            resolved.append(get_pass(p))
        elif isinstance(p, Pass):
            resolved.append(p)
        else:
            raise ReparamError(
                f"{p!r} is not a pass",
                hint="give pass names or objects with name, description and run(gm, ctx)",
            )
    return [p for p in resolved if p.name not in skip]


@dataclass
class PassContext:
    """State shared by the passes of one conversion.

    ``provenance`` maps a module name of the graph being rewritten to the original module names
    whose computation it performs; ``prefix`` is the graph's path inside the whole model (non-empty
    when a submodule is converted on its own).
    """

    example_inputs: tuple | None = None
    prefix: str = ""
    provenance: dict[str, set[str]] = field(default_factory=dict)
    left_alone: list[LeftAlone] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    history: list[FusionEntry] = field(default_factory=list)
    # weak: an intermediate product (a folded branch conv, merged later) must be freed once replaced
    products: dict[str, tuple[FusionEntry, weakref.ref[nn.Module]]] = field(default_factory=dict)
    current_pass: str = ""
    current_block: str = ""
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per pass, cleanup included

    def full(self, name: str) -> str:
        """Path of a graph-local module name inside the whole model."""
        if not self.prefix:
            return name
        return f"{self.prefix}.{name}" if name else self.prefix

    def local(self, path: str) -> str:
        """Graph-local name of a model path ("" when it is not strictly inside this graph)."""
        if not self.prefix:
            return path
        return path[len(self.prefix) + 1 :] if path.startswith(self.prefix + ".") else ""

    def parent_of_sources(self, names: list[str]) -> str:
        """Graph-local common parent of the original modules behind the graph modules ``names``."""
        sources: set[str] = set()
        for n in names:
            sources |= self.sources(n)
        return self.local(common_parent(sorted(sources)))

    def adopt_aliases(self, gm: fx.GraphModule) -> None:
        """Report modules that tracing re-registered under safe names by their original paths."""
        for alias, original in getattr(gm, ALIASES, {}).items():
            self.provenance[alias] = {self.full(original)}

    def sources(self, name: str) -> set[str]:
        return set(self.provenance.get(name, {self.full(name)}))

    def leave(self, where: str, reason: str) -> None:
        """Report a pattern left alone (once per pass, place and reason)."""
        item = LeftAlone(self.current_pass, self.full(where) if where else self.prefix or "<model>", reason)
        if item not in self.left_alone:
            self.left_alone.append(item)

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)
            warnings.warn(message, stacklevel=3)

    def record(
        self,
        name: str,
        module: nn.Module,
        inputs: Iterable[str],
        detail: str,
        extra_sources: Iterable[str] = (),
    ) -> FusionEntry:
        """Note that module ``name`` now computes what the modules ``inputs`` (graph names) computed."""
        sources: set[str] = set(extra_sources)
        for n in inputs:
            sources |= self.sources(n)
        self.provenance[name] = sources
        entry = FusionEntry(self.current_pass, self.full(name), sorted(sources), detail)
        self.history.append(entry)
        self.products[entry.fused] = (entry, weakref.ref(module))
        return entry

    @torch.no_grad()
    def parameter(self, value: Tensor, like: Tensor, what: str, cast: Tensor | None = None) -> nn.Parameter:
        """Cast a float64 result to ``like``'s dtype/device as a Parameter; warn on float16 overflow.

        Raises NotRepresentable when the value is not finite in ``like``'s dtype (a fold that
        overflows): the pass then leaves the pattern alone. ``cast``, when given, is ``value``
        already rounded to that dtype (computed block by block, see :mod:`reparam.engine.rowwise`);
        ``value`` may then be a function computing the float64 value, called only for a message.
        """
        if cast is None:
            cast = value.to(dtype=like.dtype, device=like.device)
        # one reduction of the cast values decides the common case; the float64 peak is read only
        # near a limit, so every decision is the one the float64 values give
        peak = magnitude(cast)
        if not peak < min(FP16_MAX, torch.finfo(like.dtype).max):
            exact = value() if callable(value) else value
            peak = magnitude(exact)
        if not peak <= torch.finfo(like.dtype).max:
            raise NotRepresentable(
                f"the fused {what} is not finite in {str(like.dtype).removeprefix('torch.')} "
                f"(largest magnitude {peak:.3g}); the original layers stay"
            )
        if peak > FP16_MAX:
            where = self.current_block or what
            if like.dtype == torch.float16:
                msg = f"fused {what} at {where} reaches {peak:.4g}, beyond float16 range: it becomes inf"
            else:
                msg = (
                    f"fused {what} at {where} reaches {peak:.4g}, beyond float16 range (65504): an FP16 "
                    "export of this model would overflow"
                )
            self.warn(msg)
        return nn.Parameter(cast, requires_grad=like.requires_grad)


class NotRepresentable(ValueError):
    """A fused value overflows the model's dtype; the pass must leave the pattern alone."""


class PassError(ReparamError):
    """A pass failed; names the pass and the block (module path) it was working on."""

    def __init__(self, pass_name: str, block: str, message: str, hint: str | None = None):
        where = f" at block {block!r}" if block else ""
        super().__init__(f"pass {pass_name!r} failed{where}: {message}", hint)
        self.pass_name = pass_name
        self.block = block
