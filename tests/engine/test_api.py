"""Engine API: pass selection, pass manager errors, report, record, dtypes, fallback, mismatch."""

from __future__ import annotations

import gc
import json
import warnings
import weakref

import pytest
import torch
from torch import fx, nn

from reparam.blocks import ACB
from reparam.engine import (
    PassContext,
    PassError,
    PassResult,
    RewriteRecord,
    available_passes,
    convert,
    register_pass,
    reparameterize,
    run_passes,
)
from reparam.engine import base as engine_base
from reparam.engine.graph import block_path
from reparam.equivalence import BoundaryKind
from reparam.errors import MismatchError, ReparamError
from reparam.zoo import create_model
from tests.engine._models import Asym, Chain, Rep, assert_untouched, count, error, fingerprint, prepared

BN = nn.modules.batchnorm._BatchNorm


def _acb_chain() -> nn.Module:
    return prepared(Chain(Asym(4, 4, pad=1), nn.ReLU(), Asym(4, 8, stride=2, pad=0)))


def test_default_passes_and_selection_by_name():
    assert available_passes() == [
        "canonicalize",
        "remove_identity",
        "merge_branches",
        "fold_bn",
        "fold_bn_before",
        "border_fill",
        "merge_1x1_kxk",
        "merge_kxk_1x1",
    ]
    model = _acb_chain()
    x = torch.randn(2, 4, 9, 9)
    only_fold = convert(model, x, passes=["fold_bn"])
    assert count(only_fold.model, BN) == 0 and count(only_fold.model, nn.Conv2d) == 6
    assert only_fold.report.passes == ["fold_bn"]
    skipped = convert(model, x, skip=["merge_branches"])
    assert count(skipped.model, nn.Conv2d) == 6
    as_text = convert(model, x, passes="fold_bn,merge_branches")
    assert count(as_text.model, nn.Conv2d) == 2
    for result in (only_fold, skipped, as_text):
        assert error(model, result.model, x) <= 1e-5
    with pytest.raises(ReparamError) as info:
        convert(model, x, skip=["fold_bnn"])
    assert "fold_bn" in info.value.hint


def test_dataflow_detection_names_fused_modules_after_their_parent():
    model = _acb_chain()
    result = convert(model, torch.randn(1, 4, 9, 9))
    fused = {e.fused: e for e in result.record.entries}
    assert set(fused) == {"body.0", "body.2"}
    assert fused["body.0"].sources == sorted(
        f"body.0.{n}" for n in ("big", "nbig", "wide", "nwide", "tall", "ntall")
    )
    assert isinstance(result.model.get_submodule("body.0"), nn.Conv2d)
    names = dict(model.named_modules())
    assert all(s in names for e in result.record.entries for s in e.sources)


class _Explode:
    name = "explode"
    description = "fails on the first conv"

    def run(self, gm, ctx):
        for node in gm.graph.nodes:
            if node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.Conv2d):
                ctx.current_block = ctx.full(block_path(node))
                raise ValueError("boom")
        return PassResult(gm, False, [])


def test_pass_manager_names_failing_pass_and_block():
    gm = fx.symbolic_trace(_acb_chain())
    with pytest.raises(PassError) as info:
        run_passes(gm, [_Explode()], PassContext())
    assert info.value.pass_name == "explode" and info.value.block == "body.0"
    assert "boom" in str(info.value) and "explode" in str(info.value)


class _Corrupt:
    name = "test_corrupt"
    description = "doubles one conv weight (to exercise the check)"

    def run(self, gm, ctx):
        for node in gm.graph.nodes:
            mod = gm.get_submodule(node.target) if node.op == "call_module" else None
            if isinstance(mod, nn.Conv2d) and not getattr(mod, "_corrupted", False):
                new = nn.Conv2d(
                    mod.in_channels,
                    mod.out_channels,
                    mod.kernel_size,
                    mod.stride,
                    mod.padding,
                    mod.dilation,
                    mod.groups,
                    mod.bias is not None,
                )
                new.load_state_dict(mod.state_dict())
                with torch.no_grad():
                    new.weight.mul_(2.0)
                new._corrupted = True
                gm.add_submodule(node.target, new)
                return PassResult(gm, True, [])
        return PassResult(gm, False, [])


