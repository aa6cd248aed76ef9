"""The graph helpers the engine's speed rests on compute what their slower equivalents compute."""

from __future__ import annotations

import copy
import gc
import io
import operator
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from reparam.engine import convert
from reparam.engine.base import PassContext
from reparam.engine.capture import trace
from reparam.engine.graph import ModuleNames, blank_conv, choose_name, install
from reparam.engine.graphmodule import defer_recompile, delete_unused_submodules, graph_module, is_stale
from reparam.engine.model_state import refuse_nonfinite_weights
from reparam.engine.passes import fold_bn as fold_bn_pass
from reparam.engine.shapes import TensorShape, cheap_shapes, real_shapes
from reparam.engine.tracer import Tracer
from reparam.errors import ReparamError
from reparam.kernel_math import identity_kernel
from reparam.zoo import create_model


class Mixed(nn.Module):
    """Modules, functions, methods, an in-place op, a parameter read in forward, a tuple output."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU(inplace=True)
        self.scale = nn.Parameter(torch.randn(4, 1, 1))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 8 * 8, 5))

    def forward(self, x):
        y = self.act(self.bn(self.conv(x)))
        y = y * self.scale
        y = y.add_(1.0)
        z = F.avg_pool2d(y, 2).sum(dim=(2, 3))
        return self.head(y), z, y.shape[1]


def _shapes(gm: fx.GraphModule) -> dict[str, object]:
    return {n.name: n.meta.get("tensor_meta") for n in gm.graph.nodes}


class _InterpreterShapes(fx.Interpreter):
    def run_node(self, n):
        out = super().run_node(n)
        if isinstance(out, torch.Tensor):
            n.meta["tensor_meta"] = TensorShape(out.shape, out.dtype)
        return out


def test_recorded_shapes_match_fx_interpreter():
    gm, why = trace(Mixed().eval())
    assert gm is not None, why
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        _InterpreterShapes(gm).run(x.clone())
    expected = _shapes(gm)
    for run in (real_shapes, cheap_shapes):
        shapes = run(gm, (x,))
        assert {n.name: shapes.get(n) for n in gm.graph.nodes} == expected
    assert sum(v is not None for v in expected.values()) > 8


def _roundtrip(gm: nn.Module) -> nn.Module:
    buffer = io.BytesIO()
    torch.save(gm, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("read", ["call", "code", "str", "pickle", "deepcopy", "copy"])
def test_a_stale_graph_module_reads_its_current_graph(read):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten()).eval()
    gm, _ = trace(model)
    x = torch.randn(1, 3, 8, 8)
    gm(x)  # compiled once
    output = next(n for n in gm.graph.nodes if n.op == "output")
    with gm.graph.inserting_before(output):
        doubled = gm.graph.call_function(operator.mul, (output.args[0], 2.0))
    output.args = (doubled,)
    defer_recompile(gm)
    assert is_stale(gm)
    want = model(x) * 2
    if read == "code":
        assert "mul" in gm.code
    elif read == "str":
        assert "mul" in str(gm)
    else:
        other = {"call": gm, "pickle": None, "deepcopy": None, "copy": None}[read]
        if read == "pickle":
            other = _roundtrip(gm)
        elif read == "deepcopy":
            other = copy.deepcopy(gm)
        elif read == "copy":
            other = copy.copy(gm)
        assert torch.equal(other(x), want)


def test_a_freshly_traced_module_runs_prints_and_pickles_before_any_recompile():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True)).eval()
    x = torch.randn(1, 3, 8, 8)
    for use in (lambda g: g(x), lambda g: _roundtrip(g)(x), lambda g: (str(g), g(x))[1]):
        gm, _ = trace(model)
        assert is_stale(gm)
        assert torch.equal(use(gm), model(x))


def _torch_unused(gm: fx.GraphModule) -> set[str]:
    probe = copy.deepcopy(gm)
    before = {n for n, _ in probe.named_modules()}
    probe.delete_all_unused_submodules()
    return before - {n for n, _ in probe.named_modules()}


def test_unused_submodules_are_the_ones_torch_deletes():
    class Tree(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Sequential(nn.ReLU(), nn.Conv2d(3, 3, 1)))
            self.b = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1))
            self.c = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return self.c(self.b(self.a(x))) + self.b[0].weight.sum()

    gm = fx.symbolic_trace(Tree())
    gm.add_submodule("called.inner", nn.Sequential(nn.ReLU(), nn.Identity()))
    with gm.graph.inserting_before(next(n for n in gm.graph.nodes if n.op == "output")):
        gm.graph.call_module("called", (next(iter(gm.graph.nodes)),))
    for node in list(gm.graph.nodes):  # drop the calls of a.1.1 and b.1: their modules become unused
        if node.op == "call_module" and node.target in ("a.1.1", "b.1"):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
    expected = _torch_unused(gm)
    assert expected  # the case is not trivial
    before = {n for n, _ in gm.named_modules()}
    delete_unused_submodules(gm)
    assert before - {n for n, _ in gm.named_modules()} == expected


def _tree(gm: nn.Module) -> dict:
    """Module paths (leaf objects by identity, made containers by type), tensors by identity, flags."""
    modules = {n: id(m) if type(m) is not nn.Module else "made" for n, m in gm.named_modules() if n}
    tensors = {n: id(t) for n, t in [*gm.named_parameters(), *gm.named_buffers()]}
    return {"modules": modules, "tensors": tensors, "training": gm.training, "tracer": gm._tracer_cls}


@pytest.mark.parametrize("family", ["acb", "repvgg", "functional", "repeated", "inplace_module", "odd_names"])
def test_graph_module_holds_what_torchs_constructor_gives_it(family):
    from tests.engine._random_models import generate

    model = generate(0, family).model.eval()
    model.extra = nn.Sequential(nn.Conv2d(3, 3, 1))  # an attribute the graph does not name stays out
    tracer = Tracer()
    graph = tracer.trace(model)
    ours = graph_module(tracer.root, graph, "M")
    torchs = fx.GraphModule(tracer.root, graph, "M")
    assert _tree(ours) == _tree(torchs) and "extra" not in dict(ours.named_modules())


class _TorchFunctions(nn.Module):
    """Torch functions on proxies: top-level, in lists, as keywords, as methods, nested."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.scale = nn.Parameter(torch.ones(4))

    def forward(self, x):
        y = self.conv(x)
        z = torch.cat([y, F.relu(y)], dim=1)
        z = F.interpolate(z, scale_factor=2.0, mode="nearest")
        z = torch.add(z[:, :4], y.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3), alpha=0.5)
        torch._assert(z.dim() == 4, "rank")
        return torch.stack((z.mean((2, 3)), z.amax(dim=(2, 3)) * self.scale)).sum(0)


