"""Describe the machine a benchmark ran on: CPU, cores, library versions, threads."""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path


@dataclass
class MachineInfo:
    """What a reader needs to judge (and reproduce) the numbers."""

    cpu_model: str
    logical_cpus: int | None
    usable_cpus: int | None
    physical_cores: int | None
    os: str
    python: str
    versions: dict[str, str] = field(default_factory=dict)
    torch_threads: int | None = None
    ort_threads: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        """Human-readable ``key: value`` lines."""
        cores = f"{self.logical_cpus} logical CPUs"
        if self.physical_cores:
            cores += f", {self.physical_cores} physical cores"
        if self.usable_cpus is not None and self.usable_cpus != self.logical_cpus:
            cores += f", {self.usable_cpus} usable by this process"
        versions = ", ".join(f"{k} {v}" for k, v in self.versions.items())
        out = [
            f"CPU: {self.cpu_model}",
            f"cores: {cores}",
            f"OS: {self.os}",
            f"Python {self.python}; {versions}",
        ]
        out.append(f"threads: torch {self.torch_threads}, ONNX Runtime intra-op {self.ort_threads}")
        return out


def _cpuinfo(path: Path = Path("/proc/cpuinfo")) -> tuple[str | None, int | None]:
    """CPU model name and number of physical cores from /proc/cpuinfo (Linux), or Nones."""
    try:
        text = path.read_text()
    except OSError:
        return None, None
    return parse_cpuinfo(text)


def parse_cpuinfo(text: str) -> tuple[str | None, int | None]:
    """Model name and physical core count (distinct (physical id, core id) pairs) from cpuinfo text."""
    model = None
    cores: set[tuple[str, str]] = set()
    phys = core = None
    for line in text.splitlines() + [""]:
        if not line.strip():
            if core is not None:
                cores.add((phys or "0", core))
            phys = core = None
            continue
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name" and model is None:
            model = value
        elif key == "physical id":
            phys = value
        elif key == "core id":
            core = value
    return model, (len(cores) or None)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def describe_machine(torch_threads: int | None = None, ort_threads: int | None = None) -> MachineInfo:
    """Collect CPU model, core counts, OS, Python and the versions of the libraries that matter."""
    model, physical = _cpuinfo()
    if not model:
        model = platform.processor() or platform.machine() or "unknown"
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = None
    versions = {}
    for dist in ("reparam", "torch", "onnxruntime", "onnx", "onnxsim", "numpy"):
        v = _version(dist)
        if v:
            versions[dist] = v
    return MachineInfo(
        cpu_model=model,
        logical_cpus=os.cpu_count(),
        usable_cpus=usable,
        physical_cores=physical,
        os=f"{platform.system()} {platform.release()}",
        python=sys.version.split()[0],
        versions=versions,
        torch_threads=torch_threads,
        ort_threads=ort_threads,
    )


def _cpu_ticks() -> tuple[int, int, int] | None:
    """(busy ticks of all CPUs, ticks of this process and its reaped children, total ticks), Linux only."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
        own_fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    ticks = [int(v) for v in first[1:9]]  # user nice system idle iowait irq softirq steal
    total = sum(ticks)
    busy = total - ticks[3] - ticks[4]
    own = sum(int(v) for v in own_fields[11:15])  # utime stime cutime cstime (fields 14-17 of stat)
    return busy, own, total


class OtherLoad:
    """Share of the machine's CPU time used by *other* processes while inside the ``with`` block.

    A benchmark cannot make a shared machine quiet, but it can say when it was not: 0.0 means nothing
    else ran; 0.5 means other processes used half of all CPUs. ``None`` where /proc is unavailable.
    """

    def __init__(self) -> None:
        self.fraction: float | None = None
        self._start: tuple[int, int, int] | None = None

    def __enter__(self) -> OtherLoad:
        self._start = _cpu_ticks()
        return self

    def __exit__(self, *exc: object) -> None:
        end = _cpu_ticks()
        if self._start is None or end is None or end[2] <= self._start[2]:
            return
        busy = end[0] - self._start[0]
        own = end[1] - self._start[1]
        self.fraction = min(1.0, max(0.0, (busy - own) / (end[2] - self._start[2])))
