"""TorchRunner: an nn.Module, a torch.export program, or a ``.pt2`` deploy artifact."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from reparam.artifact import load_artifact
from reparam.dynamic_shapes import nearest_taken_shape
from reparam.errors import ReparamError
from reparam.runners.base import Runner, TensorSpec
from reparam.tensors import eval_mode, module_dtype, output_names, tensor_leaves
from reparam.torch_compat import node_leaves


class TorchRunner(Runner):
    """Run a PyTorch model in eval mode without gradients.

    ``model`` is an ``nn.Module``, a ``torch.export.ExportedProgram`` or the path of a ``.pt2``
    artifact (loaded with ``reparam.artifact.load_artifact``, which never unpickles user code).
    Arguments are passed positionally in ``input_names`` order; outputs are flattened and named
    "output" / "output0", "output1", ...
    """

    def __init__(self, model: nn.Module | Any | str | os.PathLike, input_names: Sequence[str] = ("input",)):
        self.path: str | None = None
        if isinstance(model, str | os.PathLike):
            self.path = str(model)
            if Path(model).suffix.lower() != ".pt2":
                raise ReparamError(
                    f"TorchRunner loads .pt2 deploy artifacts, not {Path(model).name}",
                    hint="use runner_for(path) to pick the runner by file type",
                )
            model = load_artifact(model)
        elif isinstance(model, torch.export.ExportedProgram):
            model = model.module()
        if not isinstance(model, nn.Module):
            raise ReparamError(
                f"TorchRunner needs an nn.Module, ExportedProgram or .pt2 path, not {type(model).__name__}",
                hint="pass the model or the path of its artifact",
            )
        self.module = model
        self.input_names = list(input_names)
        self._check_names(self.input_names)
        self.dtype, self.device = module_dtype(model)
        np_dtype = torch.empty(0, dtype=self.dtype).numpy().dtype
        self.input_specs = [TensorSpec(n, None, np_dtype) for n in self.input_names]
        self.output_names = self._known_outputs()

    def _known_outputs(self) -> list[str]:
        # A graph tells its output count without running; a plain module only after the first run.
        graph = getattr(self.module, "graph", None)
        if isinstance(graph, torch.fx.Graph):
            out = next((n for n in graph.nodes if n.op == "output"), None)
            if out is not None:
                leaves = node_leaves(out.args[0])
                if leaves:
                    return output_names(len(leaves))
        return []

    def label(self) -> str:
        return f"TorchRunner({self.path or type(self.module).__name__})"

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = self.validate(inputs)
        args = [torch.from_numpy(np.ascontiguousarray(arrays[n])).to(self.device) for n in self.input_names]
        try:
            with torch.no_grad(), eval_mode(self.module):
                out = tensor_leaves(self.module(*args))
        except AssertionError as exc:
            if not str(exc).startswith("Guard failed"):
                raise
            # the size checks torch.export keeps in a program: the artifact does not take this size
            shapes = ", ".join("x".join(map(str, a.shape)) for a in args)
            nearest = nearest_taken_shape(self.module, args)
            taken = f"; the nearest larger size it takes is {'x'.join(map(str, nearest))}" if nearest else ""
            raise ReparamError(
                f"{self.label()} does not take inputs of shape {shapes} ({exc}){taken}",
                hint="its free axes are bounded by the size checks torch.export kept (for one, a last "
                "feature map that would shrink to 1x1); convert the model again at the size you need",
            ) from exc
        names = output_names(len(out))
        self.output_names = names
        return {n: t.detach().cpu().numpy() for n, t in zip(names, out)}
