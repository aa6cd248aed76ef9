"""Latency of a zoo model's training form, deploy form and plain counterpart, per backend and batch.

Three forms of one model are compared:

* ``train``: the multi-branch training-time model (eval mode), as a user would run it unconverted;
* ``deploy``: the same model after ``reparam.engine.reparameterize`` (branches merged, BN folded);
* ``plain``: the zoo's plain counterpart (same layer shapes as the deploy form), with its BatchNorm
  folded by the same engine, i.e. a fairly deployed plain network. ``deploy/plain`` near 1 means
  re-parameterization leaves nothing on the table.

The three are timed interleaved within each (backend, batch) cell, so ratios are paired per round.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from reparam.bench.harness import Interleaved, Stats, calibrate_number, run_interleaved
from reparam.bench.machine import OtherLoad
from reparam.engine import reparameterize
from reparam.errors import ReparamError, require
from reparam.exporters.onnx import export_onnx
from reparam.numerics import randomize_batchnorm
from reparam.runners import OnnxRuntimeRunner
from reparam.zoo import create_model, model_info

FORMS = ("train", "deploy", "plain")
# Backend name -> ONNX Runtime graph optimization level (None: PyTorch eager).
BACKENDS: dict[str, str | None] = {"torch": None, "ort-all": "all", "ort-disable": "disable"}
DEFAULT_MODELS = ("acb_resnet18", "repvgg_a0", "acb_resnet56_cifar")
# Three sessions run in turn: an idle session's spinning intra-op threads would steal the cores of the
# one running (measured: 2x slower on 2 cores), so spinning is off for all of them.
ORT_CONFIG = {"session.intra_op.allow_spinning": "0"}


def parse_backends(text: str) -> list[str]:
    """``torch,ort`` -> ``["torch", "ort-all", "ort-disable"]``; ``ort`` means both ORT levels."""
    out: list[str] = []
    for item in (t.strip().lower() for t in text.split(",")):
        if not item:
            continue
        names = ["ort-all", "ort-disable"] if item in ("ort", "onnxruntime") else [item]
        for name in names:
            if name not in BACKENDS:
                raise ReparamError(
                    f"unknown backend {item!r}",
                    hint=f"choose from torch, ort (= ort-all and ort-disable), {', '.join(BACKENDS)}",
                )
            if name not in out:
                out.append(name)
    if not out:
        raise ReparamError("no backend given", hint="e.g. `backend` torch,ort")
    return out


def default_input_chw(model_name: str) -> tuple[int, int, int]:
    """Channels, height, width a zoo model is meant for: 32x32 for CIFAR models, else 224x224."""
    return (3, 32, 32) if "cifar" in model_name else (3, 224, 224)


@dataclass
class LatencyCell:
    """One (model, backend, batch) measurement: per-form latency and paired ratios."""

    model: str
    plain_model: str
    backend: str
    batch: int
    input_shape: list[int]
    forms: dict[str, Stats]  # seconds per call
    ratios: dict[str, Stats]  # "train/deploy", "deploy/plain"
    repeats: int
    warmup: int
    number: int
    samples: dict[str, list[float]] = field(default_factory=dict)
    other_load: float | None = None  # share of all CPUs other processes used meanwhile

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "plain_model": self.plain_model,
            "backend": self.backend,
            "batch": self.batch,
            "input_shape": self.input_shape,
            "seconds": {k: v.to_dict() for k, v in self.forms.items()},
            "ratios": {k: v.to_dict() for k, v in self.ratios.items()},
            "repeats": self.repeats,
            "warmup": self.warmup,
            "calls_per_sample": self.number,
            "samples": self.samples,
            "other_load": self.other_load,
        }


@dataclass
class ModelForms:
    """The three forms of one zoo model, ready to run, plus what was checked about them."""

    name: str
    plain_name: str
    chw: tuple[int, int, int]
    modules: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def layer_shapes(model: Any) -> list[tuple[str, tuple[int, ...]]]:
    """Kind and weight shape of every conv and linear layer, in module order."""

    kinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
    return [(type(m).__name__, tuple(m.weight.shape)) for m in model.modules() if isinstance(m, kinds)]


def _batchnorms(model: Any) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def build_forms(name: str, *, width: float, chw: tuple[int, int, int], seed: int = 0) -> ModelForms:
    """Build training form, deploy form and folded plain counterpart of zoo model ``name``.

    BatchNorm statistics are randomized so the engine's built-in equivalence check is meaningful; the
    conversion raises if the deploy form does not match the training form.
    """

    info = model_info(name)
    plain_name = info["counterpart"]
    if not plain_name:
        raise ReparamError(
            f"model {name!r} has no plain counterpart in the zoo, so deploy/plain cannot be measured",
            hint="benchmark a multi-branch model such as acb_resnet18, repvgg_a0 or acb_resnet56_cifar",
        )
    kwargs: dict[str, Any] = {"width": width, "in_chans": chw[0]}
    torch.manual_seed(seed)
    train = randomize_batchnorm(create_model(name, **kwargs).eval(), seed)
    plain_train = randomize_batchnorm(create_model(plain_name, **kwargs).eval(), seed + 1)
    example = (torch.randn(1, *chw, generator=torch.Generator().manual_seed(seed)),)
    deploy = reparameterize(train, example)
    plain = reparameterize(plain_train, example)
    notes = []
    if layer_shapes(deploy) != layer_shapes(plain):
        notes.append(f"{name}: the deploy form's conv/linear layer shapes differ from {plain_name}'s")
    for form, module in (("deploy", deploy), ("plain", plain)):
        if _batchnorms(module):
            notes.append(f"{name}: {_batchnorms(module)} BatchNorm layers remain in the {form} form")
    return ModelForms(name, plain_name, chw, {"train": train, "deploy": deploy, "plain": plain}, notes)


def _torch_callables(forms: ModelForms, batch: int, seed: int) -> dict[str, Callable[[], Any]]:
    x = torch.randn(batch, *forms.chw, generator=torch.Generator().manual_seed(seed))
    return {form: (lambda m=forms.modules[form]: m(x)) for form in FORMS}


@contextmanager
def onnx_files(forms: ModelForms) -> Iterator[dict[str, Path]]:
    """Export each form to ONNX (dynamic batch) in a temporary directory; removed afterwards."""
    require("onnx", "onnx", "The ONNX Runtime benchmark")
    example = (torch.randn(1, *forms.chw),)
    with tempfile.TemporaryDirectory(prefix="reparam-bench-") as tmp:
        paths = {}
        for form in FORMS:
            path = Path(tmp) / f"{forms.name}-{form}.onnx"
            export_onnx(forms.modules[form], example, path, dynamic_batch=True)
            paths[form] = path
        yield paths


def _ort_callables(
    paths: dict[str, Path], level: str, threads: int | None, chw: tuple[int, int, int], batch: int, seed: int
) -> dict[str, Callable[[], Any]]:
    x = np.random.default_rng(seed).standard_normal((batch, *chw), dtype=np.float32)
    out = {}
    for form in FORMS:
        runner = OnnxRuntimeRunner(str(paths[form]), optimization=level, threads=threads, config=ORT_CONFIG)
        feed = {runner.input_names[0]: x}
        out[form] = lambda r=runner, f=feed: r.run(f)
    return out


def time_forms(
    callables: dict[str, Callable[[], Any]], *, repeats: int, warmup: int, min_sample_s: float
) -> Interleaved:
    """Warm up, pick calls per sample, then time the forms interleaved (train, deploy, plain, ...)."""
    for _ in range(warmup):
        for fn in callables.values():
            fn()
    number = calibrate_number(callables, min_sample_s=min_sample_s)
    return run_interleaved(callables, repeats=repeats, warmup=0, number=number)


def cell_from(
    forms: ModelForms,
    backend: str,
    batch: int,
    run: Interleaved,
    warmup: int,
    other_load: float | None = None,
) -> LatencyCell:
    """Summaries and paired ratios of one interleaved run."""
    return LatencyCell(
        model=forms.name,
        plain_model=forms.plain_name,
        backend=backend,
        batch=batch,
        input_shape=[batch, *forms.chw],
        forms={f: run.stats(f) for f in FORMS},
        ratios={"train/deploy": run.ratio("train", "deploy"), "deploy/plain": run.ratio("deploy", "plain")},
        repeats=len(run.samples[FORMS[0]]),
        warmup=warmup,
        number=run.number,
        samples=dict(run.samples),
        other_load=other_load,
    )


def bench_model(
    forms: ModelForms,
    *,
    backends: Sequence[str],
    batches: Sequence[int],
    repeats: int,
    warmup: int,
    threads: int | None,
    min_sample_s: float = 0.005,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> list[LatencyCell]:
    """Measure every (backend, batch) cell of one model."""

    cells: list[LatencyCell] = []
    if "torch" in backends:
        with torch.inference_mode():
            for batch in batches:
                if progress:
                    progress(f"{forms.name}: torch, batch {batch}")
                with OtherLoad() as load:
                    run = time_forms(
                        _torch_callables(forms, batch, seed),
                        repeats=repeats,
                        warmup=warmup,
                        min_sample_s=min_sample_s,
                    )
                cells.append(cell_from(forms, "torch", batch, run, warmup, load.fraction))
    ort = [b for b in backends if BACKENDS[b] is not None]
    if ort:
        if progress:
            progress(f"{forms.name}: exporting the three forms to ONNX")
        with onnx_files(forms) as paths:
            for backend in ort:
                for batch in batches:
                    if progress:
                        progress(f"{forms.name}: {backend}, batch {batch}")
                    callables = _ort_callables(paths, BACKENDS[backend], threads, forms.chw, batch, seed)
                    with OtherLoad() as load:
                        run = time_forms(callables, repeats=repeats, warmup=warmup, min_sample_s=min_sample_s)
                    cells.append(cell_from(forms, backend, batch, run, warmup, load.fraction))
    return cells
