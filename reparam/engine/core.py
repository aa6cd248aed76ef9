"""``convert`` / ``reparameterize``: trace, run the passes, check, report and record."""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from reparam.dynamic_shapes import fixed_reason
from reparam.engine.base import LeftAlone, Pass, PassContext, select_passes
from reparam.engine.capture import MODULE_CALLS, export_capture, trace
from reparam.engine.graph import BN, CONV, CONV_T, module_of
from reparam.engine.inputs import make_inputs
from reparam.engine.manager import run_passes
from reparam.engine.model_state import own_copy, refuse_nonfinite_weights, warn_training_batchnorms
from reparam.engine.record import FusionEntry, RewriteRecord
from reparam.engine.report import CheckSummary, ConversionReport
from reparam.engine.shapes import propagate_shapes
from reparam.equivalence import (
    BlockRun,
    Boundaries,
    BoundaryKind,
    ToleranceProfile,
    block_outputs,
    fp32_noise,
    graph_boundaries,
    judge_model_outputs,
    locate_divergence,
    output_error,
    run_with_block_hooks,
)
from reparam.errors import InternalError, MismatchError, ReparamError
from reparam.profile import counting_macs, graph_macs, model_stats
from reparam.tensors import fresh, module_dtype


@dataclass
class ConversionResult:
    """The deploy model (eval mode), the report, and the rewrite record."""

    model: nn.Module
    report: ConversionReport
    record: RewriteRecord


def _leaf_param_modules(module: nn.Module, prefix: str) -> dict[str, nn.Module]:
    return {
        f"{prefix}.{n}" if n else prefix: m
        for n, m in module.named_modules()
        if not list(m.children()) and (list(m.parameters(recurse=False)) or list(m.buffers(recurse=False)))
    }


_PLAIN = (int, float, bool, str, tuple, type(None))
# A swapped child that moves the whole model's output by more than this is a broken interface, not
# rounding: the final check judges the result with the real tolerance.
SWAP_TOLERANCE = 1e-3
KEPT_WHOLE = (
    "converted on its own, its untraceable parent reads a part of it (an attribute or submodule) that the "
    "converted form lacks or holds fused: left as it was, its children converted instead"
)


