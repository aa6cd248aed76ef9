"""Name the first tensor of the input graph whose value the rewritten graph gets wrong."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reparam.equivalence import judge_outputs
from reparam.onnx_reparam.graph import GraphView, _onnx, describe_node
from reparam.runners.onnxruntime_runner import OnnxRuntimeRunner


def _expose(model: Any, names: list[str], types: dict) -> None:
    """Make every tensor in ``names`` a graph output of ``model``."""
    onnx = _onnx()
    present = {o.name for o in model.graph.output}
    for name in names:
        if name not in present:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, types[name], None))


def _run_exposed(model: Any, feeds: Sequence[dict[str, np.ndarray]], folder: Path, tag: str) -> list[dict]:
    from reparam.exporters.onnx.save import save_onnx

    path = folder / f"{tag}.onnx"
    save_onnx(model, path, check=False)
    runner = OnnxRuntimeRunner(path, optimization="disable")
    return [runner.run(feed) for feed in feeds]


def first_diverging_tensor(
    reference: str | os.PathLike, candidate: str | os.PathLike, feeds: Sequence[dict], tolerance: Any
) -> str | None:
    """``"tensor (output of Op node)"`` for the first shared tensor that fails ``tolerance``, or None."""
    onnx = _onnx()
    ref_model, cand_model = onnx.load(os.fspath(reference)), onnx.load(os.fspath(candidate))
    view = GraphView(ref_model)
    cand_tensors = {o for n in cand_model.graph.node for o in n.output}
    ordered = [(o, n) for n in ref_model.graph.node for o in n.output if o in cand_tensors]
    types = {o: view.elem_type(o) for o, _ in ordered}
    ordered = [(o, n) for o, n in ordered if types[o]]
    names = [o for o, _ in ordered]
    _expose(ref_model, names, types)
    _expose(cand_model, names, types)
    with tempfile.TemporaryDirectory(prefix="reparam-localize-") as tmp:
        ref_runs = _run_exposed(ref_model, feeds, Path(tmp), "reference")
        cand_runs = _run_exposed(cand_model, feeds, Path(tmp), "candidate")
    for name, node in ordered:
        ref = {name: [r[name] for r in ref_runs]}
        cand = {name: [c[name] for c in cand_runs]}
        if not judge_outputs(ref, cand, tolerance).passed:
            return f"{name} (output of {node.op_type} node {describe_node(node)})"
    return None
