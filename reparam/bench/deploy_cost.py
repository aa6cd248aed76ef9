"""What `reparam deploy` costs next to its parts, each as a whole process, paired round by round.

One round runs two fresh processes on the same checkpoint, one after the other:

- *deploy*: ``reparam deploy CKPT --arch ARCH -o OUT --to onnx --force`` as a user runs it; its
  progress lines (``[  1.2s] converting`` on stderr) time each stage: load, convert, ``.pt2``,
  ONNX export, verification (which opens the written files: the ``.pt2`` loaded back, an ONNX
  Runtime session), and the rest (reports, manifest, the move into place);
- *parts*: ``python -m reparam.bench.deploy_cost parts SPEC``, which imports the same libraries
  and does the same work with the public pieces alone, one after the other: load the checkpoint,
  ``reparam.engine.convert``, the reference outputs (``reparam.verify.compute_reference``, after
  which the training model is let go, as deploy does), ``reparam.artifact.save_artifact``,
  ``reparam.exporters.onnx.export_onnx`` and ``reparam.verify.verify`` of the three candidates on
  the same batches, with deploy's settings.

A third process per round runs the deploy with ``--legacy-exporter`` (model.onnx from the
TorchScript exporter): its wall time is paired with the default deploy's of the same round.

The ratio deploy / parts is taken per round (both processes wall time, imports included), so a
drift of a shared machine hits both alike. Peak memory is each process's own maximum resident set
(``wait4``); the parts worker also reports its resident set after importing torch, onnx and ONNX
Runtime and building the model, the baseline the deploy target is stated against (baseline plus
three times the parameter bytes).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reparam.bench.harness import Stats, summarize
from reparam.errors import ReparamError

DEFAULT_DEPLOY_MODEL = "acb_resnet50"
TARGET_WALL_S = 8.0
TARGET_PEAK_PARAMS = 3.0  # peak RSS <= import-and-build baseline + this many times the parameter bytes
LEGACY_FLAG = "--legacy-exporter"
_MARKER = "REPARAM-DEPLOY-PARTS "
_PROGRESS = re.compile(r"^\[\s*([0-9.]+)s\] (.*)$")
# the first words of deploy's progress lines, and the stage each one starts
_STAGES = (
    ("loading", "load"),
    ("converting", "convert"),
    ("writing model.pt2", "pt2"),
    ("exporting model.onnx", "onnx"),
    ("verifying", "verify"),
)


@dataclass
class ProcessRun:
    """One whole process: wall seconds, peak resident bytes, and its stages in seconds."""

    wall_s: float
    peak_rss_bytes: int
    stages: dict[str, float] = field(default_factory=dict)
    baseline_rss_bytes: int | None = None
    param_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class DeployCost:
    """Paired rounds of deploy and its parts on one model."""

    model: str
    input_shape: list[int]
    deploy: list[ProcessRun]
    parts: list[ProcessRun]
    ratio: Stats  # deploy wall / parts wall, per round
    notes: list[str] = field(default_factory=list)
    other_load: float | None = None
    legacy: list[ProcessRun] = field(default_factory=list)  # `deploy --legacy-exporter`, same rounds

    @property
    def legacy_ratio(self) -> Stats | None:
        """``deploy --legacy-exporter`` wall / ``deploy`` wall, per round."""
        if not self.legacy:
            return None
        return summarize([leg.wall_s / d.wall_s for leg, d in zip(self.legacy, self.deploy, strict=True)])

    def median_stages(self, runs: list[ProcessRun]) -> dict[str, float]:
        names = [n for r in runs for n in r.stages]
        return {n: statistics.median(r.stages.get(n, 0.0) for r in runs) for n in dict.fromkeys(names)}

    @property
    def deploy_wall_s(self) -> float:
        return statistics.median(r.wall_s for r in self.deploy)

    @property
    def deploy_peak_bytes(self) -> int:
        return max(r.peak_rss_bytes for r in self.deploy)

    @property
    def peak_limit_bytes(self) -> int | None:
        base = [r for r in self.parts if r.baseline_rss_bytes and r.param_bytes]
        if not base:
            return None
        run = base[0]
        return int(run.baseline_rss_bytes + TARGET_PEAK_PARAMS * run.param_bytes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "input_shape": self.input_shape,
            "deploy": [r.to_dict() for r in self.deploy],
            "parts": [r.to_dict() for r in self.parts],
            "ratio": self.ratio.to_dict(),
            "deploy_stages": self.median_stages(self.deploy),
            "parts_stages": self.median_stages(self.parts),
            "deploy_wall_s": self.deploy_wall_s,
            "deploy_peak_bytes": self.deploy_peak_bytes,
            "peak_limit_bytes": self.peak_limit_bytes,
            "target_wall_s": TARGET_WALL_S,
            "notes": self.notes,
            "other_load": self.other_load,
            "legacy": [r.to_dict() for r in self.legacy],
            "legacy_ratio": self.legacy_ratio.to_dict() if self.legacy_ratio else None,
        }


def make_checkpoint(arch: str, path: Path, seed: int = 0) -> Path:
    """A zoo model with random BatchNorm statistics, saved as `reparam deploy` reads it."""
    import torch

    from reparam.checkpoint import save_checkpoint
    from reparam.numerics import randomize_batchnorm
    from reparam.zoo import create_model

    torch.manual_seed(seed)
    save_checkpoint(randomize_batchnorm(create_model(arch).eval(), seed), path, arch)
    return path


def _run_process(
    cmd: list[str], on_line: Callable[[float, str], None] | None = None
) -> tuple[float, int, str]:
    """Run ``cmd``; its wall time, peak RSS (bytes, from wait4) and its stdout. stderr lines go to
    ``on_line`` with the time they arrived."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err_lines = []
    for line in proc.stderr:  # type: ignore[union-attr]
        err_lines.append(line.rstrip("\n"))
        if on_line:
            on_line(time.perf_counter() - start, line.rstrip("\n"))
    stdout = proc.stdout.read() if proc.stdout else ""  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0,):
        tail = "\n".join(err_lines[-12:])
        raise ReparamError(
            f"{' '.join(cmd[:4])} ... failed (exit {proc.returncode}):\n{tail}",
            hint="run the same command by hand to see the whole output",
        )
    rss = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return wall, rss, stdout