def _is_plain(value: Any) -> bool:
    """A number, string, size or a container of them: data a parent may read, not a layer or tensor."""
    if isinstance(value, (list, tuple, set, frozenset)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(_is_plain(k) and _is_plain(v) for k, v in value.items())
    return isinstance(value, _PLAIN)


def _keep_plain_attributes(child: nn.Module, gm: fx.GraphModule) -> None:
    """Give the converted child the plain attributes (``self.blk.width``, ``self.blk.sizes[0]``) its
    parent may read."""
    for key, value in vars(child).items():
        if not key.startswith("_") and _is_plain(value) and not hasattr(gm, key):
            setattr(gm, key, value)


class _Converter:
    def __init__(
        self,
        passes: list[Pass],
        inputs_by_module: dict[str, tuple],
        root: nn.Module | None = None,
        reference: Any = None,
    ):
        self.passes = passes
        self.inputs_by_module = inputs_by_module
        self.root, self.reference = root, reference
        self.contexts: list[PassContext] = []
        self.block_entries: list[FusionEntry] = []
        self.module_boundaries: list[str] = []
        self.untraced: list[tuple[str, str]] = []
        self.kept_whole: list[str] = []

    def graph(self, module: nn.Module, prefix: str) -> fx.GraphModule | None:
        gm, why = trace(module)
        if gm is None:
            self.untraced.append((prefix, why))
            return None
        ctx = PassContext(example_inputs=self.inputs_by_module.get(prefix), prefix=prefix)
        ctx.adopt_aliases(gm)
        self.contexts.append(ctx)
        return run_passes(gm, self.passes, ctx)

    def _root_still_runs(self) -> bool:
        """Whether the whole model still computes its output after a child was swapped for its graph.

        An untraceable parent may read attributes or call submodules of the child that the
        converted graph lacks or holds fused; such a child is left as it was.
        """
        inputs = self.inputs_by_module.get("")
        if self.root is None or inputs is None:
            return True
        try:
            with torch.no_grad():
                out = self.root(*fresh(inputs))
            return output_error(self.reference, out).scale_rel <= SWAP_TOLERANCE
        except Exception:  # the untraceable parent uses something of the child the graph lacks
            return False

    def tree(self, module: nn.Module, prefix: str) -> None:
        """Convert each child on its own (recursively) when ``module`` itself cannot be traced."""
        for name, child in list(module.named_children()):
            path = f"{prefix}.{name}" if prefix else name
            if not list(child.children()):
                continue
            gm = self.graph(child, path)
            if gm is not None:
                _keep_plain_attributes(child, gm)
                setattr(module, name, gm)
                if self._root_still_runs():
                    self.module_boundaries.append(path)
                    continue
                setattr(module, name, child)
                self.contexts.pop()
                self.kept_whole.append(path)
            if callable(getattr(child, "reparameterize", None)) and hasattr(
                child, "get_equivalent_kernel_bias"
            ):
                before = _leaf_param_modules(child, path)
                child.reparameterize()
                after = _leaf_param_modules(child, path)
                new = [p for p, m in after.items() if before.get(p) is not m]
                gone = sorted(p for p, m in before.items() if after.get(p) is not m)
                for p in new:
                    self.block_entries.append(
                        FusionEntry(
                            "block_reparameterize", p, gone, f"{type(child).__name__}.reparameterize()"
                        )
                    )
                where, why = self.untraced[-1]
                self.untraced[-1] = (where, f"{why}; converted with its own reparameterize()")
            self.module_boundaries.append(path)
            self.tree(child, path)


def _remaining_bn_notes(model: nn.Module, contexts: list[PassContext]) -> list[tuple[str, str]]:
    """Why each BatchNorm still in the deploy model is there."""
    notes = []
    graphs = [(n, m) for n, m in model.named_modules() if isinstance(m, fx.GraphModule)]
    in_graph: set[str] = set()
    for gname, gm in graphs:
        for node in gm.graph.nodes:
            bn = module_of(gm, node)
            if not isinstance(bn, BN):
                continue
            path = f"{gname}.{node.target}" if gname else str(node.target)
            in_graph.add(path)
            src = node.args[0] if node.args else None
            layer = module_of(gm, src) if isinstance(src, fx.Node) else None
            if isinstance(layer, CONV + CONV_T + (nn.Linear,)):
                why = f"its input {src.target} also feeds other nodes, or the fold was refused (see above)"
            elif isinstance(src, fx.Node):
                why = f"its input ({src.name}) is not the output of a conv or linear layer"
            else:
                why = "its input is not a tensor node"
            notes.append((path, why))
    for name, m in model.named_modules():
        if (
            isinstance(m, BN)
            and name not in in_graph
            and not any(name.startswith(g + ".") for g, _ in graphs if g)
        ):
            notes.append(
                (name, "inside a module that torch.fx could not trace and that has no reparameterize()")
            )
    return notes


class _Stopwatch:
    """Wall time of consecutive stages."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = self.laps.get(name, 0.0) + now - self.last
        self.last = now

    def total(self) -> float:
        return time.perf_counter() - self.start


@dataclass
class _Reference:
    """One run of the original model (output, block values when kept, calls, order), and its inputs."""

    run: BlockRun = field(default_factory=BlockRun)
    # inputs of every submodule, only when the model is converted submodule by submodule
    module_inputs: dict[str, tuple] = field(default_factory=dict)
    called: bool = False


def _export_graph(
    work: nn.Module, inputs: tuple | None, why: str, report: ConversionReport
) -> tuple[Any, str]:
    """The whole model as one graph by torch.export (after torch.fx failed with ``why``), or ``(None, why not)``.

    A capture that holds an input axis at one size (a size read as a constant) or takes only some
    of its sizes (a shape ``if`` traced one way) is not used: converting submodule by submodule keeps the model's own control flow,
    so the deploy model takes every size the original takes.
    """
    if inputs is None:
        return None, why
    captured, export_why = export_capture(work, fresh(inputs))
    if captured is None:
        return None, f"{why}; torch.export: {export_why}"
    if captured.fixed:
        held = ", ".join(f.describe() for f in captured.fixed)
        return None, f"{why}; torch.export holds {held} ({fixed_reason(captured.static_reason)})"
    if captured.bounded:
        bounded = ", ".join(f.name for f in captured.bounded)
        return (
            None,
            f"{why}; torch.export's capture takes only some sizes of its {bounded} (a shape if traced one way)",
        )
    report.tracing = f"whole model, by torch.export (torch.fx: {why})"
    return captured.gm, why


def _run_reference(
    work: nn.Module,
    inputs: tuple,
    nonleaf: list[str],
    *,
    keep_outputs: bool,
    per_module: bool,
    count_macs: bool = True,
) -> tuple[_Reference, int | None]:
    """Run the original once: its outputs, block outputs (when kept), and its MACs (when counted)."""
    ref = _Reference()

    def pre_for(path):
        def pre(_m, args):
            if path not in ref.module_inputs:
                ref.module_inputs[path] = tuple(
                    a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args
                )

        return pre

    handles = []
    if per_module:
        handles = [m.register_forward_pre_hook(pre_for(p)) for p, m in work.named_modules() if p]
    try:
        with torch.no_grad(), counting_macs(work) if count_macs else contextlib.nullcontext() as macs:
            ref.run = run_with_block_hooks(
                work, nonleaf, lambda: work(*fresh(inputs)), keep_values=keep_outputs
            )
            ref.called = True
    except Exception as exc:
        raise ReparamError(
            f"the model fails on the example inputs {[tuple(t.shape) for t in inputs if hasattr(t, 'shape')]}: "
            f"{type(exc).__name__}: {exc}",
            hint="pass example inputs or an input shape the model accepts (`input_shape` NxCxHxW)",
        ) from exc
    finally:
        for h in handles:
            h.remove()
    ref.module_inputs[""] = inputs
    return ref, macs.total if macs is not None else None


def _reference_stage(
    gm: fx.GraphModule | None, work: nn.Module, inputs: tuple, nonleaf: list[str], inplace: bool
) -> tuple[_Reference, int | None]:
    """The original's run (and, for a traced graph, its shapes): the reference, and the original's MACs."""
    # Block outputs are kept up front only when the original is about to be rewritten in place (or
    # converted part by part); otherwise they are recomputed on a failure: cloning them all would
    # cost several times the parameter memory.
    keep = inplace or gm is None
    # torch.fx counted each module's calls while tracing: no block hooks are needed for that
    traced_calls = gm.meta.get(MODULE_CALLS) if gm is not None and not keep else None
    hooked = nonleaf if traced_calls is None else []
    # a traced graph, once shaped, gives the MACs without hooks on the reference run
    macs = graph_macs(gm) if traced_calls is not None and propagate_shapes(gm, inputs) else None
    ref, counted = _run_reference(
        work, inputs, hooked, keep_outputs=keep, per_module=gm is None, count_macs=macs is None
    )
    if traced_calls is not None:
        ref.run.calls = {p: traced_calls.get(p, 0) for p in nonleaf}
    return ref, counted if macs is None else macs


def _rewrite(
    gm: fx.GraphModule | None,
    work: nn.Module,
    selected: list[Pass],
    inputs: tuple | None,
    ref: _Reference,
    nonleaf: list[str],
    why: str,
    report: ConversionReport,
) -> tuple[nn.Module, RewriteRecord, _Converter]:
    """Run the passes on the captured graph, or submodule by submodule; the deploy model and its record."""
    converter = _Converter(
        selected, ref.module_inputs, root=work if gm is None else None, reference=ref.run.output
    )
    record = RewriteRecord()
    single = {p for p in nonleaf if not ref.called or ref.run.calls.get(p, 0) == 1}
    if gm is not None:
        ctx = PassContext(example_inputs=inputs)
        ctx.adopt_aliases(gm)
        converter.contexts.append(ctx)
        deploy: nn.Module = run_passes(gm, selected, ctx)
        record.boundaries = graph_boundaries(deploy, single)
    else:
        report.tracing = (
            "per submodule (neither torch.fx nor torch.export captured the whole model with free input sizes)"
        )
        report.notes.append(
            f"the whole model could not be captured ({why}); each submodule was converted on its own"
        )
        converter.tree(work, "")
        deploy = work
        record.boundaries = Boundaries(
            BoundaryKind.MODULE, {p: p for p in converter.module_boundaries if p in single}
        )
    deploy.eval()
    return deploy, record, converter


def _collect(
    report: ConversionReport, record: RewriteRecord, converter: _Converter, deploy: nn.Module
) -> None:
    """Fusions, record entries still present in the deploy model, and what was left alone and why."""
    for ctx in converter.contexts:
        report.fusions.extend(ctx.history)
        report.left_alone.extend(ctx.left_alone)
        report.warnings.extend(w for w in ctx.warnings if w not in report.warnings)
        report.notes.extend(n for n in ctx.notes if n not in report.notes)
    report.fusions.extend(converter.block_entries)
    deploy_modules = dict(deploy.named_modules())
    for ctx in converter.contexts:
        for name, (entry, module_ref) in ctx.products.items():
            module = module_ref()
            if module is not None and deploy_modules.get(name) is module:
                record.entries.append(entry)
    record.entries.extend(converter.block_entries)
    for path, reason in converter.untraced:
        if path:
            report.left_alone.append(LeftAlone("trace", path, f"not traceable by torch.fx ({reason})"))
    for path in converter.kept_whole:
        report.left_alone.append(LeftAlone("trace", path, KEPT_WHOLE))
    for path, reason in _remaining_bn_notes(deploy, converter.contexts):
        item = LeftAlone("fold_bn", path, f"BatchNorm stays: {reason}")
        if not any(x.where == path for x in report.left_alone):
            report.left_alone.append(item)
    if report.converted_from_eval_copy:
        report.notes.append(
            "the model was in training mode; an eval-mode copy was converted "
            "(BatchNorm uses its running statistics)"
        )


def _run_deploy(deploy: nn.Module, inputs: tuple) -> tuple[Any, int]:
    """The deploy model's output and MACs; a failure to run is a bug of the passes."""
    # every node of a rewritten graph keeps the shape of the value it computes
    known = graph_macs(deploy) if isinstance(deploy, fx.GraphModule) else None
    try:
        with torch.no_grad(), counting_macs(deploy) if known is None else contextlib.nullcontext() as macs:
            out = deploy(*fresh(inputs))
    except Exception as exc:
        raise InternalError(
            f"the converted model fails to run ({type(exc).__name__}: {exc}); "
            "convert with the responsible pass skipped (`skip` PASS) and report the model"
        ) from exc
    return out, known if known is not None else macs.total


def _check(
    model: nn.Module,
    deploy: nn.Module,
    record: RewriteRecord,
    ref: _Reference,
    out: Any,
    inputs: tuple,
    nonleaf: list[str],
    noise_before: float | None,
    inplace: bool,
) -> CheckSummary:
    """Compare deploy and original outputs with the fp32 rule; a MismatchError names the diverging blocks."""
    dtype, _ = module_dtype(deploy)
    # Deep fp32 networks round more than the base tolerance on their own: past it, the original's
    # fp32 noise against float64 decides (measured before an in-place rewrite, else now).
    verdict = judge_model_outputs(
        ref.run.output,
        out,
        dtype,
        (lambda: noise_before) if inplace else (lambda: fp32_noise(model, fresh(inputs), ref.run.output)),
    )
    summary = CheckSummary(
        verdict.passed,
        verdict.max_abs,
        verdict.scale_rel,
        verdict.limit,
        verdict.ref_max_abs,
        [list(t.shape) for t in inputs if isinstance(t, torch.Tensor)],
        str(dtype),
        reference_noise=verdict.noise,
    )
    if summary.passed:
        return summary
    summary.diverging_blocks = _diverging_blocks(model, deploy, record, ref, inputs, nonleaf, verdict.limit)
    blocks = ", ".join(summary.diverging_blocks[:5]) or "(no block boundary isolates it)"
    fused_there = sorted(
        {
            e.fused
            for e in record.entries
            if any(s.startswith(b + ".") or s == b for b in summary.diverging_blocks for s in e.sources)
        }
    )
    raise MismatchError(
        f"the converted model differs from the original: max abs error {verdict.max_abs:.3g}, relative "
        f"error {verdict.scale_rel:.3g} > tolerance {verdict.limit:g}; diverging blocks: {blocks}"
        + (f"; fused modules there: {', '.join(fused_there[:8])}" if fused_there else ""),
        hint="convert with the responsible pass skipped (`skip` PASS) and report the model",
    )


def _diverging_blocks(
    model: nn.Module,
    deploy: nn.Module,
    record: RewriteRecord,
    ref: _Reference,
    inputs: tuple,
    nonleaf: list[str],
    limit: float,
) -> list[str]:
    """The innermost blocks whose output exceeds ``limit`` (the check's own limit), in execution order."""
    run = ref.run
    if not run.values:  # block outputs are recomputed only now, on a failure
        original = copy.deepcopy(model).eval()
        run = run_with_block_hooks(original, nonleaf, lambda: original(*fresh(inputs)))
    candidate = block_outputs(deploy, record.boundaries, fresh(inputs))
    profile = ToleranceProfile("check", max_scale_rel=limit)
    return locate_divergence(run.values, candidate, run.order, profile).innermost_failing()


def convert(
    model: nn.Module,
    example_inputs: Any = None,
    *,
    passes: Sequence[str | Pass] | str | None = None,
    skip: Iterable[str] = (),
    check: bool = True,
    inplace: bool = False,
    input_shape: Sequence[int] | None = None,
    max_bytes: int | str | None = None,
) -> ConversionResult:
    """Re-parameterize ``model`` for deployment; returns the deploy model, a report and a record.

    Stages: capture the model as one graph (torch.fx, else torch.export; else each submodule on
    its own, blocks falling back to their own ``reparameterize()``), run the selected passes (the
    default order, minus ``skip``; names or pass objects) to a fixed point, collect the report, and
    with ``check`` compare the original (eval) and deploy models on ``example_inputs`` (or random
    inputs of ``input_shape``, or a guessed shape), raising a MismatchError naming the diverging
    blocks if they differ. The input model is left untouched unless ``inplace``; example inputs are
    never modified. Random inputs whose estimated memory exceeds ``max_bytes`` (see
    :mod:`reparam.limits`) are refused.
    """
    if not isinstance(model, nn.Module):
        raise ReparamError(
            f"expected a torch.nn.Module, got {type(model).__name__}",
            hint="pass the model object, e.g. reparam.zoo.create_model('repvgg_a0')",
        )
    clock = _Stopwatch()
    selected = select_passes(passes, skip)
    refuse_nonfinite_weights(model)
    report = ConversionReport(passes=[p.name for p in selected])
    modules = list(model.named_modules())
    report.converted_from_eval_copy = any(m.training for _, m in modules)
    warn_training_batchnorms(model, report, modules)
    # An eval-mode model is captured as it is: the graph shares its layers until the end, when the
    # deploy model gets its own copy of whatever it still shares (cheaper than copying it all first).
    shared = not inplace and not report.converted_from_eval_copy
    work = model if shared else model.eval() if inplace else copy.deepcopy(model).eval()
    inputs, note = make_inputs(work, example_inputs, input_shape, max_bytes=max_bytes)
    if note:
        report.notes.append(note)
    if check and inputs is None:
        raise ReparamError(
            "cannot check the conversion: no example inputs and no input shape could be inferred",
            hint="pass example_inputs or input_shape (`input_shape`), or disable the check",
        )
    # the same paths in the deep copy, when one was made
    nonleaf = [n for n, m in modules if n and any(c is not None for c in m._modules.values())]
    clock.lap("prepare")
    gm, why = trace(work)
    if gm is None:
        if shared:  # torch.export, and converting part by part, write into the model they are given
            work, shared = copy.deepcopy(model), False
        gm, why = _export_graph(work, inputs, why, report)
    clock.lap("capture")
    ref = _Reference()
    if inputs is not None:
        ref, macs = _reference_stage(gm, work, inputs, nonleaf, inplace)
        report.before = model_stats(work, macs=macs)
    else:
        report.before = model_stats(work)
    # With inplace the original is about to be rewritten: measure its noise now, in case the check needs it.
    fp32 = inplace and check and module_dtype(work)[0] == torch.float32
    noise_before = fp32_noise(work, fresh(inputs), ref.run.output) if fp32 else None
    clock.lap("reference")
    if gm is not None:
        work = None  # of a copy, the graph holds the only references: a replaced layer is freed once fused
    deploy, record, converter = _rewrite(gm, work, selected, inputs, ref, nonleaf, why, report)
    _collect(report, record, converter, deploy)
    if shared:
        own_copy(deploy, model)
    clock.lap("rewrite")
    if inputs is not None:
        out, macs = _run_deploy(deploy, inputs)
        report.after = model_stats(deploy, macs=macs)
        if check:
            report.check = _check(model, deploy, record, ref, out, inputs, nonleaf, noise_before, inplace)
    else:
        report.after = model_stats(deploy)
    clock.lap("check")
    passes_seconds: dict[str, float] = {}
    for ctx in converter.contexts:
        for name, seconds in ctx.seconds.items():
            passes_seconds[name] = passes_seconds.get(name, 0.0) + seconds
    report.seconds = {**clock.laps, "passes": passes_seconds, "total": clock.total()}
    deploy.reparam_record = record
    deploy.reparam_report = report
    return ConversionResult(deploy, report, record)


def reparameterize(
    model: nn.Module,
    example_inputs: Any = None,
    *,
    passes: Sequence[str | Pass] | str | None = None,
    skip: Iterable[str] = (),
    check: bool = True,
    inplace: bool = False,
    input_shape: Sequence[int] | None = None,
    max_bytes: int | str | None = None,
) -> nn.Module:
    """The deploy model of ``model`` (see :func:`convert`); it carries ``reparam_record``/``reparam_report``."""
    return convert(
        model,
        example_inputs,
        passes=passes,
        skip=skip,
        check=check,
        inplace=inplace,
        input_shape=input_shape,
        max_bytes=max_bytes,
    ).model
