"""`reparam inspect FILE`: what an artifact, a checkpoint, a deploy or a golden directory holds."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from reparam.api import inspect
from reparam.cli.commands import SUMMARIES


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help=SUMMARIES["inspect"],
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
    # inspect never loads pickled code; its refusal names the flag other commands take
    parser.set_defaults(func=run, field_flags={"trust_pickle": "--trust-pickle"})


def _dim_text(dim: Any) -> str:
    """A size as written in a shape: a number, an axis name, or a size computed from them (bracketed)."""
    text = str(dim).replace(" ", "")
    return text if text.isidentifier() or text.isdigit() else f"[{text}]"


def _io_lines(title: str, specs: list[dict[str, Any]]) -> list[str]:
    lines = [f"{title}:"]
    for s in specs:
        shape = "?" if s.get("shape") is None else "x".join(_dim_text(d) for d in s["shape"])
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
    info = inspect(Path(args.file))
    sys.stdout.write((json.dumps(info, indent=2, default=str) if args.json else render(info)) + "\n")
    return 0
