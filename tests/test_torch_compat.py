"""reparam.torch_compat: each private torch internal and its public-API fallback compute the same."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import textwrap
import typing
import warnings
from pathlib import Path

import pytest
import tomllib
import torch
import torch.nn.functional as F
import torch.utils._pytree as pytree
from torch import fx, nn

import reparam
from reparam import torch_compat as tc
from reparam.engine.capture import symbolic_trace
from reparam.engine.graph import blank_conv
from reparam.errors import ReparamError

ROOT = Path(__file__).resolve().parents[1]


class _Net(nn.Module):
    """Module calls, torch functions, tensor methods, a magic method and a constant made in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        y = torch.relu(self.bn(self.conv(x)))
        z = y.flatten(1).softmax(-1) + torch.ones(1)
        return y * 2, {"flat": z, "none": None}


def _graph_text(gm: fx.GraphModule) -> list[tuple]:
    return [(n.name, n.op, str(n.target), str(n.args), str(n.kwargs)) for n in gm.graph.nodes]


def test_tracing_through_the_public_fallbacks_records_the_same_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    net = _Net().eval()
    x = torch.randn(2, 3, 5, 5)
    private = symbolic_trace(net)
    # as on a torch without the private names
    monkeypatch.setattr(tc, "_FAST_APPEND", False)
    monkeypatch.setattr(tc, "_TARGET_TO_STR", tc._public_target_to_str)
    monkeypatch.setattr(tc, "_NAMES", {})
    public = symbolic_trace(net)
    assert _graph_text(public) == _graph_text(private)
    assert [n.name for n in public.graph.nodes] == [n.name for n in fx.symbolic_trace(net).graph.nodes]
    for gm in (public, private):
        gm.graph.lint()
        out, ref = gm(x), net(x)
        assert torch.equal(out[0], ref[0]) and torch.equal(out[1]["flat"], ref[1]["flat"])


def _small_graph(add: object) -> fx.Graph:
    g = fx.Graph()
    x = g.placeholder("x")
    y = add(g, "call_function", torch.relu, (x,), {})
    z = add(g, "call_method", "add", (y, y), {})
    g.output(z)
    return g


@pytest.mark.parametrize("fast", [True, False])
def test_append_node_gives_what_create_node_gives(fast: bool) -> None:
    ours = _small_graph(lambda g, *a: tc.append_node(g, *a, fast=fast))
    theirs = _small_graph(lambda g, *a: g.create_node(*a))
    ours.lint()
    assert [(n.name, n.op, n.target) for n in ours.nodes] == [(n.name, n.op, n.target) for n in theirs.nodes]
    assert len(list(ours.nodes)) == len(list(theirs.nodes)) == 4
    assert ours.find_nodes(op="call_method", target="add")


@pytest.mark.parametrize(
    "target",
    [torch.relu, F.conv2d, "__add__", "camelCase", "ALL_CAPS", "conv.weight", "getitem", "pascalCaseName"],
)
def test_target_names_public_and_private_agree(target: object) -> None:
    assert tc._public_target_to_str(target) == tc._private_target_to_str(target)
    assert tc._public_target_to_str(target) == fx.Graph()._target_to_str(target)


def test_erased_nodes_are_found_with_and_without_the_node_flag() -> None:
    g = fx.Graph()
    x = g.placeholder("x")
    dead = g.call_function(torch.relu, (x,))
    g.output(x)
    assert not tc.is_erased(dead) and not tc._erased_by_membership(dead)
    g.erase_node(dead)
    assert tc.is_erased(dead) and tc._erased_by_membership(dead)
    assert not tc._erased_by_membership(x)


def test_tracer_information_is_copied_where_the_graph_has_it() -> None:
    gm = fx.symbolic_trace(_Net())
    fresh = fx.GraphModule(nn.Module(), fx.Graph())
    tc.copy_tracer_info(gm.graph, fresh)
    assert fresh._tracer_cls is fx.Tracer

    class _Bare:  # a graph of a torch that records no tracer
        pass

    before = dict(vars(fresh))
    tc.copy_tracer_info(_Bare(), fresh)
    assert dict(vars(fresh)) == before