@pytest.mark.parametrize("family", ["acb", "functional", "repeated", "odd_names", "two_outputs", None])
def test_tracer_records_the_graph_torchs_tracer_records(family):
    from tests.engine._random_models import generate

    model = (generate(0, family).model if family else _TorchFunctions()).eval()
    ours, torchs = Tracer().trace(model), fx.Tracer().trace(model)
    assert str(ours) == str(torchs)
    assert [n.meta.get("nn_module_stack") for n in ours.nodes] == [
        n.meta.get("nn_module_stack") for n in torchs.nodes
    ]
    for op in ("call_module", "get_attr", "placeholder", "output"):  # fx indexes nodes by op
        assert ours.find_nodes(op=op) == [n for n in ours.nodes if n.op == op]


def test_identity_calls_get_no_node_unless_hooked():
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Identity(), nn.ReLU(), nn.Identity()).eval()
    ops = [n.op for n in Tracer().trace(model).nodes]
    assert ops == ["placeholder", "call_module", "call_module", "output"]
    model[3].register_forward_hook(lambda *_: None)  # someone watches it: it stays a call
    targets = [n.target for n in Tracer().trace(model).nodes if n.op == "call_module"]
    assert targets == ["0", "2", "3"]


@pytest.mark.parametrize(
    ("kind", "geometry"),
    [
        (nn.Conv1d, dict(kernel=(3,), stride=(2,), padding=(1,), dilation=(1,), groups=1)),
        (nn.Conv2d, dict(kernel=(3, 5), stride=(1, 2), padding=(1, 4), dilation=(1, 2), groups=4)),
        (
            nn.Conv3d,
            dict(kernel=(1, 3, 3), stride=(1, 1, 1), padding=(0, 1, 1), dilation=(1, 1, 1), groups=2),
        ),
    ],
)
def test_blank_conv_is_the_constructors_conv(kind, geometry):
    kernel = geometry.pop("kernel")
    ours = blank_conv(kind, 8, 12, kernel, **geometry)
    theirs = kind(8, 12, kernel, bias=True, device="meta", **geometry)
    plain = {k: v for k, v in vars(theirs).items() if not isinstance(v, dict | set)}
    assert {k: v for k, v in vars(ours).items() if not isinstance(v, dict | set)} == plain
    assert ours.extra_repr() == theirs.extra_repr()
    x = torch.randn(1, 8, *[9] * len(kernel))
    ours.weight = nn.Parameter(torch.randn(theirs.weight.shape))
    ours.bias = nn.Parameter(torch.randn(12))
    expected = getattr(F, f"conv{len(kernel)}d")(
        x, ours.weight, ours.bias, **{k: geometry[k] for k in ("stride", "padding", "dilation", "groups")}
    )
    assert torch.equal(ours(x), expected)


