"""`reparam inspect FILE`: what an artifact, a checkpoint, a deploy or a golden directory holds."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from reparam.errors import ReparamError

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="show what an .onnx, engine, .pt2, checkpoint, deploy or golden directory holds",
        description="ONNX: inputs/outputs with shapes, op counts, opset and reparam metadata. TensorRT engine: "
        "what the header tells without a GPU, and the JSON sidecar written at build time. .pt2: inputs, "
        "outputs and the embedded reparam metadata. A checkpoint (any other file): its entries, recorded "
        "architecture and tensors, read without running code from it. A directory: the manifest of "
        "`reparam deploy` or of golden results (`verify --save-golden`).",
    )
    parser.add_argument(
        "file",
        metavar="FILE",
        help=".onnx, .engine/.plan/.trt, .pt2 or checkpoint file, or a directory written by "
        "`reparam deploy` or `reparam verify --save-golden`",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=run)


def _dims(shape: Any) -> list[Any]:
    return [int(d) if isinstance(d, int) or str(d).isdigit() else str(d) for d in shape]


def pt2_summary(path: Path) -> dict[str, Any]:
    """Inputs/outputs (shapes, symbolic dims as names) and embedded metadata of a .pt2 artifact."""
    import torch

    from reparam.artifact import read_artifact

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
    from reparam.torch_compat import node_leaves

    leaves = node_leaves(out.args[0])
    outputs = [spec(n) for n in leaves if isinstance(n, torch.fx.Node)]
    from reparam.tensors import output_names

    for o, name in zip(outputs, output_names(len(outputs))):
        o["name"] = name
    for i, name in zip(inputs, ["input"] if len(inputs) == 1 else [f"input{k}" for k in range(len(inputs))]):
        i["name"] = name
    if "fixed_axes" in artifact.metadata:  # free axes by name (batch, height, width), held ones by size
        from reparam.dynamic_shapes import axis_name

        held = {(int(f["input"]), int(f["axis"])): int(f["size"]) for f in artifact.metadata["fixed_axes"]}
        for k, i in enumerate(inputs):
            dims = i["shape"] or []
            i["shape"] = [
                held.get((k, a), axis_name(len(dims), a) if isinstance(d, str) else d)
                for a, d in enumerate(dims)
            ]
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
    from reparam.exporters.tensorrt.header import read_engine_sidecar, read_plan_header

    header = read_plan_header(path)
    return {
        "path": str(path),
        "kind": "tensorrt",
        "bytes": header.size,
        "header": header.to_dict(),
        "build": read_engine_sidecar(path),
    }


def summarize(path: Path) -> dict[str, Any]:
    """The summary for any supported file kind, or for a directory written by `reparam deploy`."""
    from reparam.io import check_input_file
    from reparam.runners import SUFFIX_KINDS, artifact_kind

    if path.is_dir():
        if (path / "golden.json").is_file():
            from reparam.verify.golden import golden_summary

            return golden_summary(path)
        return deploy_dir_summary(path)
    check_input_file(path, "file")
    if path.suffix.lower() in CHECKPOINT_SUFFIXES:
        from reparam.checkpoint import checkpoint_summary

        return checkpoint_summary(path)  # tensors and plain containers only: nothing is unpickled
    if path.suffix.lower() not in SUFFIX_KINDS:
        raise ReparamError(
            f"cannot tell what kind of file {path.name} is from its suffix {path.suffix!r}",
            hint="inspect reads .pt2, .onnx, .engine/.plan/.trt, checkpoints "
            f"({', '.join(CHECKPOINT_SUFFIXES)}) and directories of `reparam deploy` or golden results",
        )
    kind = artifact_kind(path)
    if kind == "onnx":
        from reparam.exporters.onnx import onnx_summary

        return {"kind": "onnx", **onnx_summary(path)}
    return engine_summary(path) if kind == "tensorrt" else pt2_summary(path)


def deploy_dir_summary(path: Path) -> dict[str, Any]:
    """The manifest of a deploy directory, each listed file checked against its sha256, and each artifact."""
    from reparam.describe import deploy_manifest
    from reparam.io import file_sha256
    from reparam.runners import SUFFIX_KINDS

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
        summarize(p) for p in sorted(path.iterdir()) if p.is_file() and p.suffix.lower() in SUFFIX_KINDS
    ]
    return {
        "path": str(path),
        "kind": "deploy-dir",
        "bytes": sum(p.stat().st_size for p in path.iterdir() if p.is_file()),
        "manifest": {k: v for k, v in manifest.items() if k != "files"},
        "files": files,
        "artifacts": artifacts,
    }


def _io_lines(title: str, specs: list[dict[str, Any]]) -> list[str]:
    lines = [f"{title}:"]
    for s in specs:
        shape = "?" if s.get("shape") is None else "x".join(str(d) for d in s["shape"])
        lines.append(f"  {s['name']}: {s.get('dtype') or '?'} [{shape}]")
    return lines


def _deploy_dir_lines(info: dict[str, Any]) -> list[str]:
    m = info["manifest"]
    verification = m.get("verification") or {}
    lines = [
        f"arch {m.get('arch') or '?'}, input shape {m.get('input_shape') or '?'}, "
        f"targets {', '.join(m.get('targets') or []) or '?'}, reparam {m.get('reparam_version') or '?'}",
        f"verification: {'PASSED' if verification.get('passed') else 'FAILED'}"
        + "".join(
            f", {name} {'pass' if ok else 'FAIL'}"
            for name, ok in (verification.get("candidates") or {}).items()
        ),
        "files:",
    ]
    lines += [f"  {f['name']}: {f['state']}" for f in info["files"]]
    for artifact in info["artifacts"]:
        lines += ["", render(artifact)]
    return lines


def _golden_lines(info: dict[str, Any]) -> list[str]:
    source = info.get("provenance") or {}
    inputs = source.get("inputs") or {}
    shapes = ", ".join("x".join(map(str, s)) for s in info.get("input_shapes") or []) or "?"
    return [
        f"golden results (format {info.get('version')}, reparam {info.get('reparam_version') or '?'}): "
        f"{info.get('batches')} batch(es) of {shapes}, from {inputs.get('source') or '?'}",
        f"reference: {source.get('reference') or '?'} (arch {source.get('arch') or '?'})",
        f"inputs: {', '.join(info.get('input_names') or []) or '?'}; "
        f"outputs: {', '.join(info['output_names']) or '?'}; {info['blocks']} block outputs",
        f"arrays.npz: {info['arrays']}",
    ]


def _checkpoint_lines(info: dict[str, Any]) -> list[str]:
    kwargs = json.dumps(info["arch_kwargs"]) if info.get("arch_kwargs") else ""
    dtypes = ", ".join(f"{k} {v}" for k, v in info["dtypes"].items())
    lines = [f"architecture: {info['arch'] or 'not recorded (pass --arch)'} {kwargs}".rstrip()]
    if info["entries"]:
        lines.append("entries:")
        lines += [f"  {k}: {v}" for k, v in info["entries"].items()]
    lines.append(
        f"state dict: {info['tensors']} tensors, {info['elements']:,} values ({dtypes}), "
        f"{info['batch_counters']} BatchNorm batch counters"
    )
    lines += [f"  {k}: {'x'.join(map(str, v)) or 'scalar'}" for k, v in info["first_tensors"].items()]
    if info["tensors"] > len(info["first_tensors"]):
        lines.append(f"  ... ({info['tensors'] - len(info['first_tensors'])} more)")
    lines += [f"note: {n}" for n in info["notes"]]
    return lines


def render(info: dict[str, Any]) -> str:
    """Plain-text view of a summary."""
    lines = [f"{info['path']} ({info['kind']}, {info['bytes']:,} bytes)"]
    if info["kind"] == "deploy-dir":
        lines += _deploy_dir_lines(info)
    elif info["kind"] == "golden":
        lines += _golden_lines(info)
    elif info["kind"] == "checkpoint":
        lines += _checkpoint_lines(info)
    elif info["kind"] in ("onnx", "pt2"):
        lines += _io_lines("inputs", info["inputs"]) + _io_lines("outputs", info["outputs"])
        if info["kind"] == "onnx":
            opsets = ", ".join(f"{d} {v}" for d, v in info["opset"].items())
            lines.append(
                f"opset: {opsets}, ir {info['ir_version']}, producer {info['producer'] or '?'}, "
                f"{info['nodes']} nodes, {info['parameters']:,} parameters"
                + (f", external data {info['external_data']}" if info["external_data"] else "")
            )
        lines.append("ops: " + (", ".join(f"{k} {v}" for k, v in info["op_counts"].items()) or "none"))
        if info["metadata"]:
            lines.append("metadata:")
            for k, v in info["metadata"].items():
                text = v if isinstance(v, str) else json.dumps(v)
                lines.append(f"  {k}: {text if len(text) <= 200 else text[:197] + '...'}")
    else:
        h = info["header"]
        lines.append(
            f"header: TensorRT major {h['tensorrt_major'] if h['tensorrt_major'] is not None else 'unknown'}"
            f" ({h['note']})"
        )
        lines.append(f"  first bytes: {h['leading_bytes']}")
        build = info["build"]
        if build is None:
            lines.append("no build sidecar (<engine>.json): built elsewhere, provenance unknown")
        else:
            lines.append("build:")
            for k, v in build.items():
                lines.append(f"  {k}: {v if isinstance(v, str) else json.dumps(v)}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    info = summarize(Path(args.file))
    sys.stdout.write((json.dumps(info, indent=2, default=str) if args.json else render(info)) + "\n")
    return 0