def test_special_callables_are_not_plain_functions() -> None:
    assert tc.is_plain_function(torch.relu) and tc.is_plain_function(F.conv2d)
    cond = torch.ops.higher_order.cond
    assert not tc.is_plain_function(cond)
    assert all(isinstance(t, type) for t in tc.SPECIAL_CALLABLES)


@pytest.mark.parametrize(
    "tree",
    [(1, None, [2, {"a": 3, "b": (4,)}]), [], {"x": None}, ((), [None]), 7],
)
def test_node_leaves_flatten_as_torch_pytree_does(tree: object) -> None:
    assert tc.node_leaves(tree) == pytree.tree_flatten(tree)[0]


@pytest.mark.parametrize("ord", [2, float("inf")])
def test_fused_and_public_norms_agree_and_see_nan_and_inf(ord: float) -> None:
    g = torch.Generator().manual_seed(0)
    ts = [torch.randn(3, 4, generator=g), torch.randn(5, generator=g), torch.randn(2, 2, 2, generator=g)]
    ts[1][2] = float("nan")
    ts[2][0, 1, 1] = float("-inf")
    fused, public = tc.fused_norms(ts, ord, fused=True), tc.fused_norms(ts, ord, fused=False)
    assert torch.allclose(fused[0], public[0]) and torch.isfinite(public[0])
    assert (
        [bool(torch.isfinite(n)) for n in fused]
        == [bool(torch.isfinite(n)) for n in public]
        == [True, False, False]
    )
    assert tc.fused_norms([], ord) == []


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
def test_a_blank_conv_pads_as_a_constructed_one_in_every_padding_mode(mode: str) -> None:
    made = nn.Conv2d(3, 4, (3, 5), padding=(1, 2), padding_mode=mode)
    blank = blank_conv(nn.Conv2d, 3, 4, (3, 5), stride=(1, 1), padding=(1, 2), dilation=(1, 1), groups=1)
    blank.padding_mode = mode
    blank.weight, blank.bias = made.weight, made.bias
    x = torch.randn(1, 3, 6, 7)
    assert torch.equal(blank(x), made(x))


def test_an_exported_module_with_a_free_batch_has_size_guards_that_refuse_what_the_program_cannot_take() -> (
    None
):
    class _Halves(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.reshape(x.shape[0], 2, -1).sum(1)

    x = torch.randn(2, 6)
    batch = torch.export.Dim("batch")
    program = torch.export.export(_Halves(), (x,), dynamic_shapes=({0: batch},), strict=False)
    guards = tc.size_guards(program.module())
    assert guards is not None
    guards(torch.randn(5, 6))  # another batch passes
    with pytest.raises(Exception):  # noqa: B017 - torch raises its own guard error types
        guards(torch.randn(2, 8))
    assert tc.size_guards(nn.Linear(2, 2)) is None  # no guards: the caller captures at fixed sizes


def test_avg_pool2d_bindings_name_functional_first() -> None:
    bindings = tc.avg_pool2d_bindings()
    assert bindings[0] is F and all(b.avg_pool2d is F.avg_pool2d for b in bindings)


def test_versions_parse_and_a_missing_feature_names_the_torch_it_needs() -> None:
    assert tc.torch_version("2.6.0+cu124") == (2, 6) and tc.torch_version("2.15.0") == (2, 15)
    tc.require_torch((2, 0), "anything")
    with pytest.raises(ReparamError, match=r"a feature needs torch >= 99\.0; this is torch") as err:
        tc.require_torch((99, 0), "a feature")
    assert "pip install 'torch>=99.0'" in str(err.value)


def test_the_declared_torch_range_is_the_one_tested() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_spec = next(d for d in deps if re.match(r"torch\b", d))
    floor = re.search(r">=\s*(\d+\.\d+)", torch_spec)
    ceiling = re.search(r"<\s*(\d+\.\d+)", torch_spec)
    assert torch_spec.replace(" ", "") == reparam.TORCH_REQUIREMENT  # what the refusal's hint installs
    assert floor and tc.torch_version(floor.group(1)) == reparam.MIN_TORCH
    assert tc.torch_version() >= reparam.MIN_TORCH
    # make test runs on the floor, make test-torch-range on the newest release below the ceiling
    makefile = (ROOT / "Makefile").read_text()
    pinned = re.search(r"^TORCH_PIN := torch==(\S+)", makefile, re.M)
    newest = re.search(r"^TORCH_NEWEST := (\S+)", makefile, re.M)
    assert pinned and tc.torch_version(pinned.group(1)) == reparam.MIN_TORCH
    assert (
        ceiling
        and newest
        and reparam.MIN_TORCH < tc.torch_version(newest.group(1)) < tc.torch_version(ceiling.group(1))
    )


@pytest.mark.parametrize("version", ["2.12.1", "2.6.0+cu124", "1.13.1", None])
def test_a_torch_below_the_floor_or_none_is_refused_with_the_declared_range(version: str | None) -> None:
    with pytest.raises(ReparamError) as err:
        reparam.check_torch(version)
    assert err.value.hint == f"pip install '{reparam.TORCH_REQUIREMENT}'"
    if version is None:
        assert err.value.message == "reparam needs torch, which is not installed"
    else:
        assert err.value.message == f"reparam needs torch >= 2.13; this is torch {version}"


@pytest.mark.parametrize("version", ["2.13.0", "2.13.0+cpu", "2.15.0", "2.14.0a0+git1234"])
def test_a_torch_from_the_floor_up_is_taken(version: str) -> None:
    reparam.check_torch(version)
    assert reparam.torch_refusal(version) is None


REFUSAL = (
    "error: reparam needs torch >= 2.13; this is torch {version}\n"
    f"  hint: pip install '{reparam.TORCH_REQUIREMENT}'\n"
)


def _python(code: str, *args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["zoo"],
        ["convert", "ckpt.pth", "--arch", "acb_resnet18", "-o", "model.pt2"],
        ["verify", "ckpt.pth", "--deploy", "model.pt2"],
    ],
)
def test_every_command_on_an_old_torch_is_one_error_line_and_a_hint(tmp_path: Path, argv: list[str]) -> None:
    """torch itself says it is 2.6.0 (imported first, as a training script would), then `reparam` runs."""
    (tmp_path / "ckpt.pth").write_bytes(b"not read")
    code = """
        import runpy, sys
        import torch
        torch.__version__ = "2.6.0"
        sys.argv = ["reparam", *sys.argv[1:]]
        runpy.run_module("reparam", run_name="__main__")
    """
    proc = _python(code, *argv, cwd=tmp_path)
    assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", REFUSAL.format(version="2.6.0"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pth"]


