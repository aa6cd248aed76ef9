"""Locate the first block whose output diverges between the training model and a candidate.

Blocks are paired through the engine's ``RewriteRecord.boundaries`` (original block path -> fx
node name in the deploy GraphModule, or deploy module path), never by tensor names or positions,
because a fused graph has fewer tensors than the unfused one:

- reference (training form): forward hooks on the block modules; their firing order is the
  execution order used in the report.
- deploy GraphModule: a ``torch.fx.Interpreter`` that records the boundary nodes' values.
- ``.pt2`` artifact: ``torch.export`` keeps each node's provenance (``meta["from_node"]``), so a
  boundary fx node is found in the exported graph by name and read the same way.
- ONNX: the file carries ``{block path: tensor name}`` in its metadata (key
  ``reparam.boundaries``); those tensors are added as extra graph outputs of an in-memory copy
  and read from ONNX Runtime. Without that metadata an ONNX file cannot be localized and the
  report says so.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from reparam.errors import require
from reparam.verify.compare import BlockError, Divergence
from reparam.verify.metrics import compute_metrics
from reparam.verify.tolerance import Tolerance, judge, make_tolerance

ONNX_BOUNDARY_KEY = "reparam.boundaries"

Batch = Mapping[str, np.ndarray]


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, list | tuple):
        for v in value:
            t = _first_tensor(v)
            if t is not None:
                return t
    if isinstance(value, dict):
        for v in value.values():
            t = _first_tensor(v)
            if t is not None:
                return t
    return None


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
    return t.detach().to("cpu", dtype).clone().numpy()


def _torch_args(batch: Batch, input_names: Sequence[str] | None = None) -> list[torch.Tensor]:
    names = list(input_names) if input_names else list(batch)
    return [torch.from_numpy(np.ascontiguousarray(batch[n])) for n in names]


@torch.no_grad()
def module_block_outputs(
    model: nn.Module, paths: Sequence[str], batch: Batch, input_names: Sequence[str] | None = None
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Run ``model`` once and capture the output of each module in ``paths`` (first call only).

    Returns the values and the paths in the order their forward finished (execution order).
    """
    modules = dict(model.named_modules())
    values: dict[str, np.ndarray] = {}
    order: list[str] = []
    handles = []

    def hook_for(path: str):
        def hook(_mod, _inp, out):
            t = _first_tensor(out)
            if t is not None and path not in values:
                values[path] = _to_numpy(t)
                order.append(path)

        return hook

    try:
        for p in paths:
            if p in modules:
                handles.append(modules[p].register_forward_hook(hook_for(p)))
        model(*_torch_args(batch, input_names))
    finally:
        for h in handles:
            h.remove()
    return values, order


class _Recorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, wanted: Mapping[str, str]):
        super().__init__(gm)
        self._wanted = {node: path for path, node in wanted.items()}
        self.values: dict[str, np.ndarray] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        path = self._wanted.get(n.name)
        if path is not None:
            t = _first_tensor(out)
            if t is not None:
                self.values[path] = _to_numpy(t)
        return out


