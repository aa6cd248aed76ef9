"""Every private torch internal the project uses, each behind one function with a public-API fallback.

torch gives no promise about names that start with an underscore: each one used here is looked up
once, and where a torch lacks it (or it changed), the function computes the same result through
public APIs only (usually slower). ``tests/test_torch_compat.py`` runs both paths. A feature the
project cannot do without on an older torch raises a ReparamError naming the torch it needs
(:func:`require_torch`) instead of computing something else.
"""

from __future__ import annotations

import contextlib
import io
import re
import threading
import types
import typing
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import fx, nn
from torch.fx.immutable_collections import immutable_dict
from torch.fx.node import map_aggregate

from reparam import refuse_at_import, release, torch_refusal
from reparam.errors import ReparamError


def torch_version(version: str | None = None) -> tuple[int, int]:
    """``(major, minor)`` of ``version`` (default: the installed torch)."""
    return release(version or torch.__version__)


def require_torch(minimum: tuple[int, int], feature: str) -> None:
    """Raise a ReparamError when the installed torch is older than ``minimum`` for ``feature``."""
    if torch_version() < minimum:
        needed = ".".join(map(str, minimum))
        raise ReparamError(
            f"{feature} needs torch >= {needed}; this is torch {torch.__version__}",
            hint=f"pip install 'torch>={needed}'",
        )


# `import reparam` read the version from the package metadata when torch was not loaded yet; the
# torch actually imported decides (older ones were measured to fuse less: refused, not used)
_refusal = torch_refusal(torch.__version__)
if _refusal is not None:
    refuse_at_import(_refusal)


# --- torch.fx graphs -------------------------------------------------------------------------

_GRAPH_INTERNALS = ("_graph_namespace", "_insert", "_find_nodes_lookup_table", "_len")
_FAST_APPEND = all(hasattr(fx.Graph(), a) for a in _GRAPH_INTERNALS)


def append_node(
    graph: fx.Graph,
    op: str,
    target: Any,
    args: tuple,
    kwargs: dict,
    name: str | None = None,
    type_expr: Any = None,
    *,
    fast: bool | None = None,
) -> fx.Node:
    """``graph.create_node`` without its scan of every argument for raw symbolic sizes.

    That scan only warns, and symbolic tracing passes no symbolic sizes; on large models it is a
    large part of the tracing time. ``fast=False`` (or a graph without these internals) takes
    ``create_node`` itself: the same node, the same name.
    """
    if not (_FAST_APPEND if fast is None else fast):
        return graph.create_node(op, target, args, kwargs, name, type_expr)
    name = graph._graph_namespace.create_name(name if name is not None else target_to_str(target), None)
    node = fx.Node(graph, name, op, target, args or (), kwargs or immutable_dict(), type_expr)
    graph._graph_namespace.associate_name_with_obj(name, node)
    graph._insert(node)
    graph._find_nodes_lookup_table.insert(node)
    graph._len += 1
    return node


_SNAKE = re.compile(r"(?<=[a-z])([A-Z])")
_NAMES: dict[Any, str] = {}


def _public_target_to_str(target: Any) -> str:
    """The node name fx derives from a target: its ``__name__`` or the string, magic underscores
    dropped, snake-cased (``Graph._target_to_str``'s rule)."""
    op = target.__name__ if callable(target) else str(target)
    if not callable(target) and op.startswith("__") and op.endswith("__"):
        op = op[2:-2]
    return _SNAKE.sub(r"_\1", op).lower()


def _private_target_to_str(target: Any) -> str:
    return fx.Graph._target_to_str(None, target)  # uses no graph state


_TARGET_TO_STR: Callable[[Any], str] = (
    _private_target_to_str if hasattr(fx.Graph, "_target_to_str") else _public_target_to_str
)


def target_to_str(target: Any) -> str:
    """The name fx gives a node of ``target``, remembered (its regular expression runs per node otherwise)."""
    try:
        return _NAMES[target]
    except (KeyError, TypeError):  # TypeError: an unhashable target
        name = _TARGET_TO_STR(target)
    try:
        if len(_NAMES) < 100_000:
            _NAMES[target] = name
    except TypeError:
        pass
    return name