def test_check_raises_mismatch_naming_the_block():
    register_pass(_Corrupt)
    try:
        model = prepared(Chain(Rep(4, 4), Rep(4, 4)))
        with pytest.raises(MismatchError) as info:
            convert(model, torch.randn(2, 4, 8, 8), passes=["fold_bn", "merge_branches", "test_corrupt"])
        assert "body.0" in info.value.message
        # without the check the broken model is returned as is
        convert(model, torch.randn(2, 4, 8, 8), passes=["test_corrupt"], check=False)
    finally:
        engine_base._REGISTRY.pop("test_corrupt", None)
    assert "test_corrupt" not in available_passes()


def test_report_contents_and_serialisation():
    model = _acb_chain()
    x = torch.randn(2, 4, 9, 9)
    result = convert(model, x)
    report = result.report
    data = json.loads(report.to_json())
    assert data["before"]["modules"]["BatchNorm2d"] == 6 and "BatchNorm2d" not in data["after"]["modules"]
    assert (
        data["after"]["macs"] < data["before"]["macs"] and data["after"]["params"] < data["before"]["params"]
    )
    # merge_branches runs first and folds each branch's BatchNorm inside the merge: fold_bn has none left
    merged = data["fused"]["merge_branches"]
    assert data["fused"]["fold_bn"] == [] and len(merged) == 2
    assert sorted(s for e in merged for s in e["sources"] if ".n" in s) == sorted(
        n for n, m in model.named_modules() if isinstance(m, BN)
    )
    assert data["check"]["passed"] and data["check"]["relative_error"] <= 1e-5
    assert (
        data["check"]["max_abs_error"]
        <= data["check"]["relative_error"] * data["check"]["max_abs_output"] + 1e-12
    )
    assert data["converted_from_eval_copy"] is False
    for text in (report.render(plain=True), report.render()):
        assert "merge_branches" in text and "body.0" in text and "PASSED" in text
    assert result.model.reparam_report is report and result.model.reparam_record is result.record


def test_report_summarizes_fusions_per_pass_beyond_the_row_limit():
    model = _acb_chain()
    report = convert(model, torch.randn(2, 4, 9, 9)).report
    merged = [e.fused for e in report.fusions if e.pass_name == "merge_branches"]
    assert len(merged) == 2
    full, short = report.render(plain=True), report.render(plain=True, max_fusions=1)
    assert all(name in full for name in merged) and "2 modules" not in full
    assert "2 modules" in short and "body.0.tall" not in short


def test_record_round_trip():
    result = convert(_acb_chain(), torch.randn(1, 4, 9, 9))
    record = result.record
    again = RewriteRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    assert again == record
    assert record.boundaries.kind is BoundaryKind.GRAPH_NODE and record.boundaries["body.0"] in {
        n.name for n in result.model.graph.nodes
    }
    assert record.sources_of("body.0") and record.sources_of("nope") == []


def test_input_model_untouched_unless_inplace():
    model = _acb_chain()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    deploy = reparameterize(model, torch.randn(1, 4, 9, 9))
    assert count(model, BN) == 6 and all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert not deploy.training
    x = torch.randn(2, 4, 9, 9)
    expected = model(x)
    inplace = reparameterize(model, x, inplace=True)
    assert torch.allclose(inplace(x), expected, atol=1e-5, rtol=0)


def test_deploy_model_shares_nothing_with_the_input_model():
    """Layers left as they were (an activation, a conv without BN) are the deploy model's own copies."""
    model = prepared(nn.Sequential(_acb_chain(), nn.Conv2d(8, 4, 1), nn.ReLU(), nn.Conv2d(4, 3, 1)))
    x = torch.randn(1, 4, 9, 9)
    before = fingerprint(model)
    deploy = convert(model, x).model
    assert_untouched(model, before)
    assert not {id(m) for m in deploy.modules()} & {id(m) for m in model.modules()}
    storages = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    assert not storages & {t.untyped_storage().data_ptr() for t in [*deploy.parameters(), *deploy.buffers()]}
    expected = deploy(x)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert torch.equal(deploy(x), expected)


