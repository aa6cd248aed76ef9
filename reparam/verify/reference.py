"""What candidates are compared with, batch by batch: a model run now, or its saved run results.

:class:`LiveReference` runs a model (module, ``.pt2``, ``.onnx``, engine or runner);
:class:`ComputedReference` holds a module's outputs computed up front, so the module can be let go
before the candidates are built; :class:`SavedReference` reads a run saved before (golden results:
the inputs, outputs, block outputs and fp32 noise of the training model). The verifier's loop
takes any of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from reparam.equivalence import MetricsAccumulator, block_noise, float64_copy, run_with_block_hooks
from reparam.equivalence.capture import BlockValue, torch_args
from reparam.equivalence.noise import as_float64
from reparam.errors import ReparamError
from reparam.numerics import scale_relative_error
from reparam.tensors import output_names, tensor_leaves, to_numpy

Batch = Mapping[str, np.ndarray]
NO_MODULE = "blocks can only be localized against a training-form nn.Module reference"


def run_batch(runner: Any, batch: Batch) -> dict[str, np.ndarray]:
    """``{output name: array}`` of one runner on one batch (the inputs it names, else all)."""
    feeds = {n: batch[n] for n in runner.input_names if n in batch} or dict(batch)
    return {k: np.asarray(v) for k, v in runner.run(feeds).items()}


@dataclass
class BlockReference:
    """The reference's block values on one batch, their execution order and their fp32 noise."""

    values: dict[str, BlockValue]
    order: list[str]
    noise: dict[str, float] = field(default_factory=dict)


class LiveReference:
    """A model run batch by batch; blocks and fp32 noise are read from its module when it has one."""

    def __init__(self, candidate: Any, name: str) -> None:
        self.name, self.candidate = name, candidate
        self.runner = candidate.runner
        self.module: nn.Module | None = candidate.module if candidate.kind in ("torch", "pt2") else None
        if self.module is not None and candidate.kind == "torch":
            self.module.eval()  # exported (.pt2) modules have no train/eval switch
        self.input_names = list(self.runner.input_names)
        self.notes: list[str] = []
        self._model64: nn.Module | None | bool = False  # False: not tried yet
        self._blocks: dict[tuple, BlockReference] = {}
        self.localizes, self.no_blocks_reason = self.module is not None, NO_MODULE

    def outputs(self, index: int, batch: Batch) -> dict[str, np.ndarray]:
        """The reference's outputs on ``batch``; a ReparamError when it does not run on it."""
        try:
            return run_batch(self.runner, batch)
        except ReparamError:
            raise
        except Exception as exc:
            shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in batch.items())
            raise ReparamError(
                f"the reference model failed on the inputs ({shapes}): {type(exc).__name__}: {exc}",
                hint="check `input_shape` / `inputs` against the model's expected input",
            ) from exc

    def float64(self) -> nn.Module | None:
        """A float64 copy of the reference module, made once (None when it cannot be made)."""
        if self._model64 is False:
            self._model64 = float64_copy(self.module) if self.candidate.kind == "torch" else None
            if self._model64 is None:
                self.notes.append(
                    "the reference could not be run in float64; fixed scale-relative limits apply"
                )
        return self._model64

    def noise(
        self, index: int, batch: Batch, outputs: Mapping[str, np.ndarray], scale: Mapping[str, float]
    ) -> dict[str, float]:
        """The fp32 noise of ``outputs`` (the reference's on ``batch``, number ``index``) against a
        float64 run.

        Each output's largest deviation is divided by ``scale`` (max|ref| over every batch), so the
        floor measured on one batch never exceeds the floor over all of them.
        """
        model64 = self.float64()
        if model64 is None:
            return {}
        try:
            leaves = tensor_leaves(model64(*as_float64(torch_args(batch, self.input_names))))
        except Exception:  # some ops have no float64 kernel: keep the fixed limits
            self.notes.append("the reference could not be run in float64; fixed scale-relative limits apply")
            self._model64 = None
            return {}
        noise = {}
        for name, leaf in zip(output_names(len(leaves)), leaves):
            if name in outputs and name in scale and scale[name] > 0:
                acc = MetricsAccumulator()
                acc.add(to_numpy(leaf), outputs[name])
                noise[name] = acc.result().max_abs / scale[name]
        return noise

    def blocks(self, index: int, batch: Batch, paths: Sequence[str]) -> BlockReference:
        """Block values of ``paths`` on ``batch`` (hooks on the module; ``localizes`` says whether any)."""
        key = (index, frozenset(paths))
        if key not in self._blocks:
            args = torch_args(batch, self.input_names)
            run = run_with_block_hooks(self.module, list(paths), lambda: self.module(*args))
            model64 = self.float64()
            noise = block_noise(model64, args, run.values) if model64 is not None else {}
            self._blocks[key] = BlockReference(run.values, run.order, noise)
        return self._blocks[key]

    def quantization_source(self) -> nn.Module | None:
        return self.module


