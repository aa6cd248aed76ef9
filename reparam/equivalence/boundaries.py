"""Block boundaries: where each original block's output lives in a deploy model, .pt2 program or ONNX file.

The engine creates them (one owner); exporters and the verifier receive them as arguments. A fused
graph has fewer values than the unfused one, so blocks are paired by path, never by tensor names
or positions:

- ``GRAPH_NODE``: block path -> name of the fx node of the deploy GraphModule holding its output.
  A ``.pt2`` program re-traces the graph and renames nodes; :meth:`Boundaries.in_graph` follows
  each node's provenance (``meta["from_node"]``) to the new names.
- ``MODULE``: block path -> module path of the deploy model whose output equals it (models
  converted submodule by submodule).
- ``ONNX_TENSOR``: block path -> tensor name in an ONNX graph, stored in the file's metadata under
  ``reparam.boundaries``.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import fx

ONNX_METADATA_KEY = "reparam.boundaries"


class BoundaryKind(str, enum.Enum):
    """What a boundary's target names."""

    GRAPH_NODE = "fx_node"
    MODULE = "module"
    ONNX_TENSOR = "onnx_tensor"


@dataclass(frozen=True)
class Boundaries(Mapping[str, str]):
    """``{block path: target}`` of one kind (see the module docstring); a read-only mapping."""

    kind: BoundaryKind = BoundaryKind.GRAPH_NODE
    targets: Mapping[str, str] = field(default_factory=dict)

    def __getitem__(self, path: str) -> str:
        return self.targets[path]

    def __iter__(self) -> Iterator[str]:
        return iter(self.targets)

    def __len__(self) -> int:
        return len(self.targets)

    def to_dict(self) -> dict[str, Any]:
        """The record's JSON form: ``{"boundaries": {...}, "boundary_kind": kind}``."""
        return {"boundaries": dict(self.targets), "boundary_kind": self.kind.value}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Boundaries:
        kind = BoundaryKind(str(data.get("boundary_kind", BoundaryKind.GRAPH_NODE.value)))
        targets = {str(k): str(v) for k, v in (data.get("boundaries") or {}).items()}
        return cls(kind, targets)

    def in_graph(self, gm: fx.GraphModule) -> Boundaries:
        """These graph-node boundaries resolved in ``gm``: by name, else through node provenance.

        ``gm`` is the deploy graph itself or a re-traced copy of it (a loaded ``.pt2``). Returns the
        boundaries with the most blocks found; blocks found in neither way are dropped.
        """
        if self.kind is not BoundaryKind.GRAPH_NODE:
            return Boundaries(self.kind, {})
        names = {n.name for n in gm.graph.nodes}
        direct = {p: n for p, n in self.targets.items() if n in names}
        if len(direct) == len(self.targets):
            return Boundaries(self.kind, direct)
        traced = _provenance_map(gm, self.targets)
        return Boundaries(self.kind, traced if len(traced) > len(direct) else direct)

    def onnx_metadata(self) -> dict[str, str]:
        """The ONNX ``metadata_props`` entry that stores these (ONNX tensor) boundaries."""
        return {ONNX_METADATA_KEY: json.dumps(dict(self.targets), sort_keys=True)}

    def write_onnx(self, model_proto: Any) -> None:
        """Store these (ONNX tensor) boundaries in the model's metadata, replacing earlier ones."""
        props = [p for p in model_proto.metadata_props if p.key != ONNX_METADATA_KEY]
        del model_proto.metadata_props[:]
        model_proto.metadata_props.extend(props)
        for key, value in self.onnx_metadata().items():
            entry = model_proto.metadata_props.add()
            entry.key, entry.value = key, value

    @classmethod
    def read_onnx(cls, model_proto: Any) -> Boundaries:
        """The boundaries stored in an ONNX model's metadata (empty when absent or unreadable)."""
        for prop in model_proto.metadata_props:
            if prop.key == ONNX_METADATA_KEY:
                try:
                    data = json.loads(prop.value)
                except json.JSONDecodeError:
                    break
                if isinstance(data, dict):
                    return cls(BoundaryKind.ONNX_TENSOR, {str(k): str(v) for k, v in data.items()})
                break
        return cls(BoundaryKind.ONNX_TENSOR, {})


def graph_boundaries(gm: fx.GraphModule, paths: set[str]) -> Boundaries:
    """Block path -> the single node traced inside that block whose value leaves the block.

    Passes give every replacement node the metadata of the node whose value it takes over, so the
    module stack of a node keeps naming the blocks whose output it is. A block whose value leaves
    through several nodes (several outputs) has no graph boundary.
    """
    members: dict[str, set[fx.Node]] = {}
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        for path in node.meta.get("nn_module_stack") or {}:
            if path in paths:
                members.setdefault(path, set()).add(node)
    out = {}
    for path, nodes in members.items():
        leaving = [n for n in nodes if any(u not in nodes for u in n.users)]
        if len(leaving) == 1:
            out[path] = leaving[0].name
    return Boundaries(BoundaryKind.GRAPH_NODE, out)


def _provenance_levels(node: fx.Node, max_depth: int = 4) -> list[set[str]]:
    """Source-node names by depth: [direct sources, their sources, ...]."""
    levels: list[set[str]] = []
    current = list(node.meta.get("from_node") or [])
    while current and len(levels) < max_depth:
        levels.append({src.name for src in current if getattr(src, "name", None)})
        current = [p for src in current for p in (getattr(src, "from_node", None) or [])]
    return levels


def _provenance_map(gm: fx.GraphModule, targets: Mapping[str, str]) -> dict[str, str]:
    """Boundary node names mapped to nodes of a re-traced (``torch.export``) graph via provenance.

    ``meta["from_node"]`` nests one level per tracing pass, and deeper levels name nodes of older
    graphs (whose names may collide with the deploy graph's), so each depth is tried on its own and
    the one matching the most boundaries wins (shallowest on ties). When an fx node was decomposed
    into several exported nodes, the last one in graph order holds its value.
    """
    wanted: dict[str, list[str]] = {}
    for path, node in targets.items():
        wanted.setdefault(node, []).append(path)
    by_depth: list[dict[str, str]] = []
    for n in gm.graph.nodes:
        if n.op not in ("call_function", "call_module", "call_method"):
            continue
        for depth, names in enumerate(_provenance_levels(n)):
            while len(by_depth) <= depth:
                by_depth.append({})
            for src in names & wanted.keys():
                for path in wanted[src]:
                    by_depth[depth][path] = n.name
    return max(by_depth, key=len, default={})