def test_the_input_model_is_freed_once_let_go_without_a_collection():
    """Conversion leaves no reference cycle that holds the caller's model (fx's trace makes one)."""
    model = create_model("repvgg_a0", num_classes=3, width=0.25).eval()
    gone = weakref.ref(model)
    gc.disable()
    try:
        result = convert(model, torch.randn(1, 3, 32, 32))
        del model
        assert gone() is None
    finally:
        gc.enable()
    assert result.report.check.passed


def test_input_shape_given_or_inferred():
    model = _acb_chain()
    result = convert(model, input_shape=(1, 4, 12, 12))
    assert result.report.check.input_shapes == [[1, 4, 12, 12]]
    guessed = convert(model)
    assert guessed.report.check.input_shapes == [[1, 4, 224, 224]]  # the default of every command
    assert any("inferred" in n and "1x4x224x224" in n for n in guessed.report.notes)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_models_stay_in_their_dtype(dtype):
    model = prepared(Chain(Rep(4, 4), Asym(4, 4)), dtype=dtype)
    x = torch.randn(2, 4, 8, 8, dtype=dtype)
    result = convert(model, x)
    assert {p.dtype for p in result.model.parameters()} == {dtype}
    assert count(result.model, BN) == 0 and count(result.model, nn.Conv2d) == 2
    assert result.report.check.passed and result.report.check.tolerance > 1e-5
    assert error(model, result.model, x) <= result.report.check.tolerance


def test_float16_overflow_of_fused_weights_is_warned():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    with torch.no_grad():
        model[1].running_var.fill_(1e-12)
        model[1].eps = 1e-14
        model[0].weight.fill_(1.0)
    with pytest.warns(UserWarning, match="float16"):
        result = convert(model, torch.randn(1, 3, 8, 8))
    assert any("65504" in w for w in result.report.warnings)


class _Untraceable(nn.Module):
    """Data-dependent control flow at the top: torch.fx cannot trace the whole model."""

    def __init__(self):
        super().__init__()
        self.head = Chain(Rep(3, 4), Asym(4, 4))
        self.odd = _OddACB(4, 4, 3, padding=1)
        self.tail = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))

    def forward(self, x):
        y = self.odd(self.head(x))
        if y.mean() > 100:  # never true; makes tracing fail
            y = y * 0
        return self.tail(y)


class _OddACB(ACB):
    def forward(self, x):
        if x.shape[0] > 1000:  # shape-dependent Python control flow: not traceable
            return x
        return super().forward(x)


def test_untraceable_model_falls_back_to_children_and_block_reparameterize():
    model = prepared(_Untraceable())
    x = torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = convert(model, x)
    deploy = result.model
    assert isinstance(deploy.head, fx.GraphModule) and isinstance(deploy.tail, fx.GraphModule)
    assert deploy.odd.deployed  # the block's own reparameterize() was used
    assert count(deploy, BN) == 0
    assert "per submodule" in result.report.tracing
    assert any(
        e.pass_name == "block_reparameterize" and e.fused.startswith("odd.") for e in result.record.entries
    )
    assert result.record.boundaries.kind is BoundaryKind.MODULE
    assert {"head", "odd", "tail"} <= set(result.record.boundaries)
    assert error(model, deploy, x) <= 1e-5


class _Seq1x1(nn.Module):
    def __init__(self, pad: int, bn: bool, groups: int = 1):
        super().__init__()
        self.reduce = nn.Conv2d(4, 8, 1, bias=False, groups=groups)
        self.norm = nn.BatchNorm2d(8) if bn else nn.Identity()
        self.spread = nn.Conv2d(8, 6, 3, padding=pad, groups=groups)

    def forward(self, x):
        return self.spread(self.norm(self.reduce(x)))


@pytest.mark.parametrize(
    ("pad", "bn", "groups", "merged"),
    [(1, False, 1, True), (0, True, 1, True), (1, True, 1, False), (0, True, 2, True)],
)
def test_merge_1x1_then_kxk_only_where_exact(pad, bn, groups, merged):
    model = prepared(_Seq1x1(pad, bn, groups))
    x = torch.randn(2, 4, 9, 9)
    result = convert(model, x)
    assert count(result.model, nn.Conv2d) == (1 if merged else 2)
    if not merged:
        assert any("bias" in x.reason for x in result.report.left_alone)
    assert error(model, result.model, x) <= 1e-5


