"""The rewrite record: which deploy module came from which original modules, and block boundaries."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from reparam.equivalence.boundaries import Boundaries


@dataclass
class FusionEntry:
    """One fused module of the deploy model.

    ``fused`` is the module's name in the deploy model; ``sources`` are the module names in the
    original model whose computation it now performs.
    """

    pass_name: str
    fused: str
    sources: list[str]
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "pass_name": self.pass_name,
            "fused": self.fused,
            "sources": list(self.sources),
            "detail": self.detail,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FusionEntry:
        return cls(
            str(data["pass_name"]),
            str(data["fused"]),
            [str(s) for s in data.get("sources", [])],
            str(data.get("detail", "")),
        )


@dataclass
class RewriteRecord:
    """Fusions performed by the engine, and where each original block's output lives in the deploy model."""

    entries: list[FusionEntry] = field(default_factory=list)
    boundaries: Boundaries = field(default_factory=Boundaries)

    def sources_of(self, fused: str) -> list[str]:
        """Original module names that went into the deploy module ``fused`` ([] if it was not fused)."""
        for entry in self.entries:
            if entry.fused == fused:
                return list(entry.sources)
        return []

    def pass_names(self) -> list[str]:
        """The passes that produced the fused modules, sorted."""
        return sorted({e.pass_name for e in self.entries})

    def to_dict(self) -> dict[str, Any]:
        return {"entries": [e.to_dict() for e in self.entries], **self.boundaries.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RewriteRecord:
        return cls(
            entries=[FusionEntry.from_dict(e) for e in data.get("entries", [])],
            boundaries=Boundaries.from_dict(data),
        )