def test_the_installed_script_refuses_a_torch_whose_metadata_is_old_without_importing_it(
    tmp_path: Path,
) -> None:
    """The `reparam` script as installed, with the package metadata saying torch 2.4.1."""
    script = Path(sys.executable).with_name("reparam")
    if not script.is_file():
        pytest.skip("the reparam script is not installed next to this Python")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        textwrap.dedent(
            """
            import importlib.metadata as metadata
            _version = metadata.version
            metadata.version = lambda name: "2.4.1" if name == "torch" else _version(name)
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run(
        [str(script), "zoo"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", REFUSAL.format(version="2.4.1"))


def test_import_reparam_on_an_old_torch_raises_a_reparam_error_with_the_hint(tmp_path: Path) -> None:
    code = """
        import sys
        import torch
        torch.__version__ = "2.12.1"
        try:
            import reparam
        except Exception as exc:
            # `reparam` failed to load; its errors module did, and names the class raised
            assert isinstance(exc, sys.modules["reparam.errors"].ReparamError)
            print(exc.message)
            print(exc.hint)
            print(exc.exit_code)
        else:
            raise SystemExit("imported")
    """
    proc = _python(code, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "reparam needs torch >= 2.13; this is torch 2.12.1",
        f"pip install '{reparam.TORCH_REQUIREMENT}'",
        "2",
    ]
    # not caught: the same two lines as the CLI's, no traceback, exit 2
    proc = _python("import torch; torch.__version__ = '2.12.1'; import reparam", cwd=tmp_path)
    assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", REFUSAL.format(version="2.12.1"))


def test_a_torch_loaded_after_reparam_is_checked_when_the_engine_loads(tmp_path: Path) -> None:
    """`import reparam` read the metadata (a supported torch); the torch actually imported is older."""
    code = """
        import reparam
        import torch
        torch.__version__ = "2.8.0"
        import reparam.engine
    """
    proc = _python(code, cwd=tmp_path)
    assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", REFUSAL.format(version="2.8.0"))


class _Peeks(nn.Module):
    """Reads a value from the data to pick a size: torch.export cannot capture it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, : int(x.abs().max().item()) % 2 + 1]