def is_free(gm: fx.GraphModule, path: str, leaving: set) -> bool:
    return ModuleNames(gm).free(path, leaving)


def test_free_names_exclude_named_paths_their_parents_and_children():
    gm = fx.symbolic_trace(nn.Sequential(nn.Sequential(nn.Conv2d(3, 3, 1)), nn.ReLU()))
    conv = next(n for n in gm.graph.nodes if n.op == "call_module" and n.target == "0.0")
    assert not is_free(gm, "0.0", set())  # named by a node
    assert not is_free(gm, "0", set())  # a node names a path below it
    assert not is_free(gm, "0.0.x", set())  # a called module sits on its path
    assert is_free(gm, "0.0", {conv}) and is_free(gm, "0", {conv})  # once that node leaves
    assert is_free(gm, "fused", set())
    assert not is_free(gm, "", set())
    assert choose_name(gm, ["0", "1"], set()) == "1_1"
    assert choose_name(gm, ["", "0.0"], {conv}) == "0.0"


def _counts(names: ModuleNames) -> dict[str, int]:
    names.count("")  # reads the graph if it has not yet
    return {k: v for k, v in names._targets.items() if v}


def test_module_names_kept_by_a_pass_match_the_graph_after_its_rewrites(monkeypatch):
    """The index fold_bn keeps through install() equals one read from the final graph."""
    kept: list[ModuleNames] = []

    def spy(gm, name, module, root, args, leaving, names=None):
        if names is not None and names not in kept:
            kept.append(names)
        return install(gm, name, module, root, args, leaving, names)

    monkeypatch.setattr(fold_bn_pass, "install", spy)
    model = nn.Sequential(
        *[nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)) for _ in range(4)]
    )
    gm, _ = trace(model.eval())
    fold_bn_pass.FoldBN().run(gm, PassContext(example_inputs=(torch.randn(1, 3, 8, 8),)))
    assert len(kept) == 1 and _counts(kept[0]) == _counts(ModuleNames(gm))
    assert len(_counts(ModuleNames(gm))) == 4  # one fused conv per pair, nothing else named


@pytest.mark.parametrize(
    "channels,groups,size",
    [(1, 1, (1, 1)), (8, 1, (3, 3)), (8, 2, (3, 3)), (12, 12, (3,)), (6, 3, (1, 3, 5))],
)
def test_identity_kernel_is_one_per_channel_at_the_centre(channels, groups, size):
    kernel = identity_kernel(channels, groups, size, dtype=torch.float64)
    per_group = channels // groups
    expected = torch.zeros(channels, per_group, *size, dtype=torch.float64)
    for c in range(channels):
        expected[(c, c % per_group, *(s // 2 for s in size))] = 1.0
    assert torch.equal(kernel, expected)


def test_large_but_finite_half_precision_weights_are_not_refused():
    model = nn.Sequential(nn.Conv2d(3, 64, 3), nn.BatchNorm2d(64)).half()
    with torch.no_grad():
        model[0].weight.fill_(60000.0)  # the 2-norm overflows float16; every value is finite
    refuse_nonfinite_weights(model)
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = float("inf")
    with pytest.raises(ReparamError, match=r"0\.weight \(1 of 1728\)"):
        refuse_nonfinite_weights(model)


def test_nothing_but_the_deploy_model_holds_its_weights_after_conversion():
    # An eval-mode model is converted sharing its layers, and own_copy copies what is still shared;
    # a GraphModule is in a cycle with its graph, so the verifier empties its tables to free it.
    model = create_model("acb_resnet18", num_classes=10, width=0.25).eval()
    gc.collect()
    gc.disable()
    try:
        deploy = convert(model, input_shape=(1, 3, 32, 32), check=False).model
        weights = [weakref.ref(p) for p in deploy.parameters()]
        for sub in deploy.modules():
            sub._parameters.clear()
            sub._buffers.clear()
        assert not [w for w in weights if w() is not None]
    finally:
        gc.enable()