@torch.no_grad()
def graph_block_outputs(
    gm: fx.GraphModule, node_map: Mapping[str, str], batch: Batch, input_names: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """Run the fx graph with an Interpreter and return ``{block path: value of its boundary node}``."""
    rec = _Recorder(gm, node_map)
    rec.run(*_torch_args(batch, input_names))
    return rec.values


def _provenance_levels(node: fx.Node, max_depth: int = 4) -> list[set[str]]:
    """Source-node names by depth: [direct sources, their sources, ...]."""
    levels: list[set[str]] = []
    current = list(node.meta.get("from_node") or [])
    while current and len(levels) < max_depth:
        levels.append({src.name for src in current if getattr(src, "name", None)})
        current = [p for src in current for p in (getattr(src, "from_node", None) or [])]
    return levels


def exported_node_map(gm: fx.GraphModule, boundaries: Mapping[str, str]) -> dict[str, str]:
    """Map boundary fx node names to nodes of a re-traced (``torch.export``) graph via provenance.

    ``meta["from_node"]`` nests one level per tracing pass, and deeper levels name nodes of older
    graphs (whose names may collide with the deploy graph's), so each depth is tried on its own and
    the one matching the most boundaries wins (shallowest on ties). When an fx node was decomposed
    into several exported nodes, the last one in graph order holds its value.
    """
    wanted = {node: path for path, node in boundaries.items()}
    by_depth: list[dict[str, str]] = []
    for n in gm.graph.nodes:
        if n.op not in ("call_function", "call_module", "call_method"):
            continue
        for depth, names in enumerate(_provenance_levels(n)):
            while len(by_depth) <= depth:
                by_depth.append({})
            for src in names & wanted.keys():
                by_depth[depth][wanted[src]] = n.name
    return max(by_depth, key=len, default={})


def read_onnx_boundaries(model_proto) -> dict[str, str]:
    """The ``{block path: tensor name}`` mapping stored in an ONNX model's metadata ({} if absent)."""
    for prop in model_proto.metadata_props:
        if prop.key == ONNX_BOUNDARY_KEY:
            try:
                data = json.loads(prop.value)
            except json.JSONDecodeError:
                return {}
            return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
    return {}


def write_onnx_boundaries(model_proto, mapping: Mapping[str, str]) -> None:
    """Store ``{block path: tensor name}`` in the model's metadata (replacing an earlier mapping)."""
    props = [p for p in model_proto.metadata_props if p.key != ONNX_BOUNDARY_KEY]
    del model_proto.metadata_props[:]
    model_proto.metadata_props.extend(props)
    entry = model_proto.metadata_props.add()
    entry.key = ONNX_BOUNDARY_KEY
    entry.value = json.dumps(dict(mapping), sort_keys=True)


def onnx_block_outputs(
    path: str | os.PathLike, batch: Batch, mapping: Mapping[str, str] | None = None, optimization: str = "all"
) -> dict[str, np.ndarray]:
    """Run an ONNX file with its boundary tensors as extra outputs; ``{block path: value}``.

    ``mapping`` defaults to the one in the file's metadata. Tensors missing from the graph are skipped.
    """
    onnx = require("onnx", "onnx", "Localizing a divergence in an ONNX model")
    ort = require("onnxruntime", "onnx", "Localizing a divergence in an ONNX model")
    model = onnx.load(str(path))
    mapping = dict(mapping) if mapping is not None else read_onnx_boundaries(model)
    produced = {o for node in model.graph.node for o in node.output}
    existing = {o.name for o in model.graph.output}
    extra = {p: t for p, t in mapping.items() if t in produced}
    for tensor in sorted(set(extra.values()) - existing):
        model.graph.output.append(onnx.ValueInfoProto(name=tensor))
    opts = ort.SessionOptions()
    from reparam.runners.onnxruntime_runner import optimization_level

    opts.graph_optimization_level = optimization_level(ort, optimization)
    # Sidecar weights (external data) were loaded by onnx.load relative to the file.
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feeds = {i.name: np.asarray(batch[i.name]) for i in sess.get_inputs() if i.name in batch}
    if len(feeds) != len(sess.get_inputs()):
        return {}
    names = sorted(set(extra.values()))
    values = dict(zip(names, sess.run(names, feeds)))
    return {p: np.asarray(values[t], dtype=np.float32) for p, t in extra.items()}


def locate_divergence(
    reference: Mapping[str, np.ndarray],
    candidate: Mapping[str, np.ndarray],
    order: Sequence[str],
    tolerance: str | Tolerance = "fp32",
    *,
    output_failed: bool = True,
    noise: Mapping[str, float] | None = None,
) -> Divergence:
    """Compare block outputs in execution order; the first one failing the profile is the culprit.

    Only the profile's scale-relative and cosine limits apply to blocks (top-1 and per-output
    elementwise overrides are about final outputs). ``noise``: the reference's fp32 noise floor
    per block, which raises the scale-relative limit like it does for outputs.
    """
    tol = make_tolerance(make_tolerance(tolerance).profile)
    div = Divergence()
    first_reasons: list[str] = []
    for path in order:
        if path not in reference or path not in candidate:
            continue
        try:
            m = compute_metrics(reference[path], candidate[path])
        except ValueError:
            div.blocks.append(BlockError(path, float("nan"), float("nan"), float("nan"), False))
        else:
            m.ref_noise = (noise or {}).get(path)
            reasons = judge(m, tol, path, use_top1=False)
            div.blocks.append(BlockError(path, m.scale_rel, m.cosine, m.max_abs, not reasons, m.ref_noise))
            if reasons and div.first_diverging is None:
                first_reasons = reasons
        if not div.blocks[-1].passed and div.first_diverging is None:
            div.first_diverging = path
    if not div.blocks:
        div.note = "no block boundary could be matched between the reference and this candidate"
    elif div.first_diverging is not None and not output_failed:
        block = next(b for b in div.blocks if b.name == div.first_diverging)
        why = "; ".join(first_reasons) or f"scale-relative {block.scale_rel:.3g}"
        div.note = (
            f"warning: the outputs are within the {tol.profile.name} tolerance, but block {block.name} "
            f"exceeds the {tol.profile.name} limit for its own output ({why}): a difference there is "
            "damped before the output"
        )
    elif div.first_diverging is None and output_failed:
        worst = max(div.blocks, key=lambda b: b.scale_rel if np.isfinite(b.scale_rel) else np.inf)
        div.note = (
            f"no single block output exceeds the tolerance; the error grows gradually "
            f"(largest at {worst.name}: scale-relative {worst.scale_rel:.3g})"
        )
    return div