class _Pair(nn.Module):
    def __init__(self, a: nn.Module, b: nn.Module, op=torch.add):
        super().__init__()
        self.a, self.b, self.op = a, b, op

    def forward(self, x):
        return self.op(self.a(x), self.b(x))


@pytest.mark.parametrize(
    ("a", "b", "convs", "reason"),
    [
        (
            nn.Conv2d(4, 4, 3, padding=1),
            nn.Conv2d(4, 4, 3, padding=1, groups=2),
            1,
            None,
        ),  # regrouped to dense
        (
            nn.Conv2d(4, 4, 3, padding=1, groups=4),
            nn.Conv2d(4, 4, 1),
            2,
            "multiply-adds",
        ),  # dense would cost more
        (nn.Conv2d(4, 4, 3, padding=2, dilation=2), nn.Conv2d(4, 4, 1), 1, None),
        (nn.Conv2d(4, 4, 3, padding=2, dilation=2), nn.Conv2d(4, 4, 3, padding=1), 2, "multiply-adds"),
        (nn.Conv1d(4, 4, 5, padding=2), nn.Conv1d(4, 4, 3, padding=1), 1, None),
        (nn.Conv3d(4, 4, 3, padding=1), nn.Conv3d(4, 4, 1), 1, None),
    ],
)
def test_branch_geometry(a, b, convs, reason):
    model = prepared(_Pair(a, b))
    nd = len(a.kernel_size)
    x = torch.randn(2, 4, *([7] * nd))
    result = convert(model, x)
    kind = type(a)
    assert count(result.model, kind) == convs
    if reason:
        assert any(reason in x.reason for x in result.report.left_alone)
    assert error(model, result.model, x) <= 1e-5


def test_a_pass_object_of_the_callers_own_runs_in_the_given_order():
    from reparam.engine.base import PassResult

    seen: list[str] = []

    class CountConvs:
        name = "count_convs"
        description = "records how many conv modules the graph calls"

        def run(self, gm, ctx):
            seen.append(
                str(
                    sum(
                        isinstance(gm.get_submodule(n.target), nn.Conv2d)
                        for n in gm.graph.nodes
                        if n.op == "call_module"
                    )
                )
            )
            return PassResult(gm, False, [])

    model = _acb_chain()
    x = torch.randn(2, 4, 9, 9)
    result = convert(model, x, passes=[CountConvs(), "fold_bn", "merge_branches", CountConvs()])
    assert result.report.passes == ["count_convs", "fold_bn", "merge_branches", "count_convs"]
    assert seen[:2] == ["6", "2"]  # before fold/merge, after them (first round)
    assert count(result.model, nn.Conv2d) == 2 and error(model, result.model, x) <= 1e-5
    with pytest.raises(ReparamError, match="is not a pass"):
        convert(model, x, passes=[object()])


def test_report_says_where_the_time_went():
    model = _acb_chain()
    report = convert(model, torch.randn(2, 4, 9, 9)).report
    seconds = report.seconds
    stages = ("prepare", "capture", "reference", "rewrite", "check")
    assert all(seconds[s] >= 0 for s in stages)
    assert set(seconds["passes"]) == set(report.passes) and all(v >= 0 for v in seconds["passes"].values())
    assert sum(seconds[s] for s in stages) <= seconds["total"] + 1e-6
    assert sum(seconds["passes"].values()) <= seconds["rewrite"] + 1e-6
    assert report.to_dict()["seconds"] == seconds
    assert report.timing_line().startswith("time: ") and "rewrite" in report.render(plain=True)


def test_a_merged_conv_with_batchnorm_branches_keeps_the_branch_container_name():
    """RepVGG's ``rbr_dense`` (conv ``.0`` + BatchNorm ``.1``) names the merged conv, as a fold would."""
    torch.manual_seed(0)
    model = prepared(create_model("repvgg_a0", num_classes=3, width=0.25))
    result = convert(model, input_shape=(1, 3, 32, 32))
    convs = [n for n, m in result.model.named_modules() if isinstance(m, nn.Conv2d)]
    assert "stage1.0.rbr_dense" in convs and "stage3.0.rbr_dense" in convs
    assert not [n for n in convs if n.endswith((".0", ".1")) and "rbr_" in n], convs
