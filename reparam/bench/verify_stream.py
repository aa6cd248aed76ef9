"""What streaming verification costs: ``verify`` against running the same models on the same batches.

One round runs, interleaved with the other (:func:`reparam.bench.harness.run_interleaved`):

- *raw*: the training model, then every candidate, on all batches in their own runtimes, called
  directly (the module under ``torch.no_grad()``, ``InferenceSession.run``), outputs dropped;
- *verify*: :func:`reparam.verify.verify` on the same batches, candidates and batch size, as
  ``reparam verify`` runs it (fp32 rule, block localization where a candidate needs it, the
  quantization-risk table).

The result is the per-round ratio verify / raw (paired, so drifts of a shared machine cancel), the
target being at most 1.3. Both sides get the same already loaded runners: loading a ``.pt2`` or
opening an ONNX Runtime session is not part of either. ``peak_traced_bytes`` compares Python's
peak allocations (tracemalloc: numpy arrays included, torch's own tensors not) of ``verify`` on
``samples`` and on a quarter of them, to show memory flat in the number of inputs.
"""

from __future__ import annotations

import json
import tempfile
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reparam.artifact import save_artifact
from reparam.bench.harness import Stats, run_interleaved
from reparam.engine import convert
from reparam.exporters.onnx import export_onnx
from reparam.numerics import calibrate_batchnorm
from reparam.runners import TorchRunner
from reparam.verify.core import Candidate, make_candidate, verify
from reparam.zoo import create_model

TARGET_RATIO = 1.3


@dataclass
class VerifyStreamCost:
    """Paired cost of streaming verification against the raw runs, and its memory at two sizes."""

    model: str
    samples: int
    batch_size: int
    input_shape: list[int]
    candidates: list[str]
    ratio: Stats  # verify / raw, per round
    verify_s: Stats
    raw_s: Stats
    passed: bool
    peak_traced_bytes: dict[int, int] = field(default_factory=dict)  # samples -> peak during verify

    @property
    def within_target(self) -> bool:
        return self.ratio.median <= TARGET_RATIO

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "samples": self.samples,
            "batch_size": self.batch_size,
            "input_shape": self.input_shape,
            "candidates": self.candidates,
            "ratio": self.ratio.to_dict(),
            "verify_s": self.verify_s.to_dict(),
            "raw_s": self.raw_s.to_dict(),
            "passed": self.passed,
            "target_ratio": TARGET_RATIO,
            "peak_traced_bytes": {str(k): v for k, v in self.peak_traced_bytes.items()},
        }


def seeded_batches(samples: int, batch_size: int, chw: tuple[int, int, int], seed: int = 0) -> list[dict]:
    """``samples`` inputs of standard-normal noise in batches of ``batch_size`` (the last may be smaller)."""
    rng = np.random.default_rng(seed)
    sizes = [min(batch_size, samples - i) for i in range(0, samples, batch_size)]
    return [{"input": rng.standard_normal((n, *chw)).astype(np.float32)} for n in sizes]


def _stream(samples: int, batch_size: int, chw: tuple[int, int, int], seed: int) -> Iterator[dict]:
    """The batches of :func:`seeded_batches`, made one at a time (nothing kept)."""
    rng = np.random.default_rng(seed)
    for i in range(0, samples, batch_size):
        yield {"input": rng.standard_normal((min(batch_size, samples - i), *chw)).astype(np.float32)}


def _candidates(model: torch.nn.Module, chw: tuple[int, int, int], workdir: Path) -> list[Candidate]:
    """The deploy ``.pt2`` and its ONNX file, loaded once."""
    example = torch.randn(1, *chw, generator=torch.Generator().manual_seed(1))
    result = convert(model, example)
    save_artifact(result, example, workdir / "model.pt2")
    export_onnx(result, example, workdir / "model.onnx")
    return [make_candidate(workdir / "model.pt2"), make_candidate(workdir / "model.onnx")]


def _raw_call(runner: Any) -> Callable[[np.ndarray], Any]:
    """The runner's own runtime, called as a user would call it without reparam."""
    session = getattr(runner, "session", None)
    if session is not None:
        name = runner.input_names[0]
        return lambda x: session.run(None, {name: x})
    module = runner.module

    def call(x: np.ndarray) -> Any:
        with torch.no_grad():
            return module(torch.from_numpy(x))

    return call


def _peak_traced(run: Callable[[], Any]) -> int:
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def bench_verify_stream(
    model_name: str = "acb_resnet18",
    *,
    samples: int = 1000,
    batch_size: int = 8,
    chw: tuple[int, int, int] = (3, 32, 32),
    width: float | None = None,
    repeats: int = 3,
    warmup: int = 1,
    seed: int = 0,
    memory: bool = True,
) -> VerifyStreamCost:
    """Time ``verify`` of a zoo model's deploy ``.pt2`` and ONNX file against the raw runs (paired)."""
    kwargs: dict[str, Any] = {"num_classes": 10} | ({"width": width} if width is not None else {})
    torch.manual_seed(seed)
    model = calibrate_batchnorm(create_model(model_name, **kwargs), seed, shape=(8, *chw)).eval()
    batches = seeded_batches(samples, batch_size, chw, seed)
    reference = TorchRunner(model)
    with tempfile.TemporaryDirectory(prefix="reparam-bench-verify-") as tmp:
        cands = _candidates(model, chw, Path(tmp))
        runners = [reference, *(c.runner for c in cands)]
        reports = []

        def raw() -> None:
            for run in (_raw_call(r) for r in runners):
                for batch in batches:
                    run(batch["input"])

        def verified() -> None:
            reports.append(verify(model, cands, batches))

        timed = run_interleaved({"verify": verified, "raw": raw}, repeats=repeats, warmup=warmup)
        peaks = {}
        if memory:
            for n in (max(batch_size, samples // 4), samples):
                peaks[n] = _peak_traced(lambda n=n: verify(model, cands, _stream(n, batch_size, chw, seed)))
    return VerifyStreamCost(
        model=model_name,
        samples=samples,
        batch_size=batch_size,
        input_shape=[batch_size, *chw],
        candidates=[c.name for c in cands],
        ratio=timed.ratio("verify", "raw"),
        verify_s=timed.stats("verify"),
        raw_s=timed.stats("raw"),
        passed=all(r.passed for r in reports),
        peak_traced_bytes=peaks,
    )


if __name__ == "__main__":  # python -m reparam.bench.verify_stream
    print(json.dumps(bench_verify_stream().to_dict(), indent=2))
