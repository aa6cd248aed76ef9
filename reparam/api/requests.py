"""What a command is asked to do: where the model comes from, what inputs look like, how to judge.

Each request is a frozen dataclass with one resolver, so every command reads a checkpoint, picks
an input shape and builds a tolerance the same way. Errors name the request's fields in backticks
(`` `input_shape` ``); the CLI shows them as the flags that set those fields.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from reparam.checkpoint import load_model
from reparam.equivalence.tolerance import Tolerance, make_tolerance
from reparam.errors import ReparamError
from reparam.io import check_input_file
from reparam.verify.inputs import Batch, make_batches, resolve_input_shape

Overrides = Mapping[str, float] | float | None


@dataclass(frozen=True)
class ModelSource:
    """A training checkpoint and how to build the model its weights belong to."""

    checkpoint: str | os.PathLike
    arch: str | None = None
    arch_kwargs: Mapping[str, Any] | None = None
    state_dict_key: str | None = None
    strip_prefix: str | None = None
    trust_pickle: bool = False
    max_memory: int | str | None = None

    @property
    def path(self) -> Path:
        return check_input_file(self.checkpoint, "checkpoint")

    def load(self, described_by: Mapping[str, Any] | None = None) -> LoadedModel:
        """Build the training-form model (eval mode) and load the checkpoint's weights into it."""
        path = self.path
        model = load_model(
            path,
            arch=self.arch,
            arch_kwargs=self.arch_kwargs,
            trust_pickle=self.trust_pickle,
            max_bytes=self.max_memory,
            state_dict_key=self.state_dict_key,
            strip_prefix=self.strip_prefix,
            described_by=described_by,
        ).eval()
        source = getattr(model, "reparam_source", None) or {}
        return LoadedModel(model, path, source.get("arch", self.arch), list(source.get("notes", [])))


@dataclass
class LoadedModel:
    """A model built from a `ModelSource`, the file it came from, its architecture, load notes."""

    model: nn.Module
    path: Path
    arch: str | None
    notes: list[str] = field(default_factory=list)

    @property
    def arch_kwargs(self) -> dict[str, Any] | None:
        return (getattr(self.model, "reparam_source", None) or {}).get("arch_kwargs")


@dataclass
class Batches:
    """Resolved inputs: the batches, a description of where they came from, a note on defaults."""

    data: list[Batch]
    info: dict[str, Any]
    note: str | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data[0]["input"].shape)


@dataclass(frozen=True)
class InputSpec:
    """What the inputs look like: real data (an ``.npz``) or seeded random batches of a shape.

    The one default rule: ``input_shape`` if given, else the shape an artifact records, else
    1xCx224x224 with C from the model's first convolution (a note says which was used).
    """

    inputs: str | os.PathLike | None = None
    input_shape: Sequence[int] | None = None
    batches: int | None = None
    batch_size: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.inputs is not None and self.input_shape is not None:
            raise ReparamError(
                "`inputs` and `input_shape` are exclusive", hint="give real data or a shape, not both"
            )
        if self.batch_size < 1:
            raise ReparamError(f"`batch_size` must be at least 1 (got {self.batch_size})")

    @property
    def shape(self) -> tuple[int, ...] | None:
        return tuple(int(d) for d in self.input_shape) if self.input_shape else None

    def resolve_shape(
        self, model: nn.Module | None, description: Any = None
    ) -> tuple[tuple[int, ...], str | None]:
        """The example shape (the one default rule) and a note when it was not given."""
        return resolve_input_shape(model, self.shape, description)

    def resolve(self, model: nn.Module | None, description: Any = None) -> Batches:
        """The batches to run: from ``inputs``, or random of the resolved shape."""
        data, info, note = make_batches(
            model,
            inputs=self.inputs,
            input_shape=self.shape,
            batches=self.batches,
            batch_size=self.batch_size,
            seed=self.seed,
            description=description,
        )
        return Batches(data, info, note)


@dataclass(frozen=True)
class Judge:
    """How outputs are judged: a tolerance profile (None: each artifact's own precision) + overrides."""

    profile: str | None = None
    atol: Overrides = None
    rtol: Overrides = None
    localize: str = "auto"  # which candidates get per-block errors: see reparam.verify.verify

    def tolerance(self, precision: str = "fp32") -> Tolerance:
        """The tolerance for an artifact of ``precision`` (the profile, when one was chosen, wins)."""
        return make_tolerance(self.profile or precision, self.atol, self.rtol)

    def for_profile(self, profile: str) -> Tolerance:
        """The tolerance of ``profile`` with this judge's overrides (fp16 / int8 artifacts of a deploy)."""
        return make_tolerance(profile, self.atol, self.rtol)
