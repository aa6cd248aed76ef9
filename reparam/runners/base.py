"""The Runner interface: named numpy arrays in, named numpy arrays out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from reparam.errors import ReparamError

Dim = int | str | None  # a fixed size, or a symbolic / unknown one


@dataclass(frozen=True)
class TensorSpec:
    """An input the runner expects: its name, shape (``None``/str for dynamic dims) and dtype."""

    name: str
    shape: tuple[Dim, ...] | None  # None: rank unknown
    dtype: np.dtype | None  # None: not known

    def describe(self) -> str:
        dtype = self.dtype.name if self.dtype is not None else "?"
        if self.shape is None:
            return f"{self.name}: {dtype}[...]"
        dims = ",".join(str(d) if d is not None else "?" for d in self.shape)
        return f"{self.name}: {dtype}[{dims}]"


class Runner:
    """Runs one model artifact. Subclasses set ``input_names``, ``output_names`` and ``input_specs``."""

    input_names: list[str]
    output_names: list[str]
    input_specs: list[TensorSpec]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on ``{input name: array}``; returns ``{output name: array}``."""
        raise NotImplementedError

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.run(inputs)

    def expected(self) -> str:
        """The expected inputs as one line, for error messages."""
        return "; ".join(s.describe() for s in self.input_specs) or "(none)"

    def validate(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check names, ranks, fixed dims and dtypes; returns the inputs as numpy arrays.

        Raises a ReparamError naming the problem and listing the expected inputs.
        """
        if not isinstance(inputs, Mapping):
            raise ReparamError(
                f"{type(self).__name__}.run takes a dict of named arrays, not {type(inputs).__name__}",
                hint=f"pass {{name: array}} with the inputs {self.expected()}",
            )
        names = list(inputs)
        missing = [n for n in self.input_names if n not in inputs]
        extra = [n for n in names if n not in self.input_names]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing {missing}")
            if extra:
                parts.append(f"unknown {extra}")
            raise ReparamError(
                f"wrong input names for {self.label()}: {', '.join(parts)}",
                hint=f"expected inputs: {self.expected()}",
            )
        arrays = {}
        for spec in self.input_specs:
            value = inputs[spec.name]
            if not isinstance(value, np.ndarray):
                raise ReparamError(
                    f"input {spec.name!r} is a {type(value).__name__}, not a numpy array",
                    hint=f"convert it with np.asarray (expected inputs: {self.expected()})",
                )
            if spec.dtype is not None and value.dtype != spec.dtype:
                raise ReparamError(
                    f"input {spec.name!r} has dtype {value.dtype.name}, expected {spec.dtype.name}",
                    hint=f"cast it with .astype(np.{spec.dtype.name}); expected inputs: {self.expected()}",
                )
            if spec.shape is not None:
                bad = len(value.shape) != len(spec.shape) or any(
                    isinstance(d, int) and d != s for d, s in zip(spec.shape, value.shape)
                )
                if bad:
                    raise ReparamError(
                        f"input {spec.name!r} has shape {list(value.shape)}, which does not fit "
                        f"{spec.describe()}",
                        hint=f"expected inputs: {self.expected()} (? and names are free sizes)",
                    )
            arrays[spec.name] = value
        return arrays

    def label(self) -> str:
        return type(self).__name__

    def _check_names(self, given: Sequence[str]) -> None:
        if len(set(given)) != len(given):
            raise ReparamError(f"duplicate input names {list(given)}", hint="give each input a distinct name")
