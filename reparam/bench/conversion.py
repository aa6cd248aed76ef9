"""Conversion cost: time of ``reparam.engine.convert`` by phase, peak memory, ONNX export time.

Each model is measured in a fresh Python subprocess (``python -m reparam.bench.conversion``), so the
peak resident memory of one conversion is not hidden by what earlier work left allocated: the peak
is the high-water mark of the process's RSS during ``convert`` minus its RSS just before (the
high-water mark is reset first through ``/proc/self/clear_refs`` where Linux allows it, otherwise
``resource.getrusage`` max RSS is used). tracemalloc would not see torch's allocations.

Phases: the engine does not record timings in its report, so the worker wraps the public pieces it
calls during one ``convert(check=True)``: ``torch.fx.symbolic_trace`` (tracing) and
``reparam.engine.run_passes`` (the rewrite passes). Everything else ``convert`` does is reported as
"check": the eval copy of the model, the reference run with capture hooks, the deploy run and the
comparison, and the before/after model statistics.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import reparam.engine.core as core
from reparam.bench.machine import OtherLoad
from reparam.engine import convert
from reparam.errors import MismatchError, ReparamError
from reparam.exporters.onnx import export_onnx
from reparam.numerics import randomize_batchnorm, scale_relative_error
from reparam.zoo import create_model

DEFAULT_CONVERSION_MODELS = ("acb_resnet50", "sknet50", "se_resnet50", "scalenet50")
TIMM_MODELS = ("repvgg_a0", "mobileone_s0")
TIMM_MIN_ROUNDS = 7  # paired rounds of the timm comparison (each well under a second)
_KIB = 1024


@dataclass
class ConversionCost:
    """Cost of converting (and exporting) one model, measured in its own process."""

    model: str
    source: str  # "reparam zoo" or "timm"
    input_shape: list[int]
    width: float
    param_bytes: int
    total_s: float
    trace_s: float
    passes_s: float
    check_s: float
    peak_rss_delta_bytes: int | None
    memory_method: str
    export_s: float | None = None
    simplify_s: float | None = None
    # export + simplify with torch.onnx's legacy (TorchScript) exporter, measured after the default
    # one in the same process (onnx and onnxsim are imported by then)
    legacy_export_s: float | None = None
    reference_s: float | None = None  # timm's own reparameterize (median), for the timm rows
    # per round: reparam's conversion incl. check / timm's own reparameterize, timed back to back
    paired_ratios: list[float] = field(default_factory=list)
    check_passed: bool | None = None
    notes: list[str] = field(default_factory=list)
    run_totals_s: list[float] = field(default_factory=list)  # every conversion's total, in run order
    other_load: float | None = None  # share of all CPUs other processes used meanwhile

    @property
    def peak_over_params(self) -> float | None:
        if self.peak_rss_delta_bytes is None or self.param_bytes <= 0:
            return None
        return self.peak_rss_delta_bytes / self.param_bytes

    @property
    def cold_s(self) -> float:
        """Total of the first (cold) conversion in the process, as a one-off `reparam convert` sees it."""
        return self.run_totals_s[0] if self.run_totals_s else self.total_s

    @property
    def export_total_s(self) -> float | None:
        if self.export_s is None:
            return None
        return self.export_s + (self.simplify_s or 0.0)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["peak_over_params"] = self.peak_over_params
        d["export_total_s"] = self.export_total_s
        d["cold_s"] = self.cold_s
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConversionCost:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})


# --- memory -------------------------------------------------------------------------------------


def _status_kib(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_peak() -> bool:
    """Reset the RSS high-water mark (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    hwm, rss = _status_kib("VmHWM"), _status_kib("VmRSS")
    return hwm is not None and rss is not None and hwm <= rss + 4 * _KIB


def _maxrss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * _KIB


@contextlib.contextmanager
def peak_memory() -> Iterator[dict[str, Any]]:
    """Measure the peak RSS above the RSS at entry; fills ``delta_bytes`` and ``method`` on exit."""
    out: dict[str, Any] = {"delta_bytes": None, "method": ""}
    if _reset_peak():
        base = _status_kib("VmRSS")
        yield out
        peak = _status_kib("VmHWM")
        if base is not None and peak is not None:
            out["delta_bytes"] = max(0, (peak - base) * _KIB)
            out["method"] = "VmHWM - VmRSS (/proc, high-water mark reset before conversion)"
        return
    base = _maxrss_bytes()
    yield out
    out["delta_bytes"] = max(0, _maxrss_bytes() - base)
    out["method"] = "ru_maxrss delta (a lower bound if the process peaked higher before)"


# --- phase timing -------------------------------------------------------------------------------


@contextlib.contextmanager
def _timed_attr(owner: Any, name: str, totals: dict[str, float], key: str) -> Iterator[None]:
    """Accumulate the wall time of calls to ``owner.name`` into ``totals[key]`` while inside."""
    original = getattr(owner, name, None)
    if original is None:
        yield
        return
    depth = 0

    def wrapper(*args, **kwargs):
        nonlocal depth
        depth += 1
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            depth -= 1
            if depth == 0:  # count nested/recursive calls once
                totals[key] = totals.get(key, 0.0) + time.perf_counter() - start

    setattr(owner, name, wrapper)
    try:
        yield
    finally:
        setattr(owner, name, original)


def timed_convert(model: Any, example_inputs: tuple) -> tuple[Any, dict[str, float]]:
    """Run ``reparam.engine.convert(check=True)``; return the result and its phase times (seconds)."""

    totals: dict[str, float] = {}
    with (
        _timed_attr(core, "trace", totals, "trace"),
        _timed_attr(core, "export_capture", totals, "trace"),
        _timed_attr(core, "run_passes", totals, "passes"),
    ):
        start = time.perf_counter()
        result = convert(model, example_inputs, check=True)
        total = time.perf_counter() - start
    trace, passes = totals.get("trace", 0.0), totals.get("passes", 0.0)
    return result, {
        "total": total,
        "trace": trace,
        "passes": passes,
        "check": max(0.0, total - trace - passes),
    }


def repeated_convert(model: Any, example_inputs: tuple, runs: int) -> tuple[Any, dict[str, Any]]:
    """Convert ``runs`` times in this process; phases of the median run, the highest peak memory.

    The first run is cold (lazy imports, allocator growth) like a one-off `reparam convert`; later
    runs show how much of that is one-time. Every run's total is kept.
    """

    runs = max(1, runs)
    measured = []
    result = None
    for _ in range(runs):
        result = None
        gc.collect()
        with peak_memory() as mem:
            result, phases = timed_convert(model, example_inputs)
        measured.append((phases, mem["delta_bytes"], mem["method"]))
    by_total = sorted(measured, key=lambda m: m[0]["total"])
    phases = dict(by_total[(len(by_total) - 1) // 2][0])  # lower median: an actual run
    peaks = [m[1] for m in measured if m[1] is not None]
    phases["peak_bytes"] = max(peaks) if peaks else None
    phases["memory_method"] = measured[0][2]
    phases["totals"] = [m[0]["total"] for m in measured]
    return result, phases


# --- worker (runs in the subprocess) ---------------------------------------------------------------


def _param_bytes(model: Any) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _time_legacy_export(deploy: Any, example: tuple, notes: list[str]) -> float | None:
    """One ``export_onnx(simplify=True, dynamo=False)``: export + simplify time."""

    with tempfile.TemporaryDirectory(prefix="reparam-bench-") as tmp:
        start = time.perf_counter()
        try:
            export_onnx(deploy, example, Path(tmp) / "model.onnx", simplify=True, dynamo=False)
        except Exception as exc:  # reported, not fatal: the default exporter's time stands
            notes.append(f"legacy exporter failed: {type(exc).__name__}: {exc}")
            return None
        return time.perf_counter() - start


def _time_export(deploy: Any, example: tuple, notes: list[str]) -> tuple[float | None, float | None]:
    """One cold ``export_onnx(simplify=True)``: (export time without simplification, simplify time)."""
    with tempfile.TemporaryDirectory(prefix="reparam-bench-") as tmp:
        start = time.perf_counter()
        result = export_onnx(deploy, example, Path(tmp) / "model.onnx", simplify=True)
        wall = time.perf_counter() - start
    notes.extend(f"export: {n}" for n in getattr(result, "notes", []))
    simplify = getattr(result, "seconds", {}).get("simplify")
    if simplify is None:
        notes.append("the exporter did not report its simplification time: export time includes it")
        return wall, None
    return wall - simplify, simplify


def measure_zoo_model(
    name: str, width: float, input_shape: list[int], export: bool, seed: int, runs: int = 3
) -> ConversionCost:
    """Build zoo model ``name``, convert it ``runs`` times and export it once, in this process."""

    torch.manual_seed(seed)
    model = randomize_batchnorm(create_model(name, width=width, in_chans=input_shape[1]).eval(), seed)
    example = (torch.randn(*input_shape, generator=torch.Generator().manual_seed(seed)),)
    notes: list[str] = []
    result, phases = repeated_convert(model, example, runs)
    cost = ConversionCost(
        model=name,
        source="reparam zoo",
        input_shape=list(input_shape),
        width=width,
        param_bytes=_param_bytes(model),
        total_s=phases["total"],
        trace_s=phases["trace"],
        passes_s=phases["passes"],
        check_s=phases["check"],
        peak_rss_delta_bytes=phases["peak_bytes"],
        memory_method=phases["memory_method"],
        run_totals_s=phases["totals"],
        check_passed=result.report.check.passed if result.report.check else None,
        notes=notes,
    )
    if export:
        cost.export_s, cost.simplify_s = _time_export(result.model, example, notes)
        if cost.export_s is not None:
            cost.legacy_export_s = _time_legacy_export(result.model, example, notes)
    return cost


def _import_timm() -> tuple[Any, Any] | str:
    """(timm, reparameterize_model), or why timm cannot be used."""
    try:
        import timm

        try:
            from timm.utils.model import reparameterize_model
        except ImportError:
            from timm.utils import reparameterize_model  # type: ignore[no-redef]
    except Exception as exc:  # installed but broken (e.g. torchvision missing): say so, measure the rest
        return f"timm is installed but cannot be imported ({type(exc).__name__}: {exc})"
    return timm, reparameterize_model


def measure_timm(name: str, input_shape: list[int], seed: int, runs: int = 3) -> ConversionCost | str | None:
    """reparam's conversion of a timm model next to timm's own ``reparameterize_model``, paired per round.

    Returns None when timm is not installed, and the reason as a string when it cannot be imported.
    """
    if importlib.util.find_spec("timm") is None:
        return None
    found = _import_timm()
    if isinstance(found, str):
        return found
    timm, reparameterize_model = found

    torch.manual_seed(seed)
    model = randomize_batchnorm(timm.create_model(name, pretrained=False).eval(), seed)
    example = (torch.randn(*input_shape, generator=torch.Generator().manual_seed(seed)),)
    notes = [f"timm {timm.__version__}, timm.create_model({name!r}) at full width"]
    # one untimed round first: both sides pay their one-off costs (lazy imports, first kernels) there;
    # it is also the run whose memory is reported (later runs reuse what the allocator holds)
    _, first = repeated_convert(model, example, 1)
    reparameterize_model(copy.deepcopy(model))
    rounds = []
    for _ in range(max(1, runs)):
        result, phases = repeated_convert(model, example, 1)
        candidate = copy.deepcopy(model)
        gc.collect()  # as before reparam's run: neither side pays for the other's garbage
        start = time.perf_counter()
        theirs = reparameterize_model(candidate)
        rounds.append((phases, time.perf_counter() - start))
    ratios = [p["total"] / t for p, t in rounds]
    phases = dict(sorted(rounds, key=lambda r: r[0]["total"])[(len(rounds) - 1) // 2][0])
    with torch.no_grad():
        err = scale_relative_error(theirs(*example).numpy(), result.model(*example).numpy())
    notes.append(f"reparam deploy vs timm reparameterized output: scale-relative error {err:.2e}")
    notes.append(
        f"{len(rounds)} paired rounds after one untimed round of each: reparam's conversion incl. check, "
        "then timm's reparameterize, same process; each timed call starts after gc.collect()"
    )
    return ConversionCost(
        model=f"timm/{name}",
        source="timm",
        input_shape=list(input_shape),
        width=1.0,
        param_bytes=_param_bytes(model),
        total_s=phases["total"],
        trace_s=phases["trace"],
        passes_s=phases["passes"],
        check_s=phases["check"],
        peak_rss_delta_bytes=first["peak_bytes"],
        memory_method=first["memory_method"],
        run_totals_s=[p["total"] for p, _ in rounds],
        reference_s=statistics.median(t for _, t in rounds),
        paired_ratios=ratios,
        check_passed=result.report.check.passed if result.report.check else None,
        notes=notes,
    )


def _worker_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reparam.bench.conversion")
    parser.add_argument("spec", help="JSON object: model, width, input_shape, export, seed, threads")
    spec = json.loads(parser.parse_args(argv).spec)

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    shape = [int(d) for d in spec["input_shape"]]
    try:
        if spec["model"].startswith("timm/"):
            cost = measure_timm(
                spec["model"].removeprefix("timm/"), shape, int(spec.get("seed", 0)), int(spec.get("runs", 3))
            )
            if cost is None or isinstance(cost, str):
                payload = {"skipped": cost or "timm is not installed"}
            else:
                payload = cost.to_dict()
        else:
            cost = measure_zoo_model(
                spec["model"],
                float(spec["width"]),
                shape,
                bool(spec.get("export", True)),
                int(spec.get("seed", 0)),
                int(spec.get("runs", 3)),
            )
            payload = cost.to_dict()
    except ReparamError as exc:  # hand the user-facing error back to the driver intact
        payload = {"error": exc.message, "hint": exc.hint, "mismatch": isinstance(exc, MismatchError)}
    sys.stdout.write("\n" + _MARKER + json.dumps(payload) + "\n")
    return 0


_MARKER = "REPARAM-BENCH-RESULT "


# --- driver (runs in the bench process) ----------------------------------------------------------


def run_worker(spec: dict[str, Any], timeout_s: float = 600.0) -> dict[str, Any]:
    """Run one measurement in a fresh subprocess and return its JSON payload."""
    cmd = [sys.executable, "-m", "reparam.bench.conversion", json.dumps(spec)]
    env = dict(os.environ)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired as exc:
        raise ReparamError(
            f"measuring the conversion of {spec['model']} took longer than {timeout_s:.0f} s",
            hint="use a smaller `width` or `input_shape`, or run on a quieter machine",
        ) from exc
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_MARKER):
            payload = json.loads(line[len(_MARKER) :])
            if "error" in payload:
                error = MismatchError if payload.get("mismatch") else ReparamError
                raise error(f"{spec['model']}: {payload['error']}", hint=payload.get("hint"))
            return payload
    tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
    raise ReparamError(
        f"measuring the conversion of {spec['model']} failed (exit {proc.returncode}):\n{tail}",
        hint="run the same conversion with `reparam convert` to see the full error",
    )


def bench_conversion(
    models: list[str],
    *,
    width: float,
    input_shape: list[int],
    export: bool = True,
    threads: int | None = None,
    seed: int = 0,
    timm: bool = True,
    runs: int = 3,
    progress: Callable[[str], None] | None = None,
) -> tuple[list[ConversionCost], list[str]]:
    """Conversion cost of each zoo model (one subprocess each), plus timm's RepVGG where importable."""
    rows: list[ConversionCost] = []
    notes: list[str] = []
    for name in models:
        if progress:
            progress(f"conversion cost: {name}")
        spec = {
            "model": name,
            "width": width,
            "input_shape": input_shape,
            "export": export,
            "seed": seed,
            "threads": threads,
            "runs": runs,
        }
        with OtherLoad() as load:
            cost = ConversionCost.from_dict(run_worker(spec))
        cost.other_load = load.fraction
        rows.append(cost)
    if timm:
        if importlib.util.find_spec("timm") is None:
            notes.append("timm is not installed: the comparison with timm's own reparameterize was skipped")
            return rows, notes
        for name in TIMM_MODELS:
            if progress:
                progress(f"conversion cost: timm {name}")
            spec = {
                "model": f"timm/{name}",
                "width": width,
                "input_shape": input_shape,
                "seed": seed,
                "threads": threads,
                "runs": max(runs, TIMM_MIN_ROUNDS),
            }
            with OtherLoad() as load:
                payload = run_worker(spec)
            if payload.get("skipped"):
                notes.append(f"timm comparison skipped: {payload['skipped']}")
                break
            cost = ConversionCost.from_dict(payload)
            cost.other_load = load.fraction
            rows.append(cost)
    return rows, notes


if __name__ == "__main__":
    raise SystemExit(_worker_main())
