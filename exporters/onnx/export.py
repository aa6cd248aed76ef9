"""Export a PyTorch model to ONNX: named I/O, a named dynamic batch axis, onnxsim, checker, provenance."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reparam import __version__
from reparam.dynamic_shapes import global_pools_stay_free
from reparam.engine.core import ConversionResult
from reparam.equivalence.boundaries import ONNX_METADATA_KEY, Boundaries, BoundaryKind
from reparam.errors import ReparamError, require
from reparam.exporters.onnx.save import needs_external_data, save_onnx
from reparam.exporters.onnx.weightless import graft, infer_shapes, split_weights
from reparam.numerics import scale_relative_error
from reparam.tensors import as_args, batch_of_two, eval_mode, tensor_leaves
from reparam.tensors import output_names as conventional_output_names
from reparam.torch_compat import export_graphs_unprinted, node_leaves

BATCH_DIM = "batch"
META_PREFIX = "reparam."
BOUNDARY_KEY = ONNX_METADATA_KEY
_BOUNDARY_OUTPUT = "reparam_boundary_{}"


@dataclass
class OnnxExportResult:
    """What ``export_onnx`` wrote and how."""

    path: Path
    sidecar: Path | None
    exporter: str  # "dynamo" or "legacy"
    opset: int
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    simplified: bool
    op_counts: dict[str, int]
    metadata: dict[str, str]
    boundaries: Boundaries = field(default_factory=lambda: Boundaries(BoundaryKind.ONNX_TENSOR))
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def normalize_dynamic_axes(
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_batch: bool,
    dynamic_axes: Mapping[str, Mapping[int, str] | Sequence[int]] | None,
) -> dict[str, dict[int, str]]:
    """Merge the batch axis and user axes into ``{tensor name: {axis: dim name}}``; validate names."""
    known = set(input_names) | set(output_names)
    axes: dict[str, dict[int, str]] = {}
    if dynamic_batch:
        for name in [*input_names, *output_names]:
            axes[name] = {0: BATCH_DIM}
    for name, spec in (dynamic_axes or {}).items():
        if name not in known:
            raise ReparamError(
                f"dynamic_axes names {name!r}, which is not an input or output",
                hint=f"use one of {sorted(known)}",
            )
        entries = dict(spec) if isinstance(spec, Mapping) else {int(a): f"{name}_dim{int(a)}" for a in spec}
        axes.setdefault(name, {}).update({int(a): str(d) for a, d in entries.items()})
    return axes


def _boundary_module(
    model: nn.Module, args: tuple, boundaries: Boundaries | None
) -> tuple[nn.Module, dict[str, str], int | None]:
    """A copy of a deploy GraphModule that also returns each block-boundary value as an output.

    Returns ``(module, {block path: output name}, number of the model's own outputs)``; ``(model,
    {}, None)`` when there are no graph-node boundaries. Naming the boundary values as outputs pins
    their tensor names in the ONNX graph. The copy's one run also counts the model's outputs.
    """
    if (
        not isinstance(model, torch.fx.GraphModule)
        or not boundaries
        or boundaries.kind is not BoundaryKind.GRAPH_NODE
    ):
        return model, {}, None
    graph = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    out_node = None
    for node in model.graph.nodes:
        if node.op == "output":
            out_node = node
            continue
        env[node] = graph.node_copy(node, lambda n: env[n])
    leaves = node_leaves(out_node.args[0])
    if not leaves or not all(isinstance(n, torch.fx.Node) for n in leaves):
        return model, {}, None
    # A loaded .pt2 renamed the nodes: in_graph follows their provenance to the deploy graph's.
    boundaries = boundaries.in_graph(model)
    by_name = {n.name: n for n in model.graph.nodes}
    chosen: dict[str, torch.fx.Node] = {}
    for path, node_name in boundaries.items():
        node = by_name.get(node_name)
        if node is None or node.op in ("placeholder", "get_attr", "output") or node in leaves:
            continue
        chosen[path] = node
    if not chosen:
        return model, {}, None
    # One value can end several blocks (a stage and its last block): one output, every path mapped to it.
    unique = list(dict.fromkeys(chosen.values()))
    graph.output(tuple(env[n] for n in [*leaves, *unique]))
    wrapper = torch.fx.GraphModule(model, graph)
    with torch.no_grad():
        values = wrapper(*args)
    # every model output and every boundary one tensor, or keep the plain model
    if len(values) != len(leaves) + len(unique) or not all(isinstance(v, torch.Tensor) for v in values):
        return model, {}, None
    index = {node: i for i, node in enumerate(unique)}
    return wrapper, {path: _BOUNDARY_OUTPUT.format(index[node]) for path, node in chosen.items()}, len(leaves)


def _forget_rewriter_matches() -> None:
    """Clear the last match onnxscript's module-level rewrite rules keep after the dynamo exporter's optimizer.

    That match holds a node of the exported graph, and through it every weight, for the rest of the process.
    """
    for name, module in list(sys.modules.items()):
        if not name.startswith("onnxscript.rewriter"):
            continue
        for value in list(vars(module).values()):
            rules = vars(value).get("rules") if hasattr(value, "__dict__") else None
            for rule in rules if isinstance(rules, list) else [value]:
                matcher = vars(rule).get("_matcher") if hasattr(rule, "__dict__") else None
                state = vars(matcher) if hasattr(matcher, "__dict__") else {}
                for attr in ("_current_node", "_graph", "_tracer", "_match"):
                    if attr in state:
                        state[attr] = None


def _run_exporter(
    model: nn.Module,
    args: tuple,
    *,
    dynamo: bool,
    opset: int | None,
    input_names: list[str],
    output_names: list[str],
    axes: dict[str, dict[int, str]],
    workdir: Path,
) -> Any:
    onnx = require("onnx", "onnx", "ONNX export")
    log = io.StringIO()
    # The dynamo exporter logs a warning per torchvision op it cannot register when torchvision is
    # absent; reparam never needs those ops.
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        # global pools written with sizes read in forward stay free along height and width
        # export_graphs_unprinted: a capture torch retries in another form prints its partial graph
        with (
            contextlib.redirect_stdout(log),
            warnings.catch_warnings(),
            global_pools_stay_free(),
            export_graphs_unprinted(),
        ):
            warnings.simplefilter("ignore")
            if dynamo:
                # torch.export relates the sizes itself (a model may need height == width); an axis
                # it has to hold is reported by name afterwards (check_dynamic_axes)
                specs = [
                    {ax: torch.export.Dim.AUTO for ax in axes[name]}
                    if isinstance(a, torch.Tensor) and name in axes
                    else None
                    for name, a in zip(input_names, args)
                ]
                program = torch.onnx.export(
                    model,
                    batch_of_two(args, [0 in axes.get(name, {}) for name in input_names]),
                    None,
                    dynamo=True,
                    opset_version=opset,
                    input_names=input_names,
                    output_names=output_names,
                    dynamic_shapes=tuple(specs) if axes else None,
                    verbose=False,
                )
                proto = program.model_proto
            else:
                raw = workdir / "raw.onnx"
                # traced at the example's sizes (a batch of two would hold twice the activations):
                # the file is run at other sizes afterwards (_check_free_axes)
                torch.onnx.export(
                    model,
                    args,
                    str(raw),
                    dynamo=False,
                    opset_version=opset,
                    input_names=input_names,
                    output_names=output_names,
                    dynamic_axes=axes or None,
                    do_constant_folding=True,
                )
                proto = onnx.load(str(raw))
    except ReparamError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        other = "the legacy exporter (`dynamo=False`)" if dynamo else "the dynamo exporter"
        raise ReparamError(
            f"torch.onnx ({'dynamo' if dynamo else 'legacy'} exporter) failed: {type(exc).__name__}: {first}",
            hint=f"try {other}, or another opset (`opset`)",
        ) from exc
    finally:
        registration.setLevel(level)
        if dynamo:
            _forget_rewriter_matches()
    return proto


def _dim_params(value_info: Any) -> dict[int, str]:
    dims = value_info.type.tensor_type.shape.dim
    return {i: d.dim_param for i, d in enumerate(dims) if d.HasField("dim_param")}


def _rename_dims(model: Any, axes: dict[str, dict[int, str]]) -> None:
    """Give the dynamic dims of the graph I/O the requested names, and the same names everywhere inside."""
    renames: dict[str, str] = {}
    for vi in [*model.graph.input, *model.graph.output]:
        for ax, wanted in axes.get(vi.name, {}).items():
            dims = vi.type.tensor_type.shape.dim
            if ax < len(dims) and dims[ax].HasField("dim_param") and dims[ax].dim_param != wanted:
                renames.setdefault(dims[ax].dim_param, wanted)
    if not renames:
        return
    for vi in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param in renames:
                d.dim_param = renames[d.dim_param]


def check_dynamic_axes(model: Any, axes: dict[str, dict[int, str]]) -> list[str]:
    """Names of the requested dynamic axes that are not symbolic in the model ('input[0]', ...)."""
    missing = []
    for vi in [*model.graph.input, *model.graph.output]:
        params = _dim_params(vi)
        for ax in axes.get(vi.name, {}):
            if ax not in params:
                missing.append(f"{vi.name}[{ax}]")
    return missing


def _simplify(
    model: Any, args: tuple, input_names: list[str], axes: dict[str, dict[int, str]]
) -> tuple[Any, str]:
    """onnxsim with its own numeric check; dynamic dims stay symbolic. Returns (model, note).

    Where onnxsim's rewrites cannot read the weights (`split_weights`), it works on the graph's
    light view and its result is grafted into ``model``: the weights are never copied.
    """
    onnxsim = require("onnxsim", "onnx", "ONNX simplification")
    shapes = {n: list(a.shape) for n, a in zip(input_names, args) if isinstance(a, torch.Tensor)}
    split = split_weights(model)
    source = split[0] if split else model
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            simplified, ok = onnxsim.simplify(source, check_n=0, test_input_shapes=shapes)
            # onnxsim's own check (both graphs run on random inputs) only where it changed something:
            # after the dynamo exporter's optimizer it usually changes nothing
            changed = ok and not same_computation(simplified, source)
            if changed:
                ok = onnxsim.model_checking.compare(simplified, source, 1, shapes, verbose=False)
    except Exception as exc:
        return model, f"onnxsim failed ({type(exc).__name__}: {str(exc)[:200]}); kept the unsimplified graph"
    if not ok:
        return model, "onnxsim's check failed; kept the unsimplified graph"
    lost = check_dynamic_axes(simplified, axes)
    if lost:
        return model, f"onnxsim made {', '.join(lost)} static; kept the unsimplified graph"
    if not changed:
        return model, ""
    if split:
        simplified = graft(model, simplified, split[1])
    # onnxsim records its settings and every removed node in metadata_props; keep the file's metadata ours.
    props = [p for p in simplified.metadata_props if not p.key.startswith("onnxsim.")]
    del simplified.metadata_props[:]
    simplified.metadata_props.extend(props)
    return simplified, ""


def _node_key(node: Any) -> tuple:
    attributes = tuple(sorted(a.SerializeToString(deterministic=True) for a in node.attribute))
    return node.op_type, node.domain, tuple(node.input), tuple(node.output), attributes


def same_computation(a: Any, b: Any) -> bool:
    """Whether two ONNX models compute the same thing the same way: equal nodes (operator, inputs,
    outputs, attributes) in equal order, equal graph inputs and outputs, equal initializers.
    Names of nodes, their metadata and inferred shapes may differ."""
    ga, gb = a.graph, b.graph
    if [_node_key(n) for n in ga.node] != [_node_key(n) for n in gb.node]:
        return False
    if [(i.name, i.type.SerializeToString()) for i in [*ga.input, *ga.output]] != [
        (i.name, i.type.SerializeToString()) for i in [*gb.input, *gb.output]
    ]:
        return False
    weights = {i.name: i.SerializeToString(deterministic=True) for i in ga.initializer}
    return weights == {i.name: i.SerializeToString(deterministic=True) for i in gb.initializer}


def _strip_boundary_outputs(model: Any, n_outputs: int, mapping: dict[str, str]) -> dict[str, str]:
    """Drop the extra boundary outputs again; returns ``{block path: tensor name}`` of those still produced."""
    keep = list(model.graph.output)[:n_outputs]
    del model.graph.output[:]
    model.graph.output.extend(keep)
    produced = {o for node in model.graph.node for o in node.output}
    return {path: name for path, name in mapping.items() if name in produced}


def op_counts(model: Any) -> dict[str, int]:
    """``{op_type: count}`` of the top-level graph, most frequent first."""
    return dict(Counter(n.op_type for n in model.graph.node).most_common())


def _set_metadata(model: Any, meta: Mapping[str, str]) -> None:
    props = {p.key: p.value for p in model.metadata_props}
    props.update(meta)
    del model.metadata_props[:]
    for k, v in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v


def provenance(
    args: tuple,
    *,
    form: str,
    passes: Sequence[str],
    precision: str,
    exporter: str,
    metadata: Mapping[str, Any] | None,
) -> dict[str, str]:
    """The ``reparam.*`` metadata_props: version, passes, input shapes, precision, form, caller metadata."""
    meta = {
        "reparam.version": __version__,
        "reparam.form": form,
        "reparam.passes": json.dumps(sorted(set(passes))),
        "reparam.input_shapes": json.dumps([list(a.shape) for a in args if isinstance(a, torch.Tensor)]),
        "reparam.precision": precision,
        "reparam.exporter": exporter,
        "reparam.torch": torch.__version__,
    }
    for key, value in (metadata or {}).items():
        k = key if key.startswith(META_PREFIX) else META_PREFIX + key
        meta[k] = value if isinstance(value, str) else json.dumps(value, default=str)
    return meta


# ONNX Runtime against PyTorch in fp32: far above their rounding in a shallow model, far below a
# pool over part of a map; a deep model's rounding is allowed 10x what it is at the example's size
_FREE_AXIS_TOLERANCE = 1e-4


def _probe(args: tuple, input_names: list[str], axes: dict[str, dict[int, str]]) -> list[Any]:
    """The inputs at other sizes: free spatial axes doubled, a free batch of three (seeded values)."""
    probe = []
    for name, a in zip(input_names, args):
        if isinstance(a, torch.Tensor) and name in axes:
            shape = [3 if ax == 0 else 2 * d if ax >= 2 else d for ax, d in enumerate(a.shape)]
            shape = [s if ax in axes[name] else a.shape[ax] for ax, s in enumerate(shape)]
            a = torch.randn(*shape, generator=torch.Generator().manual_seed(0)).to(a.dtype)
        probe.append(a)
    return probe


def _outputs(model: nn.Module, inputs: Sequence[Any]) -> list[torch.Tensor]:
    with torch.no_grad():
        return tensor_leaves(model(*inputs))


def _file_errors(
    session: Any, want: Sequence[torch.Tensor], inputs: Sequence[Any], input_names: list[str]
) -> list[Any]:
    """The file's outputs on ``inputs`` against the model's (``want``): a scale-relative error per
    output, or ``(file shape, model shape)`` where the shapes differ. Raises what ONNX Runtime raises."""
    feed = {n: a.numpy() for n, a in zip(input_names, inputs) if isinstance(a, torch.Tensor)}
    got = session.run(None, feed)
    return [
        scale_relative_error(w.double().numpy(), g.astype("float64"))
        if tuple(w.shape) == tuple(g.shape)
        else (list(g.shape), list(w.shape))
        for w, g in zip(want, got)
    ]


def _check_free_axes(
    proto: Any,
    model: nn.Module,
    args: tuple,
    input_names: list[str],
    axes: dict[str, dict[int, str]],
    batch_too: bool = False,
) -> None:
    """Run the file where its free spatial axes are doubled (and the batch is three) against the model.

    The dynamo exporter can leave an axis symbolic while an operation took its example size as a
    constant (an average pool's kernel): the file then computes something else at any other size.
    A TorchScript trace (``batch_too``) can do so on any axis, the batch included: its file is run
    whenever an axis is free.
    """
    checked = (lambda a: True) if batch_too else (lambda a: a >= 2)
    if not any(checked(a) for name in input_names for a in axes.get(name, {})):
        return
    ort = require("onnxruntime", "onnx", "checking the ONNX file's free axes")
    probe = _probe(args, input_names, axes)
    try:
        want = _outputs(model, probe)
    except Exception:  # the model itself does not take these sizes: nothing to compare
        return
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    shapes = ", ".join("x".join(map(str, a.shape)) for a in probe if isinstance(a, torch.Tensor))
    free = ", ".join(f"{n}[{ax}]" for n in input_names for ax in axes.get(n, {}) if checked(ax))
    hint = _TRACED_AXIS_HINT if batch_too else _FREE_AXIS_HINT
    try:
        errors = _file_errors(session, want, probe, input_names)
        at_example = _file_errors(session, _outputs(model, args), args, input_names)
    except Exception as exc:  # ONNX Runtime refuses the sizes the model takes
        raise ReparamError(
            f"the exported file leaves {free} dynamic but fails at {shapes}, where the model runs "
            f"({str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__})",
            hint=hint,
        ) from exc
    for error, own in zip(errors, at_example):
        limit = max(_FREE_AXIS_TOLERANCE, 10 * own) if isinstance(own, float) else _FREE_AXIS_TOLERANCE
        if isinstance(error, tuple) or not error <= limit:
            what = (
                f"shape {error[0]}, not {error[1]}"
                if isinstance(error, tuple)
                else f"relative error {error:.3g}"
            )
            raise ReparamError(
                f"the exported file leaves {free} dynamic but computes other values at {shapes} ({what}): "
                "an operation took the example's size as a constant",
                hint=hint,
            )


_FREE_AXIS_HINT = "export with the batch axis alone dynamic (`dynamic_batch`), or at the size you need"
_TRACED_AXIS_HINT = "export with the dynamo exporter (drop `dynamo=False`), which keeps sizes symbolic"


def _source(model: nn.Module | ConversionResult, boundaries: Boundaries | None, passes: Sequence[str]):
    """The module to export, its boundaries and passes (a ConversionResult brings its own)."""
    if isinstance(model, ConversionResult):
        boundaries = model.record.boundaries if boundaries is None else boundaries
        passes = passes or model.record.pass_names()
        model = model.model
    return model, boundaries, passes


def _check_arguments(args: tuple, input_names: list[str], opset: int | None) -> None:
    if len(input_names) != len(args):
        raise ReparamError(
            f"{len(args)} example input(s) but {len(input_names)} input name(s) {input_names}",
            hint="give one name per example input",
        )
    if opset is not None and not 7 <= int(opset) <= 25:
        raise ReparamError(
            f"opset {opset} is out of range", hint="use an opset between 7 and 25, e.g. 17 or 18"
        )


def _named_outputs(
    model: nn.Module, args: tuple, output_names: Sequence[str] | None, counted: int | None = None
) -> list[str]:
    """The names of the model's output tensors (given, or the conventional ones); the model runs
    to count them unless they were ``counted``."""
    if counted is None:
        with torch.no_grad():
            counted = len(tensor_leaves(model(*args)))
    n_out = counted
    if n_out == 0:
        raise ReparamError(
            "the model returned no tensors", hint="forward() must return a tensor or tuple of tensors"
        )
    out_names = list(output_names) if output_names is not None else conventional_output_names(n_out)
    if len(out_names) != n_out:
        raise ReparamError(
            f"the model returns {n_out} tensor(s) but {len(out_names)} output name(s) were given",
            hint="give one name per output, or leave output_names unset",
        )
    return out_names


@dataclass
class _Job:
    """One export: arguments, names and axes, and what it noted and timed on the way."""

    args: tuple
    input_names: list[str]
    out_names: list[str]
    axes: dict[str, dict[int, str]]
    dynamo: bool
    opset: int | None
    notes: list[str] = field(default_factory=list)
    times: dict[str, float] = field(default_factory=dict)

    @property
    def exporter(self) -> str:
        return "dynamo" if self.dynamo else "legacy"


def _export_graph(
    model: nn.Module, job: _Job, target: nn.Module, mapping: dict[str, str], dynamic_batch: bool
) -> tuple[Any, dict[str, str], dict[str, dict[int, str]]]:
    """The exported graph with each block boundary as an extra output where the exporter takes them
    (``target``: the model with them as outputs, named by ``mapping``; see `_boundary_module`).

    Returns the proto, ``{boundary node: output name}`` and the dynamic axes of every output.
    """
    all_out = job.out_names + list(dict.fromkeys(mapping.values()))
    all_axes = dict(job.axes)
    if dynamic_batch:
        all_axes.update({name: {0: BATCH_DIM} for name in mapping.values()})
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="reparam-onnx-") as tmp:

        def run(module: nn.Module, names: list[str], dyn: dict) -> Any:
            return _run_exporter(
                module,
                job.args,
                dynamo=job.dynamo,
                opset=job.opset,
                input_names=job.input_names,
                output_names=names,
                axes=dyn,
                workdir=Path(tmp),
            )

        try:
            proto = run(target, all_out, all_axes)
        except ReparamError:
            if target is model:
                raise
            job.notes.append("exporting with block-boundary outputs failed; exported without them")
            mapping, all_axes = {}, job.axes
            proto = run(model, job.out_names, job.axes)
    job.times["export"] = time.perf_counter() - start
    return proto, mapping, all_axes


def _checked_graph(
    proto: Any, model: nn.Module, job: _Job, all_axes: dict[str, dict[int, str]], simplify: bool
) -> tuple[Any, bool]:
    """Dynamic axes named and kept, the graph simplified (when asked); returns it and whether it was."""
    _rename_dims(proto, all_axes)
    lost = check_dynamic_axes(proto, all_axes)
    if lost:
        raise ReparamError(
            f"the exporter made {', '.join(lost)} static",
            hint="the model's forward fixes that size (e.g. a reshape with a constant batch); "
            "export with static shapes (`dynamic_batch=False`) or fix the reshape to use -1",
        )
    if not simplify:
        return proto, False
    start = time.perf_counter()
    proto, note = _simplify(proto, job.args, job.input_names, all_axes)
    if note:
        job.notes.append(note)
    job.times["simplify"] = time.perf_counter() - start
    return proto, not note


def _verified(proto: Any, model: nn.Module, job: _Job) -> Any:
    """The graph checked at other sizes along its free axes and shape-inferred (when held in memory)."""
    if needs_external_data(proto):
        return proto
    start = time.perf_counter()
    _check_free_axes(proto, model, job.args, job.input_names, job.axes, batch_too=not job.dynamo)
    job.times["free_axes_check"] = time.perf_counter() - start
    return infer_shapes(proto, check_type=True)


def export_onnx(
    model: nn.Module | ConversionResult,
    example_inputs: Any,
    path: str | os.PathLike,
    *,
    opset: int | None = None,
    dynamic_batch: bool = True,
    dynamic_axes: Mapping[str, Mapping[int, str] | Sequence[int]] | None = None,
    input_names: Sequence[str] = ("input",),
    output_names: Sequence[str] | None = None,
    simplify: bool = True,
    dynamo: bool = True,
    metadata: Mapping[str, Any] | None = None,
    boundaries: Boundaries | None = None,
    passes: Sequence[str] = (),
) -> OnnxExportResult:
    """Export ``model`` to ONNX at ``path`` (atomically) and return what was written.

    ``model`` is a module, or the result of ``reparam.convert`` (its deploy model, block
    boundaries and passes are used).

    Inputs are named ``input_names``; outputs "output" (one) or "output0", "output1", ... unless
    given. ``dynamic_batch`` makes axis 0 of every input and output symbolic ("batch");
    ``dynamic_axes`` adds more (``{name: {axis: dim name}}`` or ``{name: [axes]}``). The graph is
    simplified with onnxsim (kept only when its check passes and the dynamic axes stay symbolic),
    shape-inferred and validated with ``onnx.checker`` (full check). Provenance goes into
    ``metadata_props`` (``reparam.*``; ``metadata`` keys are added with that prefix, e.g.
    ``source_sha256``, ``form``; ``passes`` are the engine passes that produced the model).
    ``boundaries`` (the rewrite record's, for a deploy GraphModule or its loaded ``.pt2``) become
    named tensors listed in ``reparam.boundaries``, so a divergence in the file can be localized.
    The form defaults to "deploy" when boundaries or passes are given, else "training".
    """
    require("onnx", "onnx", "ONNX export")
    model, boundaries, passes = _source(model, boundaries, passes)
    args = as_args(example_inputs)
    input_names = list(input_names)
    _check_arguments(args, input_names, opset)
    with eval_mode(model):
        target, mapping, counted = _boundary_module(model, args, boundaries)
        out_names = _named_outputs(model, args, output_names, counted)
        axes = normalize_dynamic_axes(input_names, out_names, dynamic_batch, dynamic_axes)
        job = _Job(args, input_names, out_names, axes, dynamo, opset)
        proto, mapping, all_axes = _export_graph(model, job, target, mapping, dynamic_batch)
        proto, simplified = _checked_graph(proto, model, job, all_axes, simplify)
        in_file = Boundaries(
            BoundaryKind.ONNX_TENSOR,
            _strip_boundary_outputs(proto, len(out_names), mapping) if mapping else {},
        )
        proto = _verified(proto, model, job)
        form = "deploy" if boundaries or passes else "training"
        meta = provenance(
            args, form=form, passes=passes, precision="fp32", exporter=job.exporter, metadata=metadata
        )
        if in_file:
            meta |= in_file.onnx_metadata()
        _set_metadata(proto, meta)
        start = time.perf_counter()
        sidecar = save_onnx(proto, path)
        job.times["save"] = time.perf_counter() - start
    opset_used = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    return OnnxExportResult(
        path=Path(path),
        sidecar=sidecar,
        exporter=job.exporter,
        opset=int(opset_used),
        input_names=input_names,
        output_names=out_names,
        dynamic_axes=axes,
        simplified=simplified,
        op_counts=op_counts(proto),
        metadata=meta,
        boundaries=in_file,
        notes=job.notes,
        seconds=job.times,
    )
