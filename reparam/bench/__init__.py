"""Benchmarks: latency of training vs deploy vs plain forms, and the cost of conversion.

``run_bench(BenchOptions(...))`` measures and returns :class:`BenchResults`; ``render_markdown`` and
``render_console`` format them. The harness (``reparam.bench.harness``) is independent of models.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from reparam.bench.conversion import DEFAULT_CONVERSION_MODELS, ConversionCost, bench_conversion
from reparam.bench.deploy_cost import bench_deploy
from reparam.bench.harness import Interleaved, Stats, paired_ratios, run_interleaved, summarize
from reparam.bench.latency import BACKENDS, DEFAULT_MODELS, FORMS, LatencyCell, bench_model, build_forms
from reparam.bench.latency import default_input_chw as default_input_chw
from reparam.bench.machine import MachineInfo, describe_machine
from reparam.bench.report import BenchResults, Target, render_console, render_markdown
from reparam.bench.verify_stream import bench_verify_stream

__all__ = [
    "BACKENDS",
    "BenchOptions",
    "BenchResults",
    "ConversionCost",
    "DEFAULT_CONVERSION_MODELS",
    "DEFAULT_MODELS",
    "FORMS",
    "Interleaved",
    "LatencyCell",
    "MachineInfo",
    "Stats",
    "Target",
    "describe_machine",
    "paired_ratios",
    "render_console",
    "render_markdown",
    "run_bench",
    "run_interleaved",
    "summarize",
]


def usable_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass
class BenchOptions:
    """What to measure and how; the defaults are those of ``reparam bench``."""

    models: list[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    backends: list[str] = field(default_factory=lambda: list(BACKENDS))
    batches: list[int] = field(default_factory=lambda: [1, 8])
    threads: int = field(default_factory=usable_cpus)
    input_chw: tuple[int, int, int] | None = None  # None: each model's own (224 or 32 for CIFAR)
    repeats: int = 30
    warmup: int = 5
    width: float = 1.0
    latency: bool = True
    conversion: bool = True
    conversion_models: list[str] = field(default_factory=lambda: list(DEFAULT_CONVERSION_MODELS))
    conversion_width: float = 1.0
    conversion_input: tuple[int, int, int, int] = (1, 3, 224, 224)
    conversion_runs: int = 3
    export: bool = True
    timm: bool = True
    seed: int = 0
    # `reparam deploy` against its parts, each a whole process (paired rounds)
    deploy: bool = False
    deploy_model: str = "acb_resnet50"
    deploy_rounds: int = 2
    # streaming verify against the raw runtimes (reparam.bench.verify_stream, where present)
    verify: bool = False
    verify_samples: int = 1000

    def command(self) -> str:
        """A `reparam bench` command line that reproduces these options exactly."""
        args = ["reparam", "bench"]
        if self.latency:
            args += [
                *self.models,
                "--backend",
                ",".join(self.backends),
                "--batch",
                ",".join(map(str, self.batches)),
                "--repeats",
                str(self.repeats),
                "--warmup",
                str(self.warmup),
                "--width",
                f"{self.width:g}",
            ]
            if self.input_chw:
                args += ["--input-shape", "x".join(map(str, (self.batches[0], *self.input_chw)))]
        if not self.latency:
            args.append("--conversion")
        elif not self.conversion:
            args.append("--latency")
        if self.conversion:
            args += [
                "--conversion-models",
                ",".join(self.conversion_models),
                "--conversion-width",
                f"{self.conversion_width:g}",
                "--conversion-input-shape",
                "x".join(map(str, self.conversion_input)),
                "--conversion-runs",
                str(self.conversion_runs),
            ]
            if not self.export:
                args.append("--no-export")
        if self.deploy:
            args += [
                "--deploy",
                "--deploy-model",
                self.deploy_model,
                "--deploy-rounds",
                str(self.deploy_rounds),
            ]
        if self.verify:
            args += ["--verify-stream", "--verify-samples", str(self.verify_samples)]
        args += ["--threads", str(self.threads), "--seed", str(self.seed)]
        return shlex.join(args)

    def settings(self) -> dict[str, object]:
        out: dict[str, object] = {"threads": self.threads, "seed": self.seed}
        if self.latency:
            out.update(repeats=self.repeats, warmup=self.warmup, width=self.width)
        if self.conversion:
            out.update(
                conversion_width=self.conversion_width,
                conversion_input="x".join(map(str, self.conversion_input)),
                conversion_runs=self.conversion_runs,
            )
        return out


def run_bench(options: BenchOptions, progress: Callable[[str], None] | None = None) -> BenchResults:
    """Measure latency and/or conversion cost as ``options`` say."""

    torch.set_num_threads(options.threads)
    ort_threads = options.threads if any(BACKENDS[b] for b in options.backends) and options.latency else None
    results = BenchResults(
        command=options.command(),
        machine=describe_machine(torch_threads=options.threads, ort_threads=ort_threads),
        settings=options.settings(),
    )
    if options.latency:
        for name in options.models:
            chw = options.input_chw or default_input_chw(name)
            if progress:
                progress(f"{name}: building and converting the three forms")
            forms = build_forms(name, width=options.width, chw=chw, seed=options.seed)
            results.notes.extend(forms.notes)
            results.latency.extend(
                bench_model(
                    forms,
                    backends=options.backends,
                    batches=options.batches,
                    repeats=options.repeats,
                    warmup=options.warmup,
                    threads=options.threads,
                    seed=options.seed,
                    progress=progress,
                )
            )
    if options.conversion:
        rows, notes = bench_conversion(
            options.conversion_models,
            width=options.conversion_width,
            input_shape=list(options.conversion_input),
            export=options.export,
            threads=options.threads,
            seed=options.seed,
            timm=options.timm,
            runs=options.conversion_runs,
            progress=progress,
        )
        results.conversion.extend(rows)
        results.notes.extend(notes)
    if options.deploy:
        results.deploy.append(
            bench_deploy(options.deploy_model, options.deploy_rounds, options.seed, progress)
        )
    if options.verify:
        _bench_verify(options, results, progress)
    return results


def _bench_verify(
    options: BenchOptions, results: BenchResults, progress: Callable[[str], None] | None
) -> None:
    """Streaming verify vs the raw runs (``reparam.bench.verify_stream``)."""
    if progress:
        progress(f"verify vs raw runtimes: {options.verify_samples} inputs")
    results.verify.append(bench_verify_stream(samples=options.verify_samples, seed=options.seed))
