"""Where `reparam deploy`'s time and memory go, call by call, paired between two setups.

    python benchmarks/deploy_profile.py [--model acb_resnet50] [--rounds 3] [--size 224]
        [--compare legacy|freeze|against] [--against DIR]

A zoo checkpoint (random BatchNorm statistics) is made once; each round runs two fresh processes,
one after the other, each calling ``reparam.deploy`` (ONNX target) with the heavy calls inside it
wrapped by timers: torch.export's capture, save and load, torch.onnx's export and its
``run_decompositions``, onnxsim, the free-axes check of the ONNX file, the verifier's memory
release, the reports and the plot. Per call it records the seconds spent and how far the
process's peak resident set rose meanwhile. The two processes of a round differ by ``--compare``:

- ``freeze``: none against ``gc.freeze()`` after the imports (tried for the ``reparam`` command:
  no measurable gain, so it does not freeze);
- ``legacy``: model.onnx from the TorchScript exporter (``--legacy-exporter``) against the default;
- ``against``: this checkout against another one at ``--against DIR`` (put first on the path).

Prints the median of each call's time and peak rise for both, the stages (between deploy's
progress lines) and the median of the per-round wall ratios (second / first).
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_MARKER = "DEPLOY-PROFILE "


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _wrap(owner: Any, name: str, label: str, calls: dict[str, list[float]]) -> None:
    """Replace ``owner.name`` by a timer that adds (seconds, peak rise in MiB) under ``label``
    (nothing where the code profiled has no such name: another commit's, with ``--against``)."""
    real = getattr(owner, name, None)
    if real is None:
        return

    @functools.wraps(real)
    def timed(*args: Any, **kwargs: Any) -> Any:
        start, peak = time.perf_counter(), _peak_mib()
        try:
            return real(*args, **kwargs)
        finally:
            spent = calls.setdefault(label, [0.0, 0.0])
            spent[0] += time.perf_counter() - start
            spent[1] = max(spent[1], _peak_mib() - peak)

    if isinstance(inspect.getattr_static(owner, name), classmethod):  # `real` is bound already
        setattr(owner, name, classmethod(lambda _cls, *args, **kwargs: timed(*args, **kwargs)))
    else:
        setattr(owner, name, timed)


def _instrument(calls: dict[str, list[float]]) -> None:
    import torch.export

    import reparam.api.deploy_command as deploy_command
    import reparam.artifact as artifact
    import reparam.exporters.onnx.export as onnx_export
    import reparam.verify.core as verify_core
    from reparam.verify.report import VerifyReport

    _wrap(artifact, "export_program", ".pt2 capture (export_program)", calls)
    _wrap(torch.export, "export", "torch.export.export", calls)
    _wrap(torch.export, "save", "torch.export.save", calls)
    _wrap(torch.export, "load", "torch.export.load", calls)
    _wrap(torch.export.ExportedProgram, "run_decompositions", "run_decompositions", calls)
    _wrap(onnx_export, "_run_exporter", "torch.onnx.export", calls)
    try:  # torch.onnx's operator registry, built on every dynamo export (internal: where it exists)
        from torch.onnx._internal.exporter._registration import ONNXRegistry

        _wrap(ONNXRegistry, "from_torchlib", "  of it: torchlib registry", calls)
    except ImportError:
        pass
    _wrap(onnx_export, "_simplify", "onnxsim", calls)
    _wrap(onnx_export, "_check_free_axes", "free-axes check", calls)
    _wrap(onnx_export, "save_onnx", "write model.onnx", calls)
    _wrap(verify_core, "release_freed_memory", "verifier's release", calls)
    _wrap(deploy_command, "_write_results", "reports, plot, hashes", calls)
    _wrap(VerifyReport, "write_plot", "errors.png", calls)


def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One deploy in this process, as the spec says; its calls, stages and wall time."""
    start = time.perf_counter()
    import gc

    import reparam

    calls: dict[str, list[float]] = {}
    _instrument(calls)
    if spec["freeze"]:
        gc.freeze()
    stages: list[tuple[str, float]] = []
    began = time.perf_counter()
    result = reparam.deploy(
        reparam.ModelSource(spec["checkpoint"], arch=spec["arch"]),
        spec["out"],
        options=reparam.DeployOptions(
            targets=["onnx"], force=True, **({"dynamo": False} if spec["legacy"] else {})
        ),
        inputs=reparam.InputSpec(input_shape=(1, 3, spec["size"], spec["size"])),
        progress=lambda text: stages.append((text.split(" ")[0], time.perf_counter() - began)),
    )
    if not result.passed:
        raise SystemExit("the deploy failed its verification: the profile would not be comparable")
    ends = [t for _, t in stages[1:]] + [time.perf_counter() - began]
    stage_s: dict[str, float] = {}
    for (name, t0), t1 in zip(stages, ends):
        stage_s[name] = stage_s.get(name, 0.0) + t1 - t0
    return {
        "imports": began - start,
        "stages": stage_s,
        "calls": calls,
        "wall": time.perf_counter() - start,
        "peak_mib": _peak_mib(),
    }


def _run_side(spec: dict[str, Any], path_first: str | None) -> dict[str, Any]:
    env = dict(os.environ)
    if path_first:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (path_first, env.get("PYTHONPATH")) if p)
    out = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    for line in reversed(out.stdout.splitlines()):
        if line.startswith(_MARKER):
            return json.loads(line[len(_MARKER) :])
    raise SystemExit(f"a profiled deploy failed:\n{out.stderr[-2000:]}")


def _sides(args: argparse.Namespace) -> list[tuple[str, dict[str, Any], str | None]]:
    """(label, the spec's changes, a checkout put first on the path) of the two sides."""
    if args.compare == "freeze":
        return [("no freeze", {}, None), ("freeze", {"freeze": True}, None)]
    if args.compare == "legacy":
        return [("dynamo exporter", {}, None), ("legacy exporter", {"legacy": True}, None)]
    if not args.against:
        raise SystemExit("--compare against needs --against DIR (a checkout of another commit)")
    return [(f"at {args.against}", {}, args.against), ("this checkout", {}, None)]


def _median(runs: list[dict[str, Any]], pick: Callable[[dict[str, Any]], float | None]) -> str:
    values = [v for v in map(pick, runs) if v is not None]
    return f"{statistics.median(values):.2f}" if values else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="acb_resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compare", choices=["freeze", "legacy", "against"], default="legacy")
    parser.add_argument("--against", help="a checkout of another commit (for --compare against)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        sys.stdout.write("\n" + _MARKER + json.dumps(_worker(json.loads(args.worker))) + "\n")
        return 0
    from reparam.bench.deploy_cost import make_checkpoint

    sides = _sides(args)
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in sides}
    with tempfile.TemporaryDirectory(prefix="reparam-deploy-profile-") as tmp:
        ckpt = make_checkpoint(args.model, Path(tmp) / f"{args.model}.pth")
        base = {"checkpoint": str(ckpt), "arch": args.model, "out": str(Path(tmp) / "out")}
        base |= {"size": args.size, "freeze": False, "legacy": False}
        for _ in range(args.rounds):
            for label, changes, path_first in sides:
                runs[label].append(_run_side(base | changes, path_first))
    first, second = (label for label, _, _ in sides)
    print(f"{args.model} at {args.size}x{args.size}, {args.rounds} paired rounds: {first} | {second}")
    print("(medians; per call: seconds, and MiB the process's peak rose during the call)")
    calls = dict.fromkeys(c for label in runs for r in runs[label] for c in r["calls"])
    stages = dict.fromkeys(s for label in runs for r in runs[label] for s in r["stages"])
    for name in ("imports", *stages):
        pick = (lambda r: r["imports"]) if name == "imports" else (lambda r, n=name: r["stages"].get(n))
        print(f"  stage {name:28s} {_median(runs[first], pick):>6} s | {_median(runs[second], pick):>6} s")
    for name in calls:
        cells = []
        for label in (first, second):
            secs = _median(runs[label], lambda r, n=name: r["calls"].get(n, [None])[0])
            rise = _median(runs[label], lambda r, n=name: r["calls"].get(n, [0, None])[1])
            cells.append(f"{secs:>6} s +{rise:>5} MiB")
        print(f"  call  {name:28s} {cells[0]} | {cells[1]}")
    for key, unit in (("wall", "s"), ("peak_mib", "MiB")):
        print(
            f"  {key:34s} {_median(runs[first], lambda r, k=key: r[k]):>6} {unit} | "
            f"{_median(runs[second], lambda r, k=key: r[k]):>6} {unit}"
        )
    ratios = sorted(b["wall"] / a["wall"] for a, b in zip(runs[first], runs[second]))
    print(f"  wall {second} / {first}: {statistics.median(ratios):.3f} [{ratios[0]:.3f}-{ratios[-1]:.3f}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