def _erased_by_membership(node: fx.Node) -> bool:
    return all(n is not node for n in node.graph.nodes)


def is_erased(node: fx.Node) -> bool:
    """Whether ``node`` was erased from its graph (the node's own flag, else a walk of the graph)."""
    erased = getattr(node, "_erased", None)
    return erased if isinstance(erased, bool) else _erased_by_membership(node)


def copy_tracer_info(graph: fx.Graph, gm: fx.GraphModule) -> None:
    """What ``fx.GraphModule(root, graph)`` keeps of the graph's tracer (for pickling); nothing where
    the graph records none."""
    tracer_cls = getattr(graph, "_tracer_cls", None)
    if tracer_cls and "<locals>" not in tracer_cls.__qualname__:
        gm._tracer_cls = tracer_cls
    if hasattr(graph, "_tracer_extras"):
        gm._tracer_extras = graph._tracer_extras or {}


def _special_callables() -> tuple[type, ...]:
    """Callables fx's proxy dispatch treats apart: TorchScript methods and higher-order operators."""
    found = [
        getattr(getattr(torch, "_C", None), "ScriptMethod", None),
        getattr(getattr(torch, "_ops", None), "HigherOrderOperator", None),
    ]
    return tuple(t for t in found if isinstance(t, type))


SPECIAL_CALLABLES = _special_callables()


def is_plain_function(fn: Any) -> bool:
    """Whether a traced call of ``fn`` may be recorded as a plain ``call_function`` node."""
    return not isinstance(fn, SPECIAL_CALLABLES)


def node_leaves(value: Any) -> list[Any]:
    """The leaves of a graph output's (nested tuple/list/dict) structure, in order, as torch's
    pytree flattens it (``None`` is a leaf)."""
    leaves: list[Any] = []
    map_aggregate(value, leaves.append)
    return leaves


# --- tensors and modules ---------------------------------------------------------------------


def fused_norms(
    tensors: Sequence[torch.Tensor], ord: float, *, fused: bool | None = None
) -> list[torch.Tensor]:
    """The ``ord``-norm of each tensor (one fused kernel where torch has it; ``fused=False``: one
    ``torch.linalg.vector_norm`` per tensor, the same values)."""
    if (hasattr(torch, "_foreach_norm") if fused is None else fused) and tensors:
        return list(torch._foreach_norm(list(tensors), ord))
    return [torch.linalg.vector_norm(t, ord) for t in tensors]


def set_conv_padding(conv: nn.Module, padding: tuple[int, ...]) -> None:
    """Set a conv's numeric ``padding`` and the padding its non-zero padding modes derive from it
    (kept as a field by torch's conv constructor, where it does)."""
    conv.padding = tuple(padding)
    if hasattr(conv, "_reversed_padding_repeated_twice"):
        conv._reversed_padding_repeated_twice = tuple(p for p in reversed(conv.padding) for _ in range(2))


def size_guards(exported: nn.Module) -> Callable[..., Any] | None:
    """The input-size checks of a module that ``ExportedProgram.module()`` made, called with its
    inputs; None where this torch keeps none there (a capture then has to hold every size)."""
    guards = getattr(exported, "_guards_fn", None)
    return guards if callable(guards) else None


def avg_pool2d_bindings() -> list[Any]:
    """The modules ``avg_pool2d`` is bound in for traced code: ``torch.nn.functional`` and, where
    that is the builtin itself, the module a traced graph calls it from."""
    import torch.nn.functional as F

    builtins = getattr(getattr(torch, "_C", None), "_nn", None)
    same = builtins is not None and getattr(builtins, "avg_pool2d", None) is F.avg_pool2d
    return [F, builtins] if same else [F]


# --- torch.export ----------------------------------------------------------------------------


@contextlib.contextmanager
def export_graphs_unprinted() -> Iterator[None]:
    """Keep torch.export from printing a failed capture's partial graph (often a hundred lines).

    torch prints it to stderr before raising; the caller reports the failure in one line, and a
    capture tried again in another form may succeed. Warnings raised meanwhile are shown after.
    """
    with warnings.catch_warnings(record=True) as caught:
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                yield
        finally:
            shown = list(caught)
    for w in shown:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


