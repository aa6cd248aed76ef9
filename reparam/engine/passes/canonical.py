"""Make a traced graph speak in modules, whatever code computed it.

Real model code calls ``F.batch_norm`` inside a BatchNorm subclass with its own forward (timm's
``BatchNormAct2d``), ``F.conv2d`` with a weight built in ``forward`` from several parameters, and
asserts on ``x.ndim``. This pass rewrites such graphs into the form every other pass reads:

1. rank facts (``x.ndim``, ``x.dim()``) become constants, and asserts that are then always true go;
2. every subgraph that reads only parameters and buffers is evaluated once in float64 and becomes a
   constant buffer (a weight computed in ``forward`` stops being recomputed on every call);
3. ``F.conv*d`` / ``F.batch_norm`` / ``F.avg_pool*d`` / ``F.linear`` calls on constant weights become
   calls of plain ``nn`` modules holding those tensors.

Every rewrite computes exactly what it replaces (the same arithmetic in the same module forms).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from reparam.engine.base import PassContext, PassResult, register_pass
from reparam.engine.graph import ALIASES, attribute_lookup, fetch, shallow_copy, shape_of
from reparam.engine.graphmodule import FOLDED_PREFIX, defer_recompile, eliminate_dead_code
from reparam.engine.shapes import propagate_shapes

_RANDOM = {
    torch.rand, torch.randn, torch.randint, torch.rand_like, torch.randn_like, torch.randint_like,
    torch.bernoulli, torch.normal, torch.multinomial, torch.randperm, F.dropout, F.dropout1d, F.dropout2d,
    F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout,
}  # fmt: skip
_RANDOM_METHODS = {"uniform_", "normal_", "bernoulli_", "random_", "exponential_", "cauchy_", "log_normal_"}
_PURE_SCALAR = {operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge, operator.not_}
_aten = torch.ops.aten
_CONV = {
    F.conv1d: 1, F.conv2d: 2, F.conv3d: 3, torch.conv1d: 1, torch.conv2d: 2, torch.conv3d: 3,
    _aten.conv1d.default: 1, _aten.conv2d.default: 2, _aten.conv3d.default: 3,
}  # fmt: skip
_POOL = {
    F.avg_pool1d: 1, F.avg_pool2d: 2, F.avg_pool3d: 3, torch.avg_pool1d: 1,
    _aten.avg_pool1d.default: 1, _aten.avg_pool2d.default: 2, _aten.avg_pool3d.default: 3,
}  # fmt: skip
_BATCH_NORM = {
    F.batch_norm: "batch_norm",
    _aten.batch_norm.default: "aten_batch_norm",
    _aten._native_batch_norm_legit_no_training.default: "aten_bn_no_training",
}
_LINEAR = {F.linear, _aten.linear.default}
_BN_BY_DIM = {0: nn.BatchNorm1d, 1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_POOL_BY_DIM = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
_CONV_BY_DIM = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def _fold_rank_facts(gm: fx.GraphModule) -> int:
    """``x.ndim``/``x.dim()`` -> constants; scalar comparisons of constants and true asserts go."""
    changed = 0
    for node in list(gm.graph.nodes):
        value: Any = _NOTHING
        if (
            node.op == "call_function"
            and node.target is getattr
            and node.args[1:] == ("ndim",)
            or node.op == "call_method"
            and node.target == "dim"
            and len(node.args) == 1
            and not node.kwargs
        ):
            shape = shape_of(node.args[0])
            value = len(shape) if shape is not None else _NOTHING
        elif node.op == "call_function" and node.target in _PURE_SCALAR and not node.kwargs:
            if not any(isinstance(a, fx.Node) for a in node.args):
                value = node.target(*node.args)
        elif (
            node.op == "call_function" and node.target is torch._assert and node.args and node.args[0] is True
        ):
            gm.graph.erase_node(node)
            changed += 1
            continue
        if value is not _NOTHING:
            node.replace_all_uses_with(value)  # type: ignore[arg-type]
            gm.graph.erase_node(node)
            changed += 1
    return changed


_NOTHING = object()


def _parameter_only(gm: fx.GraphModule) -> dict[fx.Node, bool]:
    """Nodes whose value depends on parameters/buffers and literals only (at least one get_attr)."""
    const: dict[fx.Node, bool] = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            const[node] = True
            continue
        if node.op not in ("call_function", "call_method") or not node.all_input_nodes:
            const[node] = False
            continue
        random = node.target in _RANDOM or (node.op == "call_method" and node.target in _RANDOM_METHODS)
        const[node] = not random and all(const.get(n, False) for n in node.all_input_nodes)
    return const


def _fold_constants(gm: fx.GraphModule, ctx: PassContext) -> list[str]:
    """Evaluate maximal parameter-only subgraphs in float64; each becomes one constant buffer."""
    const = _parameter_only(gm)
    roots = [
        n
        for n in gm.graph.nodes
        if const[n] and n.op != "get_attr" and any(not const.get(u, False) for u in n.users)
    ]
    folded: list[str] = []
    if not roots:
        return folded
    needed: set[fx.Node] = set()
    stack = list(roots)
    while stack:
        node = stack.pop()
        if node not in needed:
            needed.add(node)
            stack.extend(node.all_input_nodes)
    values: dict[fx.Node, Any] = {}
    for node in gm.graph.nodes:
        if node not in needed:
            continue
        if node.op == "get_attr":
            t = fetch(gm, str(node.target))
            values[node] = t.detach().double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t
            continue
        args = fx.node.map_arg(node.args, lambda n: values[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: values[n])
        with torch.no_grad():
            if node.op == "call_method":
                values[node] = getattr(args[0], node.target)(*args[1:], **kwargs)
            else:
                values[node] = node.target(*args, **kwargs)
    for node in roots:
        value = values[node]
        if not isinstance(value, torch.Tensor):
            continue
        meta = node.meta.get("tensor_meta")
        dtype = getattr(meta, "dtype", None) or _dtype_of_inputs(gm, node)
        name = _free_name(gm, f"{FOLDED_PREFIX}{node.name}")
        gm.register_buffer(name, value.to(dtype).detach().clone(memory_format=torch.contiguous_format))
        with gm.graph.inserting_before(node):
            new = gm.graph.get_attr(name)
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        folded.append(name)
        ctx.provenance[name] = {ctx.full(_source_of(gm, node))}
    return folded


def _dtype_of_inputs(gm: fx.GraphModule, node: fx.Node) -> torch.dtype:
    for n in node.all_input_nodes:
        if n.op == "get_attr":
            t = fetch(gm, str(n.target))
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                return t.dtype
    return torch.float32


def _source_of(gm: fx.GraphModule, node: fx.Node) -> str:
    """Module path of the first parameter a node reads (for the report)."""
    seen, stack = set(), [node]
    while stack:
        n = stack.pop()
        if n.op == "get_attr":
            return str(n.target).rpartition(".")[0] or str(n.target)
        for m in n.all_input_nodes:
            if m not in seen:
                seen.add(m)
                stack.append(m)
    return node.name


def _free_name(gm: fx.GraphModule, base: str) -> str:
    name, i = base, 1
    while hasattr(gm, name):
        name, i = f"{base}_{i}", i + 1
    return name


def _tensor_attr(attribute: Callable[[str], Any], arg: Any) -> torch.Tensor | None | object:
    """The tensor behind a get_attr argument, None for None, _NOTHING for anything else."""
    if arg is None:
        return None
    if isinstance(arg, fx.Node) and arg.op == "get_attr":
        t = attribute(str(arg.target))
        return t if isinstance(t, torch.Tensor) else _NOTHING
    return _NOTHING


def _as_parameter(t: torch.Tensor) -> nn.Parameter:
    return t if isinstance(t, nn.Parameter) else nn.Parameter(t.detach(), requires_grad=False)


_SIGNATURES = {
    "conv": ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
    "batch_norm": ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"),
    "aten_batch_norm": (
        "input",
        "weight",
        "bias",
        "running_mean",
        "running_var",
        "training",
        "momentum",
        "eps",
        "cudnn_enabled",
    ),
    "aten_bn_no_training": ("input", "weight", "bias", "running_mean", "running_var", "momentum", "eps"),
    "avg_pool": (
        "input",
        "kernel_size",
        "stride",
        "padding",
        "ceil_mode",
        "count_include_pad",
        "divisor_override",
    ),
    "linear": ("input", "weight", "bias"),
}


_TENSOR_ARGUMENTS = frozenset({"input", "weight", "bias", "running_mean", "running_var"})


def _holds_node(value: Any) -> bool:
    """Whether a graph value is anywhere inside ``value`` (a size read in ``forward``, in a tuple or not)."""
    found = False

    def visit(v: Any) -> Any:
        nonlocal found
        found = found or isinstance(v, fx.Node)
        return v

    fx.node.map_aggregate(value, visit)
    return found


def _normalized(node: fx.Node, signature: str) -> dict[str, Any] | None:
    """Arguments by name for the few functional signatures lifted here (None if they do not fit).

    A module's settings are constants: a call whose non-tensor argument is computed in the graph
    (``kernel_size=x.size(3)``, a stride in a tuple) stays the functional call it is.
    """
    names = _SIGNATURES[signature]
    if len(node.args) > len(names) or set(node.kwargs) - set(names):
        return None
    kw = {**dict(zip(names, node.args)), **node.kwargs}
    if any(_holds_node(v) for k, v in kw.items() if k not in _TENSOR_ARGUMENTS):
        return None
    return kw


def _lift_conv(attribute: Callable[[str], Any], node: fx.Node, ndim: int) -> tuple[nn.Module, fx.Node] | None:
    kw = _normalized(node, "conv")
    if kw is None or not isinstance(kw.get("input"), fx.Node):
        return None
    weight, bias = _tensor_attr(attribute, kw.get("weight")), _tensor_attr(attribute, kw.get("bias"))
    if not isinstance(weight, torch.Tensor) or bias is _NOTHING:
        return None
    groups = int(kw.get("groups", 1))
    out_ch, in_per_group, *kernel = weight.shape
    conv = _CONV_BY_DIM[ndim](
        in_per_group * groups,
        out_ch,
        tuple(kernel),
        stride=kw.get("stride", 1),
        padding=kw.get("padding", 0),
        dilation=kw.get("dilation", 1),
        groups=groups,
        bias=bias is not None,
        device="meta",
    )
    conv.weight = _as_parameter(weight)
    if bias is not None:
        conv.bias = _as_parameter(bias)
    return conv, kw["input"]


_BLANK: dict[type, nn.Module] = {}


def _blank_batch_norm(kind: type, num_features: int, eps: float) -> nn.Module:
    """A BatchNorm without parameters or statistics: a copy of one built once per class.

    Building each from scratch (parameters allocated, initialised, then replaced) costs more than
    everything else done here per BatchNorm.
    """
    if kind not in _BLANK:
        _BLANK[kind] = kind(1, affine=False, track_running_stats=False)
    bn = shallow_copy(_BLANK[kind])
    bn.num_features, bn.eps = num_features, eps
    return bn


def _lift_batch_norm(
    attribute: Callable[[str], Any], node: fx.Node, signature: str
) -> tuple[nn.Module, fx.Node] | None:
    kw = _normalized(node, signature)
    if kw is None or kw.get("training") or not isinstance(kw.get("input"), fx.Node):
        return None
    stats = [_tensor_attr(attribute, kw.get(k)) for k in ("running_mean", "running_var", "weight", "bias")]
    if any(s is _NOTHING for s in stats) or stats[0] is None or stats[1] is None:
        return None
    shape = shape_of(kw["input"])
    if shape is None or len(shape) < 2:
        return None
    mean, var, weight, bias = stats
    # built without parameters or statistics (allocating and initialising them costs more than
    # everything else here), then given the graph's tensors: the same module as an affine,
    # tracking BatchNorm whose tensors were replaced
    bn = _blank_batch_norm(_BN_BY_DIM[min(len(shape) - 2, 3)], shape[1], float(kw.get("eps", 1e-5)))
    bn.affine, bn.track_running_stats = weight is not None, True
    if weight is not None:
        bn.weight = _as_parameter(weight)
        bn.bias = _as_parameter(bias if bias is not None else torch.zeros_like(weight))
    bn.running_mean, bn.running_var = mean, var
    bn.num_batches_tracked = None
    return bn.eval(), kw["input"]


def _lift_pool(node: fx.Node, ndim: int) -> tuple[nn.Module, fx.Node] | None:
    kw = _normalized(node, "avg_pool")
    if kw is None or not isinstance(kw.get("input"), fx.Node):
        return None
    extra = {} if ndim == 1 else {"divisor_override": kw.get("divisor_override")}
    pool = _POOL_BY_DIM[ndim](
        kw["kernel_size"],
        stride=kw.get("stride") or None,  # ATen writes "no stride" as []
        padding=kw.get("padding", 0),
        ceil_mode=bool(kw.get("ceil_mode", False)),
        count_include_pad=bool(kw.get("count_include_pad", True)),
        **extra,
    )
    return pool, kw["input"]


def _lift_linear(attribute: Callable[[str], Any], node: fx.Node) -> tuple[nn.Module, fx.Node] | None:
    kw = _normalized(node, "linear")
    if kw is None or not isinstance(kw.get("input"), fx.Node):
        return None
    weight, bias = _tensor_attr(attribute, kw.get("weight")), _tensor_attr(attribute, kw.get("bias"))
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or bias is _NOTHING:
        return None
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    linear.weight = _as_parameter(weight)
    if bias is not None:
        linear.bias = _as_parameter(bias)
    return linear, kw["input"]


def _lift(attribute: Callable[[str], Any], node: fx.Node) -> tuple[nn.Module, fx.Node] | None:
    if node.op != "call_function":
        return None
    if node.target in _CONV:
        return _lift_conv(attribute, node, _CONV[node.target])
    if node.target in _BATCH_NORM:
        return _lift_batch_norm(attribute, node, _BATCH_NORM[node.target])
    if node.target in _POOL:
        return _lift_pool(node, _POOL[node.target])
    if node.target in _LINEAR:
        return _lift_linear(attribute, node)
    return None


def _returns_tuple(node: fx.Node) -> bool:
    return node.target is _aten._native_batch_norm_legit_no_training.default


def _only_first_item(node: fx.Node) -> list[fx.Node]:
    """The ``getitem(node, 0)`` users when they are all the node has; [] otherwise."""
    users = list(node.users)
    if users and all(
        u.op == "call_function" and u.target is operator.getitem and u.args[1] == 0 for u in users
    ):
        return users
    return []


def _module_path(gm: fx.GraphModule, node: fx.Node, kind: str) -> str:
    """Where the lifted module is reported: the module owning its weight, else the traced block."""
    for arg in node.all_input_nodes:
        if arg.op == "get_attr":
            owner = str(arg.target).rpartition(".")[0]
            if owner and not str(arg.target).rpartition(".")[2].startswith(FOLDED_PREFIX):
                return owner
    stack = list((node.meta.get("nn_module_stack") or {}).keys())
    return f"{stack[-1]}.{kind}" if stack else kind


def _lift_functional(gm: fx.GraphModule, ctx: PassContext) -> list[str]:
    lifted = []
    aliases: dict[str, str] = getattr(gm, ALIASES, {})
    attribute = attribute_lookup(gm)  # the paths looked up here stay as they are while lifting
    for node in list(gm.graph.nodes):
        found = _lift(attribute, node)
        if found is None:
            continue
        module, src = found
        # ATen's inference batch norm returns (out, mean, rstd): its users read item 0 only
        replaced = _only_first_item(node) if _returns_tuple(node) else [node]
        if not replaced:
            continue
        kind = type(module).__name__.lower()
        original = _module_path(gm, node, kind)
        name = _free_name(gm, f"{original.replace('.', '_')}_{kind}")
        gm.add_submodule(name, module)
        if replaced == [node]:  # the call becomes the module's call, in place
            node.op, node.target, node.args, node.kwargs = "call_module", name, (src,), {}
        else:
            with gm.graph.inserting_before(node):
                new = gm.graph.call_module(name, (src,))
            new.meta = dict(replaced[0].meta)
            for old in replaced:
                old.replace_all_uses_with(new)
                gm.graph.erase_node(old)
            if not node.users:
                gm.graph.erase_node(node)
        aliases[name] = original
        ctx.provenance[name] = {ctx.full(original)}
        lifted.append(name)
    setattr(gm, ALIASES, aliases)
    return lifted


@register_pass
class Canonicalize:
    """Functional ops on constant weights -> modules; parameter-only subgraphs -> constants."""

    name = "canonicalize"
    description = (
        "constant-fold parameter-only subgraphs in float64; turn F.conv*/F.batch_norm/F.avg_pool*/F.linear "
        "calls into modules; drop asserts on tensor rank"
    )

    @torch.no_grad()
    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        propagate_shapes(gm, ctx.example_inputs)
        changed = _fold_rank_facts(gm)
        folded = _fold_constants(gm, ctx)
        lifted = _lift_functional(gm, ctx)
        if folded:
            ctx.notes.append(
                f"{len(folded)} parameter-only subgraph(s) evaluated once in float64 and kept as constants "
                f"({', '.join(folded[:5])}{', ...' if len(folded) > 5 else ''})"
            )
        if changed or folded or lifted:
            eliminate_dead_code(gm.graph)
            defer_recompile(gm)
        return PassResult(gm, bool(changed or folded or lifted), [])