def _export_peeks() -> None:
    torch.export.export(_Peeks(), (torch.randn(1, 3),), strict=False)


def test_a_failed_export_prints_no_partial_graph_and_warnings_still_show(capsys) -> None:
    with pytest.raises(Exception):  # noqa: B017 - torch's own error types
        _export_peeks()
    assert "def forward" in capsys.readouterr().err  # what torch prints on its own
    with pytest.raises(Exception) as err, tc.export_graphs_unprinted():  # noqa: B017
        _export_peeks()
    assert "data-dependent" in str(err.value)
    assert capsys.readouterr().err == ""
    with pytest.warns(UserWarning, match="shown after"), tc.export_graphs_unprinted():
        warnings.warn("shown after", UserWarning, stacklevel=1)
        print("dropped", file=sys.stderr)
    assert capsys.readouterr().err == ""


def _program_text(program: torch.export.ExportedProgram) -> list[str]:
    nodes = [
        f"{n.name} {n.op} {n.target} {getattr(n.meta.get('val'), 'shape', None)}" for n in program.graph.nodes
    ]
    return [program.graph_module.code, str(program.range_constraints), *nodes]


def test_memoized_pt2_serde_writes_and_loads_the_same_program(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from torch._export.serde import serialize

    from reparam.artifact import read_artifact, serialize_artifact

    def stage(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, 2, 1), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]

    # strided layers: every size past the first is an expression of the free height and width
    model = nn.Sequential(
        *stage(3, 4), *stage(4, 4), *stage(4, 8), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    ).eval()
    x = torch.randn(2, 3, 64, 64)
    originals = (serialize._print_sympy, serialize.GraphModuleDeserializer._parse_sym_expr)
    assert tc._serde_internals() is serialize  # the memoized path is the one the tested torch runs
    memoized, _ = serialize_artifact(model, (x,))
    (tmp_path / "memo.pt2").write_bytes(memoized)
    fast = read_artifact(tmp_path / "memo.pt2")
    monkeypatch.setattr(tc, "_serde_internals", lambda: None)  # as on a torch without these internals
    plain, _ = serialize_artifact(model, (x,))
    assert plain == memoized
    slow = read_artifact(tmp_path / "memo.pt2")
    exported = [torch.export.load(tmp_path / "memo.pt2")]
    monkeypatch.undo()
    with tc.program_serde_memoized():
        exported.append(torch.export.load(tmp_path / "memo.pt2"))
    assert _program_text(exported[0]) == _program_text(exported[1])
    assert "s" in str(exported[1].range_constraints)  # free sizes: symbolic expressions were read
    y = torch.randn(3, 3, 40, 56)
    assert torch.equal(fast.module(y), slow.module(y))
    # torch's own functions and typing are back, also after a failure inside and a nested use
    with pytest.raises(RuntimeError), tc.program_serde_memoized():
        with tc.program_serde_memoized():
            assert serialize.typing is not typing
        assert serialize.typing is not typing
        raise RuntimeError("inside")
    assert (serialize._print_sympy, serialize.GraphModuleDeserializer._parse_sym_expr) == originals
    assert serialize.typing is typing


def test_a_capture_without_the_fake_tensor_cache_writes_the_same_program(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from torch._dynamo import config

    from reparam import dynamic_shapes
    from reparam.artifact import serialize_artifact

    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, 2, 1), nn.ReLU(), nn.MaxPool2d(3, 2, 1), nn.Conv2d(4, 8, 3, 2, 1), nn.Flatten(2)
    ).eval()
    x = torch.randn(2, 3, 40, 48)
    before = getattr(config, "fake_tensor_cache_enabled", None)
    with tc.fake_tensor_cache_off():  # a torch without the setting: nothing changes
        assert getattr(config, "fake_tensor_cache_enabled", None) is (False if before is not None else None)
    assert getattr(config, "fake_tensor_cache_enabled", None) == before
    uncached, _ = serialize_artifact(model, (x,))
    monkeypatch.setattr(dynamic_shapes, "fake_tensor_cache_off", contextlib.nullcontext)
    cached, _ = serialize_artifact(model, (x,))
    assert uncached == cached