def stages_from_progress(lines: list[tuple[float, str]], wall_s: float) -> dict[str, float]:
    """Stage durations from deploy's progress lines: each stage lasts until the next one starts."""
    starts: list[tuple[str, float]] = []
    for arrived, text in lines:
        match = _PROGRESS.match(text)
        if not match:
            continue
        for prefix, stage in _STAGES:
            if match.group(2).startswith(prefix) and stage not in dict(starts):
                starts.append((stage, arrived))
    if not starts:
        return {}
    stages = {"start": starts[0][1]}  # interpreter start and imports, up to the first line
    ends = [t for _, t in starts[1:]] + [wall_s]
    for (stage, began), end in zip(starts, ends, strict=True):
        stages[stage] = end - began
    return stages


def run_deploy(ckpt: Path, arch: str, out: Path, extra: tuple[str, ...] = ()) -> ProcessRun:
    """`reparam deploy` as a user runs it (with the flags ``extra``), in its own process."""
    lines: list[tuple[float, str]] = []
    cmd = [sys.executable, "-m", "reparam", "deploy", str(ckpt), "--arch", arch, "-o", str(out)]
    wall, rss, _ = _run_process([*cmd, "--to", "onnx", "--force", *extra], lambda t, s: lines.append((t, s)))
    stages = stages_from_progress(lines, wall)
    # the last stage runs to the process's end: reports, manifest, moving the directory into place, exit
    return ProcessRun(wall, rss, stages)


def run_parts(ckpt: Path, arch: str, workdir: Path) -> ProcessRun:
    """The same work from the public pieces, in its own process."""
    spec = json.dumps({"checkpoint": str(ckpt), "arch": arch, "workdir": str(workdir)})
    wall, rss, stdout = _run_process([sys.executable, "-m", "reparam.bench.deploy_cost", "parts", spec])
    for line in reversed(stdout.splitlines()):
        if line.startswith(_MARKER):
            payload = json.loads(line[len(_MARKER) :])
            return ProcessRun(wall, rss, payload["stages"], payload["baseline_rss"], payload["param_bytes"])
    raise ReparamError("the deploy-parts worker printed no result", hint="run it by hand to see why")


# --- the parts worker (runs in its own process) ---------------------------------------------------


