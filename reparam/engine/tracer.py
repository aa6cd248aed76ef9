"""The torch.fx tracer the engine captures models with: fx's own, with its overheads cut.

Everything it records is what ``torch.fx.Tracer`` records (tests compare the two graphs), except
that an ``nn.Identity`` call without hooks gets no node and tensors made in ``forward`` are kept
aside instead of being set on the traced model. What it does faster:

- the parameter or buffer behind an attribute is found in a table, not by scanning the model;
- a node is appended without the graph's scan of every argument for symbolic sizes (a warning);
- a node keeps only its module stack, not the bookkeeping kept for other tools;
- a torch function called on proxies finds its tracer among the top-level arguments, without
  flattening every argument.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx, nn
from torch.fx.proxy import TracerBase

from reparam.torch_compat import append_node, is_plain_function, target_to_str

_SCALARS = frozenset({int, float, bool, str, type(None)})


def _tracer_of(args: tuple, kwargs: dict) -> TracerBase | None:
    """The one tracer behind the proxies among the top-level arguments; None if there is none, or
    more than one, or an argument is a container (fx's own search then decides)."""
    found = None
    for a in (*args, *kwargs.values()):
        if isinstance(a, fx.Proxy):
            if found is not None and a.tracer is not found:
                return None
            found = a.tracer
        elif isinstance(a, (tuple, list, dict)):
            return None
    return found


class _Proxy(fx.Proxy):
    """fx's Proxy whose torch-function dispatch finds its tracer without flattening the arguments."""

    @classmethod
    def __torch_function__(
        cls, orig_method: Any, types: tuple, args: tuple | None = None, kwargs: dict | None = None
    ) -> Any:
        args = args if args else ()
        kwargs = kwargs if kwargs else {}
        tracer = _tracer_of(args, kwargs)
        if tracer is None or not is_plain_function(orig_method):
            return super().__torch_function__(orig_method, types, args, kwargs)
        if torch.overrides.is_tensor_method_or_property(orig_method):
            return tracer.create_proxy("call_method", orig_method.__name__, args, kwargs)
        name = target_to_str(orig_method.__name__)
        return tracer.create_proxy("call_function", orig_method, args, kwargs, name=name)


class Tracer(fx.Tracer):
    """fx's tracer with a constant-time lookup of the parameter or buffer behind an attribute.

    The stock tracer scans ``named_parameters()`` on every parameter access, which is quadratic in
    the model size for code that reads parameters in ``forward`` (``F.batch_norm(x, self.weight...)``).
    """

    def _name_of(self, t: torch.Tensor) -> str | None:
        if not hasattr(self, "_tensor_names"):
            parameters: dict[int, str] = {}
            buffers: dict[int, str] = {}
            for path, m in self.root.named_modules():  # one walk; a parameter's name wins, as in fx
                prefix = f"{path}." if path else ""
                for table, names in ((m._parameters, parameters), (m._buffers, buffers)):
                    for n, v in table.items():
                        if v is not None:
                            names.setdefault(id(v), prefix + n)
            self._tensor_names = {**buffers, **parameters}
        return self._tensor_names.get(id(t))

    def create_arg(self, a: Any) -> Any:
        """What fx's ``create_arg`` gives, by the shortest route for the common kinds of argument.

        Scalars, proxies, tuples and lists take TracerBase's own path (fx first asks registries of
        opaque and proxyable types that no value of these exact types is in); a tensor is the
        parameter or buffer it is, found in a table.
        """
        kind = type(a)
        if kind in _SCALARS:
            return a
        if isinstance(a, fx.Proxy):
            return a.node
        if kind is tuple:
            return tuple([self.create_arg(e) for e in a])
        if kind is list:
            return [self.create_arg(e) for e in a]
        if kind is dict:
            return TracerBase.create_arg(self, a)
        if isinstance(a, torch.Tensor):
            name = self._name_of(a) or self.tensor_attrs.get(a) or self._constant_name(a)
            return self.create_node("get_attr", name, (), {})
        return super().create_arg(a)

    def _constant_name(self, t: torch.Tensor) -> str:
        """A fresh attribute name for a tensor made in ``forward``, kept aside instead of set on the model.

        fx's tracer stores such constants on the traced module itself, which would change the
        caller's model.
        """
        if not hasattr(self, "constants"):
            self.constants: dict[str, torch.Tensor] = {}
        i = len(self.constants)
        while hasattr(self.root, f"_tensor_constant{i}") or f"_tensor_constant{i}" in self.constants:
            i += 1
        name = f"_tensor_constant{i}"
        self.constants[name] = t
        self.tensor_attrs[t] = name
        return name

    def create_node(
        self,
        kind: str,
        target: Any,
        args: tuple,
        kwargs: dict,
        name: str | None = None,
        type_expr: Any | None = None,
    ) -> fx.Node:
        """The node with its module stack; what else the stock tracer records is for other tools.

        It also fills a per-node scope table (read by quantization tooling), copies metadata of
        an enclosing export trace and stack traces when asked: none of it applies here, and the
        bookkeeping costs a large part of the tracing time on large models.
        """
        node = append_node(self.graph, kind, target, args, kwargs, name, type_expr)
        if self.module_stack:
            node.meta["nn_module_stack"] = self.module_stack.copy()
        return node

    def call_module(self, m: nn.Module, forward: Any, args: tuple, kwargs: dict) -> Any:
        """An ``nn.Identity`` call without hooks is its input: it gets no node (it computes nothing,
        and the passes would only have to route around it)."""
        hooked = m._forward_hooks or m._forward_pre_hooks
        if type(m) is nn.Identity and len(args) == 1 and not kwargs and not hooked:
            return args[0]
        return super().call_module(m, forward, args, kwargs)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _Proxy(node, self)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict) -> Any:
        if not isinstance(attr_val, torch.Tensor):
            return attr_val
        name = self._name_of(attr_val)
        if name is None or not (isinstance(attr_val, nn.Parameter) or self.proxy_buffer_attributes):
            return attr_val
        if name not in parameter_proxy_cache:
            parameter_proxy_cache[name] = self.create_proxy("get_attr", name, (), {})
        return parameter_proxy_cache[name]