# A module loaded again must reproduce the outputs computed before it was let go: far tighter than
# any change of weights, looser than the run-to-run jitter of a threaded kernel.
RELOAD_TOLERANCE = 1e-5


class ComputedReference:
    """A module's outputs on every batch, computed up front; the module itself is not held.

    The outputs are what the verifier compares with. The float64 noise and the block values,
    needed only by a candidate that fails or passes on the noise allowance, come from the module
    built again by ``load`` (a LiveReference), which must first reproduce the outputs computed
    before: a checkpoint changed on disk in between is an error, not a wrong verdict.
    """

    def __init__(self, live: LiveReference, batches: Sequence[Batch], load: Callable[[], LiveReference]):
        self.name, self.input_names = live.name, live.input_names
        self.localizes, self.no_blocks_reason = live.localizes, live.no_blocks_reason
        self._outputs = [live.outputs(index, batch) for index, batch in enumerate(batches)]
        self._load = load
        self._live: LiveReference | None = None

    @property
    def notes(self) -> list[str]:
        return self._live.notes if self._live is not None else []

    def outputs(self, index: int, batch: Batch) -> dict[str, np.ndarray]:
        if index >= len(self._outputs):
            raise ValueError(f"batch {index} was not among the {len(self._outputs)} computed up front")
        return dict(self._outputs[index])

    def _reloaded(self, index: int, batch: Batch) -> LiveReference:
        if self._live is None:
            live = self._load()
            again = live.outputs(index, batch)
            if not _reproduces(again, self._outputs[index]):
                raise ReparamError(
                    f"the reference {self.name} loaded again does not reproduce its outputs: "
                    "the file changed during the run",
                    hint="leave the checkpoint unchanged while the command runs, then run it again",
                )
            self._live = live
        return self._live

    def noise(
        self, index: int, batch: Batch, outputs: Mapping[str, np.ndarray], scale: Mapping[str, float]
    ) -> dict[str, float]:
        return self._reloaded(index, batch).noise(index, batch, outputs, scale)

    def blocks(self, index: int, batch: Batch, paths: Sequence[str]) -> BlockReference:
        return self._reloaded(index, batch).blocks(index, batch, paths)

    def quantization_source(self) -> nn.Module | None:
        return None  # the module is gone: its table is computed before it is let go


def _reproduces(again: Mapping[str, np.ndarray], before: Mapping[str, np.ndarray]) -> bool:
    return again.keys() == before.keys() and all(
        np.shape(again[name]) == np.shape(old) and scale_relative_error(old, again[name]) <= RELOAD_TOLERANCE
        for name, old in before.items()
    )


class SavedReference:
    """A reference run saved before (golden results): outputs, block values and noise are read."""

    def __init__(
        self,
        name: str,
        batches: Sequence[Batch],
        outputs: Sequence[Mapping[str, np.ndarray]],
        blocks: Sequence[Mapping[str, BlockValue]],
        order: Sequence[str],
        noise: Mapping[str, float],
        input_names: Sequence[str],
    ) -> None:
        self.name, self.batches = name, list(batches)
        self._outputs, self._blocks, self.order = list(outputs), list(blocks), list(order)
        self._noise, self.input_names, self.notes = dict(noise), list(input_names), []
        self.localizes, self.no_blocks_reason = True, ""

    def outputs(self, index: int, batch: Batch) -> dict[str, np.ndarray]:
        return dict(self._outputs[index])

    def noise(
        self, index: int, batch: Batch, outputs: Mapping[str, np.ndarray], scale: Mapping[str, float]
    ) -> dict[str, float]:
        """The noise saved with the run (measured over every batch)."""
        return dict(self._noise)

    def blocks(self, index: int, batch: Batch, paths: Sequence[str]) -> BlockReference:
        return BlockReference(dict(self._blocks[index]), self.order)

    def quantization_source(self) -> nn.Module | None:
        return None