def _rss_bytes() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _parts(checkpoint: str, arch: str, workdir: Path) -> dict[str, Any]:
    """Load, convert, write the .pt2, export ONNX and verify, as separate timed calls."""
    import onnx  # noqa: F401 (imported as deploy imports it, before the baseline)
    import onnxruntime  # noqa: F401
    import torch

    from reparam.artifact import save_artifact
    from reparam.checkpoint import load_model
    from reparam.engine import convert
    from reparam.exporters.onnx import export_onnx
    from reparam.memory import release_freed_memory
    from reparam.verify import compute_reference, quantization_risk, verify
    from reparam.verify.core import make_candidate
    from reparam.verify.inputs import make_batches

    stages: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        stages[name] = now - clock
        clock = now

    model = load_model(checkpoint, arch)
    lap("load")
    baseline = _rss_bytes()  # libraries imported and the model built: what any deploy needs
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    data, info, _ = make_batches(model)
    example = (torch.from_numpy(data[0]["input"]),)
    result = convert(model, (example[0][:1],), check=False)
    # as deploy does: the reference outputs and the int8 table first, then the training model goes
    risk = quantization_risk(model, result.model, result.record)
    reference = compute_reference(model, data, lambda: load_model(checkpoint, arch), checkpoint)
    training = weakref.ref(model)
    del model
    release_freed_memory(collect=training() is not None)
    lap("convert")
    save_artifact(result.model, example, workdir / "model.pt2", report=result.report, record=result.record)
    lap("pt2")
    export_onnx(result.model, example, workdir / "model.onnx", boundaries=result.record.boundaries)
    lap("onnx")
    candidates = [make_candidate(result.model, name="deploy model (in memory)", record=result.record)]
    candidates += [make_candidate(workdir / n, record=result.record) for n in ("model.pt2", "model.onnx")]
    # as deploy calls it: blocks compared only for a candidate that fails or needs the noise allowance
    report = verify(
        reference, candidates, data, tolerance="fp32", inputs_info=info, localize="auto", quant_risk=risk
    )
    lap("verify")
    if not report.passed:
        raise ReparamError("the parts' verification failed: the measurement would not be comparable")
    return {"stages": stages, "baseline_rss": baseline, "param_bytes": param_bytes}


def _worker_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reparam.bench.deploy_cost")
    parser.add_argument("what", choices=["parts"])
    parser.add_argument("spec", help="JSON object: checkpoint, arch, workdir")
    args = parser.parse_args(argv)
    spec = json.loads(args.spec)
    payload = _parts(spec["checkpoint"], spec["arch"], Path(spec["workdir"]))
    sys.stdout.write("\n" + _MARKER + json.dumps(payload) + "\n")
    return 0


# --- driver ----------------------------------------------------------------------------------------


def bench_deploy(
    arch: str = DEFAULT_DEPLOY_MODEL,
    rounds: int = 2,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> DeployCost:
    """``rounds`` paired rounds of `reparam deploy` and its parts on a fresh checkpoint of ``arch``."""
    from reparam.bench.machine import OtherLoad

    deploys: list[ProcessRun] = []
    parts: list[ProcessRun] = []
    legacy: list[ProcessRun] = []
    with tempfile.TemporaryDirectory(prefix="reparam-bench-deploy-") as tmp, OtherLoad() as load:
        root = Path(tmp)
        ckpt = make_checkpoint(arch, root / f"{arch}.pth", seed)
        for i in range(max(1, rounds)):
            if progress:
                progress(f"deploy vs its parts: {arch}, round {i + 1} of {rounds}")
            deploys.append(run_deploy(ckpt, arch, root / "out"))
            work = root / f"parts{i}"
            work.mkdir()
            parts.append(run_parts(ckpt, arch, work))
            legacy.append(run_deploy(ckpt, arch, root / "out", (LEGACY_FLAG,)))
    ratios = [d.wall_s / p.wall_s for d, p in zip(deploys, parts, strict=True)]
    notes = [
        f"{len(ratios)} paired rounds: `reparam deploy CKPT --arch {arch} -o OUT --to onnx --force`, then "
        f"the same work from the public pieces, then the deploy with `{LEGACY_FLAG}`, each a fresh process "
        "(imports included)"
    ]
    return DeployCost(arch, [1, 3, 224, 224], deploys, parts, summarize(ratios), notes, load.fraction, legacy)


if __name__ == "__main__":
    raise SystemExit(_worker_main())
