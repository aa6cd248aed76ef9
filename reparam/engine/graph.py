"""Small helpers over torch.fx graphs shared by the passes."""

from __future__ import annotations

import copy
import keyword
import operator
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import fx, nn

from reparam.engine.graphmodule import defer_recompile, referring_nodes
from reparam.torch_compat import is_erased, set_conv_padding

CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
BN = nn.modules.batchnorm._BatchNorm
CONV_BY_DIM = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def fetch(root: nn.Module, target: str) -> Any:
    """The attribute at the dotted path ``target`` below ``root`` (AttributeError if there is none).

    ``getattr`` level by level: ``Module.get_submodule`` asks ``hasattr`` first at each level,
    which doubles the cost of a lookup that the passes make for every node.
    """
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def attribute_lookup(root: nn.Module) -> Callable[[str], Any]:
    """:func:`fetch` below ``root`` that remembers every path on the way, for a stretch of work
    during which no attribute on those paths is replaced (targets share most of their prefixes)."""
    known: dict[str, Any] = {"": root}

    def lookup(path: str) -> Any:
        if path not in known:
            owner, _, name = path.rpartition(".")
            known[path] = getattr(lookup(owner), name)
        return known[path]

    return lookup


def module_of(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    """The module a ``call_module`` node calls (None for other nodes)."""
    if node.op != "call_module":
        return None
    try:
        module = fetch(gm, node.target)
    except AttributeError:
        return None
    return module if isinstance(module, nn.Module) else None


def module_chains(
    gm: fx.GraphModule,
    outer: tuple[type, ...],
    inner: tuple[type, ...],
    gone: set[fx.Node],
    *,
    inner_single_input: bool = False,
) -> Iterator[tuple[fx.Node, nn.Module, fx.Node, nn.Module]]:
    """Each ``outer(inner(...))`` of two ``call_module`` nodes: ``(node, its module, producer, its module)``.

    The outer call takes exactly the producer's value (one positional argument, no keyword); with
    ``inner_single_input`` so does the producer, from one node. Nodes in ``gone`` (replaced earlier
    in the same sweep; the set may grow while iterating) are skipped.
    """
    for node in list(gm.graph.nodes):
        if node in gone or node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        outer_module = module_of(gm, node)
        first = node.args[0]
        if not isinstance(outer_module, outer) or not isinstance(first, fx.Node) or first in gone:
            continue
        inner_module = module_of(gm, first)
        if not isinstance(inner_module, inner):
            continue
        if inner_single_input and (
            len(first.args) != 1 or first.kwargs or not isinstance(first.args[0], fx.Node)
        ):
            continue
        yield node, outer_module, first, inner_module


def shallow_copy(module: nn.Module) -> nn.Module:
    """The module with its own tables (parameters, buffers, submodules, hooks), its tensors shared until replaced.

    Nothing assigned to or registered on the copy shows on the original, and no weight is copied.
    """
    new = copy.copy(module)
    for key, value in vars(module).items():
        if isinstance(value, (dict, set, list)):
            new.__dict__[key] = value.copy()
    return new


_BLANK_CONVS: dict[type, nn.Module] = {}


def blank_conv(
    kind: type,
    in_channels: int,
    out_channels: int,
    kernel: tuple[int, ...],
    *,
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int,
) -> nn.Module:
    """A zero-padded ``kind`` (Conv1d/2d/3d) of this geometry whose weight and bias the caller sets.

    What ``kind(..., device="meta")`` builds, as a copy of one such conv made once per class:
    the constructor's initialisation of weights about to be replaced costs more than a merge.
    """
    if kind not in _BLANK_CONVS:
        _BLANK_CONVS[kind] = kind(1, 1, 1, bias=True, device="meta")
    conv = shallow_copy(_BLANK_CONVS[kind])
    conv.in_channels, conv.out_channels, conv.groups = in_channels, out_channels, groups
    conv.kernel_size, conv.stride = tuple(kernel), tuple(stride)
    conv.dilation = tuple(dilation)
    conv.output_padding = (0,) * len(kernel)
    set_conv_padding(conv, padding)
    return conv


def shape_of(node: object) -> tuple[int, ...] | None:
    """Static shape recorded by shape propagation, when the node produced a single tensor."""
    if not isinstance(node, fx.Node):
        return None
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(shape) if shape is not None else None


def block_path(node: fx.Node) -> str:
    """Innermost non-leaf module path the node was traced in ("" at the top level)."""
    stack = node.meta.get("nn_module_stack") or {}
    paths = list(stack)
    if node.op == "call_module" and paths and paths[-1] == node.target:
        paths = paths[:-1]
    return paths[-1] if paths else ""


def common_parent(paths: Iterable[str]) -> str:
    """Longest common dotted prefix of module paths ("" when they share none)."""
    split = [p.split(".") for p in paths if p]
    if not split:
        return ""
    prefix = split[0]
    for parts in split[1:]:
        n = 0
        while n < min(len(prefix), len(parts)) and prefix[n] == parts[n]:
            n += 1
        prefix = prefix[:n]
    return ".".join(prefix)


def _ancestors(path: str) -> Iterator[str]:
    """The proper dotted prefixes of ``path`` ("a", "a.b" for "a.b.c")."""
    end = path.find(".")
    while end != -1:
        yield path[:end]
        end = path.find(".", end + 1)


class ModuleNames:
    """The module paths the nodes of a graph name, counted, with the paths that lie above them.

    A pass that installs many modules keeps one per run and updates it through :func:`install`
    (or :meth:`add` / :meth:`remove`), instead of collecting every node's target again for each
    new name; a pass that changes the graph in other ways builds a new one. The graph is read on
    the first question, so an index that is never asked costs nothing.
    """

    def __init__(self, gm: fx.GraphModule):
        self._gm: fx.GraphModule | None = gm
        self._targets: dict[str, int] = {}
        self._above: dict[str, int] = {}  # path -> how many targets lie strictly below it

    def _read(self) -> None:
        if self._gm is not None:
            gm, self._gm = self._gm, None
            for node in referring_nodes(gm):
                self.add(str(node.target))

    def add(self, target: str, times: int = 1) -> None:
        if self._gm is not None:
            return  # not read yet: reading the graph will see it
        self._targets[target] = self._targets.get(target, 0) + times
        for parent in _ancestors(target):
            self._above[parent] = self._above.get(parent, 0) + times

    def remove(self, target: str) -> None:
        self.add(target, -1)

    def count(self, target: str) -> int:
        """How many nodes name ``target``."""
        self._read()
        return self._targets.get(target, 0)

    def free(self, path: str, leaving: Iterable[fx.Node] = ()) -> bool:
        """Whether ``path`` can take a new module once the nodes in ``leaving`` are gone."""
        self._read()
        if not path:
            return False
        gone: dict[str, int] = {}
        for node in leaving:
            if node.op in ("call_module", "get_attr"):
                gone[str(node.target)] = gone.get(str(node.target), 0) + 1
        below = path + "."
        gone_below = sum(n for t, n in gone.items() if t.startswith(below))
        return (
            self._targets.get(path, 0) - gone.get(path, 0) <= 0
            and self._above.get(path, 0) - gone_below <= 0
            and not any(self._targets.get(p, 0) - gone.get(p, 0) > 0 for p in _ancestors(path))
        )


def choose_name(
    gm: fx.GraphModule, candidates: Sequence[str], leaving: set[fx.Node], names: ModuleNames | None = None
) -> str:
    """First free candidate; otherwise the last candidate with a numeric suffix.

    ``names``: the graph's current :class:`ModuleNames`, when the caller keeps one.
    """
    taken = names if names is not None else ModuleNames(gm)
    for c in candidates:
        if c and all(_safe(p) for p in c.split(".")) and taken.free(c, leaving):
            return c
    base = candidates[-1] if candidates and candidates[-1] else "fused"
    if not all(_safe(p) for p in base.split(".")):
        base = "fused"
    i = 1
    while not taken.free(f"{base}_{i}", leaving):
        i += 1
    return f"{base}_{i}"


def _erase_unused(gm: fx.GraphModule, pending: set[fx.Node]) -> set[fx.Node]:
    """Erase the nodes of ``pending`` until every one left is used; returns the erased ones.

    Users go before the values they read, as erasing in reverse graph order would, without
    numbering the whole graph for a handful of nodes.
    """
    pending = {n for n in pending if n.graph is gm.graph and not is_erased(n)}
    erased: set[fx.Node] = set()
    while True:
        unused = [n for n in pending if not n.users]
        if not unused:
            return erased
        for node in unused:
            gm.graph.erase_node(node)
            erased.add(node)
            pending.discard(node)


def replace_with(gm: fx.GraphModule, root: fx.Node, new: fx.Node, leaving: Iterable[fx.Node]) -> set[fx.Node]:
    """Route ``root``'s users to ``new``, erase the nodes of ``leaving`` that became unused; returns those."""
    new.meta = {k: v for k, v in root.meta.items()}
    root.replace_all_uses_with(new)
    return _erase_unused(gm, (set(leaving) | {root}) - {new})


def install(
    gm: fx.GraphModule,
    name: str,
    module: nn.Module,
    root: fx.Node,
    args: tuple,
    leaving: Iterable[fx.Node],
    names: ModuleNames | None = None,
) -> fx.Node:
    """Put ``module`` at ``name``, make ``root`` call it on ``args``, and drop the rest of ``leaving``.

    ``root`` (a ``call_module`` node) becomes the new call in place: its users, position and
    metadata stay. ``names`` is updated when given.
    """
    if not gm.add_submodule(name, module):
        raise RuntimeError(f"cannot add a module at {name!r}")
    if names is not None:
        names.remove(str(root.target))
        names.add(name)
    root.op, root.target, root.args, root.kwargs = "call_module", name, tuple(args), {}
    erased = _erase_unused(gm, set(leaving) - {root})
    if names is not None:
        for node in erased:
            if node.op in ("call_module", "get_attr"):
                names.remove(str(node.target))
    return root


ADD_FUNCTIONS = {operator.add, torch.add, operator.iadd, torch.ops.aten.add.Tensor}


def is_add(node: fx.Node) -> bool:
    """A plain two-operand addition (``+``, ``torch.add``/``Tensor.add`` without ``alpha``)."""
    if len(node.args) != 2 or node.kwargs.get("alpha", 1) != 1 or set(node.kwargs) - {"alpha"}:
        return False
    if node.op == "call_function" and node.target in ADD_FUNCTIONS:
        return True
    return node.op == "call_method" and node.target in ("add", "__add__")


ALIASES = "reparam_aliases"


def _safe(part: str) -> bool:
    # fx writes names that are not identifiers (Sequential's "0") as getattr calls; it writes a
    # keyword (``self.heads.class``) and a name Python changes by NFKC as attribute syntax
    return unicodedata.normalize("NFKC", part) == part and not keyword.iskeyword(part)


def alias_unsafe_names(gm: fx.GraphModule) -> dict[str, str]:
    """Re-register modules/attributes whose path fx cannot write as code (``µ`` → ``μ``, ``class``) under safe names.

    fx generates ``self.<path>`` code for every identifier: Python applies NFKC to identifiers, so
    a module named ``µ_k`` would be looked up as ``μ_k`` and not found, and ``self.heads.class`` is
    a syntax error. Returns (and keeps on the graph module) a map
    alias -> original path, so reports keep naming the original module.
    """
    aliases: dict[str, str] = {}
    for node in gm.graph.nodes:
        if node.op not in ("call_module", "get_attr") or all(_safe(p) for p in str(node.target).split(".")):
            continue
        original = str(node.target)
        alias = "alias_" + re.sub(
            r"[^0-9A-Za-z_]", lambda m: f"_u{ord(m.group()):x}_", original.replace(".", "__")
        )
        if alias not in aliases:
            value = gm.get_submodule(original) if node.op == "call_module" else fetch(gm, original)
            if isinstance(value, nn.Module):
                gm.add_submodule(alias, value)
            elif isinstance(value, nn.Parameter):
                gm.register_parameter(alias, value)
            else:
                gm.register_buffer(alias, value)
            aliases[alias] = original
        node.target = alias
    for original in aliases.values():
        # the object now lives under its alias only: two names would hide one from unused-module cleanup
        owner, _, name = original.rpartition(".")
        parent = gm.get_submodule(owner) if owner else gm
        if hasattr(parent, name):
            delattr(parent, name)
    if aliases:
        defer_recompile(gm)
    setattr(gm, ALIASES, aliases)
    return aliases
