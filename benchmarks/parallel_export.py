"""Writing model.pt2 and then model.onnx, as `reparam deploy` does, against exporting model.onnx in
a forked process while model.pt2 is written (a design `reparam deploy` does not use).

    python benchmarks/parallel_export.py [--model acb_resnet50] [--size 224] [--rounds 2]

Each round runs both sides, each in a fresh process: the zoo model is converted, then the two
stages run (`save_artifact`, `export_onnx`), one after the other or side by side. Recorded per
side: the wall time of the two stages, and the peak memory of the process tree meanwhile: the
sum over its processes of their proportional set size (a page two processes share counts half in
each), sampled every 20 ms from ``/proc`` (Linux only). A forked child shares the parent's pages
until either writes them, so the sum of resident sets would count them twice. Prints the medians
and the median of the per-round ratios (forked / sequential).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from reparam.artifact import save_artifact
from reparam.engine import convert
from reparam.exporters.onnx import export_onnx
from reparam.numerics import randomize_batchnorm
from reparam.zoo import create_model

_MARKER = "PARALLEL-EXPORT "


def _tree_pss_mib(root: int) -> float:
    """The summed proportional set size of ``root`` and its children, in MiB."""
    pids = [root]
    for task in Path(f"/proc/{root}/task").iterdir():
        pids += [int(p) for p in (task / "children").read_text().split()]
    total_kib = 0
    for pid in pids:
        try:
            lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        except OSError:  # the child ended between the two reads
            continue
        total_kib += next(int(line.split()[1]) for line in lines if line.startswith("Pss:"))
    return total_kib / 1024


class _PeakSampler:
    """The highest :func:`_tree_pss_mib` of this process's tree while the sampler runs."""

    def __init__(self) -> None:
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _tree_pss_mib(os.getpid()))
            self._stop.wait(0.02)

    def __enter__(self) -> _PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _forked_onnx(result, x: torch.Tensor, path: Path) -> int:
    """Export ONNX in a forked child; the child's pid."""
    pid = os.fork()
    if pid == 0:  # the child: one thread (the parent's thread pool does not survive a fork)
        torch.set_num_threads(1)
        try:
            export_onnx(result, (x,), path)
        except BaseException:  # noqa: BLE001 -- reported through the exit status
            os._exit(1)
        os._exit(0)
    return pid


def _worker(model_name: str, size: int, forked: bool) -> dict[str, float]:
    torch.manual_seed(0)
    model = randomize_batchnorm(create_model(model_name).eval(), seed=0)
    x = torch.randn(1, 3, size, size)
    result = convert(model, (x,), check=False)
    del model
    with tempfile.TemporaryDirectory() as tmp, _PeakSampler() as sampler:
        before = _tree_pss_mib(os.getpid())
        start = time.perf_counter()
        child = _forked_onnx(result, x, Path(tmp) / "model.onnx") if forked else None
        save_artifact(result, (x,), Path(tmp) / "model.pt2")
        if child is None:
            export_onnx(result, (x,), Path(tmp) / "model.onnx")
        elif os.waitpid(child, 0)[1] != 0:
            raise SystemExit("the forked ONNX export failed")
        wall = time.perf_counter() - start
    return {"wall_s": wall, "peak_mib": sampler.peak, "before_mib": before}


def _run_side(args: argparse.Namespace, forked: bool) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--model", args.model, "--size", str(args.size)]
    cmd += ["--worker", "fork" if forked else "sequential"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    line = next(x for x in done.stdout.splitlines() if x.startswith(_MARKER))
    return json.loads(line[len(_MARKER) :])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="acb_resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--worker", choices=["sequential", "fork"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not Path("/proc/self/smaps_rollup").exists():
        raise SystemExit("this measurement reads /proc (Linux)")
    if args.worker:
        print(_MARKER + json.dumps(_worker(args.model, args.size, args.worker == "fork")))
        return 0
    rounds = [(_run_side(args, False), _run_side(args, True)) for _ in range(args.rounds)]
    print(f"{args.model} at {args.size}x{args.size}, {args.rounds} paired rounds: model.pt2 and model.onnx")
    for key, label in (("wall_s", "wall s"), ("peak_mib", "peak MiB (summed PSS)")):
        seq = statistics.median(s[key] for s, _ in rounds)
        par = statistics.median(f[key] for _, f in rounds)
        ratios = sorted(f[key] / s[key] for s, f in rounds)
        print(
            f"{label}: sequential {seq:.2f}, forked {par:.2f}, forked/sequential "
            f"{statistics.median(ratios):.2f} [{ratios[0]:.2f}-{ratios[-1]:.2f}]"
        )
    before = statistics.median(s["before_mib"] for s, _ in rounds)
    print(f"before the stages: {before:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