@contextlib.contextmanager
def fake_tensor_cache_off() -> Iterator[None]:
    """Run a torch.export capture without dynamo's fake-tensor dispatch cache.

    The cache memoizes each operator's result on fake tensors by its input metadata; with free
    height and width almost every key is new (each symbolic size is another key) and building the
    keys costs more than it saves (ACB-ResNet-50's deploy capture: 0.74× the time on torch 2.13,
    ``benchmarks/free_axes_capture.py``). The program captured is the same either way (the cache
    only remembers results). Where torch lacks the setting, nothing is changed.
    """
    try:
        from torch._dynamo import config
    except ImportError:
        yield
        return
    if not isinstance(getattr(config, "fake_tensor_cache_enabled", None), bool):
        yield
        return
    with config.patch(fake_tensor_cache_enabled=False):
        yield


_SERDE_LOCK = threading.RLock()


def _serde_internals() -> Any | None:
    """torch's ``.pt2`` (de)serializer module where it has the internals memoized below, else None."""
    try:
        from torch._export.serde import serialize
    except ImportError:
        return None
    deserializer = getattr(serialize, "GraphModuleDeserializer", None)
    if (
        callable(getattr(serialize, "_print_sympy", None))
        and callable(getattr(deserializer, "_parse_sym_expr", None))
        and getattr(serialize, "typing", None) is typing
    ):
        return serialize
    return None


def _memoized_typing() -> types.SimpleNamespace:
    """The ``typing`` module, except that ``get_type_hints`` of a class is computed once."""
    hints: dict[tuple, dict[str, Any]] = {}

    def get_type_hints(
        obj: Any, globalns: Any = None, localns: Any = None, include_extras: bool = False
    ) -> Any:
        if localns is not None:
            return typing.get_type_hints(obj, globalns, localns, include_extras)
        key = (obj, id(globalns), include_extras)
        if key not in hints:
            hints[key] = typing.get_type_hints(obj, globalns, None, include_extras)
        return dict(hints[key])

    names = {name: getattr(typing, name) for name in dir(typing) if not name.startswith("__")}
    return types.SimpleNamespace(**(names | {"get_type_hints": get_type_hints}))


@contextlib.contextmanager
def program_serde_memoized() -> Iterator[None]:
    """``torch.export.save`` / ``load`` with their repeated work done once per distinct value.

    The serializer prints every symbolic size with sympy, the deserializer parses each printed size
    again and reads each dataclass's type hints anew for every object it builds: a deploy program
    with free height and width repeats a few dozen size expressions in hundreds of places. Each
    string, expression and class gives the same result every time, so each is computed once here
    (the program written and loaded is the same; ``tests/test_torch_compat.py``). Where torch lacks
    these internals, nothing is changed.
    """
    # one thread at a time; a nested use finds the outer one's functions in place (None here) and
    # leaves them: what is put back on exit is always torch's own
    with _SERDE_LOCK:
        serialize = _serde_internals()
        if serialize is None:
            yield
            return
        with _memoized_serde(serialize):
            yield


@contextlib.contextmanager
def _memoized_serde(serialize: Any) -> Iterator[None]:
    deserializer = serialize.GraphModuleDeserializer
    print_sympy, parse_sym_expr = serialize._print_sympy, deserializer._parse_sym_expr
    printed: dict[Any, str] = {}
    parsed: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def print_once(s: Any) -> str:
        expr = s.node.expr if isinstance(s, torch.SymInt | torch.SymBool | torch.SymFloat) else s
        if expr not in printed:
            printed[expr] = print_sympy(s)
        return printed[expr]

    def parse_once(self: Any, expr_str: Any, hint: Any = None) -> Any:
        if not isinstance(expr_str, str):  # a sub-expression, already parsed
            return parse_sym_expr(self, expr_str, hint)
        mine = parsed.setdefault(self, {})
        if (expr_str, hint) not in mine:
            mine[expr_str, hint] = parse_sym_expr(self, expr_str, hint)
        return mine[expr_str, hint]

    serialize._print_sympy, deserializer._parse_sym_expr = print_once, parse_once
    serialize.typing = _memoized_typing()
    try:
        yield
    finally:
        serialize._print_sympy, deserializer._parse_sym_expr = print_sympy, parse_sym_expr
        serialize.typing = typing
