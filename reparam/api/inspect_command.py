"""`inspect`: what an artifact, a checkpoint, a deploy or a golden-results directory holds."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from reparam.artifact import read_artifact
from reparam.checkpoint import checkpoint_summary
from reparam.describe import deploy_manifest
from reparam.dynamic_shapes import axis_name
from reparam.errors import ReparamError
from reparam.exporters.onnx import onnx_summary
from reparam.exporters.tensorrt.header import read_engine_sidecar, read_plan_header
from reparam.io import check_input_file, file_sha256
from reparam.runners import SUFFIX_KINDS, artifact_kind
from reparam.tensors import output_names
from reparam.torch_compat import node_leaves
from reparam.verify.golden import golden_summary

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors")
_SYMBOL = re.compile(r"\bs\d+\b")  # a free size in torch.export's naming


def _dims(shape: Any) -> list[Any]:
    return [int(d) if isinstance(d, int) or str(d).isdigit() else str(d) for d in shape]


def _name_axes(inputs: list[dict], outputs: list[dict], fixed_axes: list[dict]) -> None:
    """Free input axes by name (batch, height, width), held ones by size; output sizes in those names.

    torch.export calls a free size ``s77``; an output size is that symbol or an expression of
    several (``((s53 - 1)//2) + 1``), shown with each symbol's axis name as ONNX files show theirs.
    """
    held = {(int(f["input"]), int(f["axis"])): int(f["size"]) for f in fixed_axes}
    names: dict[str, str] = {}
    for k, i in enumerate(inputs):
        dims = i["shape"] or []
        for a, d in enumerate(dims):
            if isinstance(d, str) and (k, a) not in held:
                names.setdefault(d, axis_name(len(dims), a))
        i["shape"] = [held.get((k, a), names.get(d, d)) for a, d in enumerate(dims)]
    for o in outputs:
        if o["shape"] is not None:
            o["shape"] = [
                _SYMBOL.sub(lambda m: names.get(m[0], m[0]), d) if isinstance(d, str) else d
                for d in o["shape"]
            ]


def pt2_summary(path: Path) -> dict[str, Any]:
    """Inputs/outputs (shapes, symbolic dims as names) and embedded metadata of a .pt2 artifact."""
    artifact = read_artifact(path)
    module = artifact.module

    def spec(node: Any) -> dict[str, Any]:
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor):
            return {
                "name": node.name,
                "shape": _dims(val.shape),
                "dtype": str(val.dtype).replace("torch.", ""),
            }
        return {"name": node.name, "shape": None, "dtype": None}

    nodes = list(module.graph.nodes)
    inputs = [spec(n) for n in nodes if n.op == "placeholder"]
    out = next(n for n in nodes if n.op == "output")
    leaves = node_leaves(out.args[0])
    outputs = [spec(n) for n in leaves if isinstance(n, torch.fx.Node)]
    for o, name in zip(outputs, output_names(len(outputs))):
        o["name"] = name
    for i, name in zip(inputs, ["input"] if len(inputs) == 1 else [f"input{k}" for k in range(len(inputs))]):
        i["name"] = name
    if "fixed_axes" in artifact.metadata:
        _name_axes(inputs, outputs, artifact.metadata["fixed_axes"])
    meta = dict(artifact.metadata)
    report = meta.pop("report", None)
    meta.pop("record", None)
    ops: dict[str, int] = {}
    for n in nodes:
        if n.op == "call_function":
            key = getattr(n.target, "__name__", str(n.target))
            ops[key] = ops.get(key, 0) + 1
    return {
        "path": str(path),
        "kind": "pt2",
        "bytes": path.stat().st_size,
        "inputs": inputs,
        "outputs": outputs,
        "op_counts": dict(sorted(ops.items(), key=lambda kv: -kv[1])),
        "metadata": meta,
        "report_summary": {
            k: report[k] for k in ("passes", "check", "stats") if isinstance(report, dict) and k in report
        }
        or None,
    }


def engine_summary(path: Path) -> dict[str, Any]:
    header = read_plan_header(path)
    return {
        "path": str(path),
        "kind": "tensorrt",
        "bytes": header.size,
        "header": header.to_dict(),
        "build": read_engine_sidecar(path),
    }


def inspect(path: str | os.PathLike) -> dict[str, Any]:
    """What a file or directory holds: an artifact, a checkpoint, a deploy or golden-results directory."""
    path = Path(path)
    if path.is_dir():
        if (path / "golden.json").is_file():
            return golden_summary(path)
        return deploy_dir_summary(path)
    check_input_file(path, "file")
    if path.suffix.lower() in CHECKPOINT_SUFFIXES:
        return checkpoint_summary(path)  # tensors and plain containers only: nothing is unpickled
    if path.suffix.lower() not in SUFFIX_KINDS:
        raise ReparamError(
            f"cannot tell what kind of file {path.name} is from its suffix {path.suffix!r}",
            hint="inspect reads .pt2, .onnx, .engine/.plan/.trt, checkpoints "
            f"({', '.join(CHECKPOINT_SUFFIXES)}) and directories of `reparam deploy` or golden results",
        )
    kind = artifact_kind(path)
    if kind == "onnx":
        return {"kind": "onnx", **onnx_summary(path)}
    return engine_summary(path) if kind == "tensorrt" else pt2_summary(path)


def deploy_dir_summary(path: Path) -> dict[str, Any]:
    """The manifest of a deploy directory, each listed file checked against its sha256, and each artifact."""
    manifest = deploy_manifest(path)
    files = []
    for entry in manifest.get("files") or []:
        name = str(entry.get("name", "")) if isinstance(entry, dict) else ""
        target = path / name
        if not name or Path(name).name != name:
            continue  # a manifest names files of its own directory only
        state = "missing"
        if target.is_file():
            state = "ok" if file_sha256(target) == entry.get("sha256") else "changed since deploy"
        files.append({"name": name, "bytes": entry.get("bytes"), "state": state})
    artifacts = [
        inspect(p) for p in sorted(path.iterdir()) if p.is_file() and p.suffix.lower() in SUFFIX_KINDS
    ]
    return {
        "path": str(path),
        "kind": "deploy-dir",
        "bytes": sum(p.stat().st_size for p in path.iterdir() if p.is_file()),
        "manifest": {k: v for k, v in manifest.items() if k != "files"},
        "files": files,
        "artifacts": artifacts,
    }
