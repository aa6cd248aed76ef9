"""What the engine checks and settles about the model it is given, before and after converting it.

Before: no parameter or BatchNorm statistic is NaN/Inf, and BatchNorms in training mode are named
(they are converted in eval mode). After: the deploy model owns every module and tensor it holds,
even where the conversion handed one of the original's on unchanged.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import nn

from reparam.engine.graph import BN
from reparam.engine.report import ConversionReport
from reparam.errors import ReparamError
from reparam.torch_compat import fused_norms


@torch.no_grad()
def _all_finite(tensors: list[torch.Tensor]) -> bool:
    """True only if no tensor holds NaN or Inf (False may also mean a 2-norm overflowed).

    A NaN or Inf element makes the tensor's 2-norm non-finite, and fused 2-norms are several
    times cheaper on CPU than max-norms; one check per dtype instead of one per tensor.
    """
    by_dtype: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault((t.dtype, t.device), []).append(t)
    return all(bool(torch.stack(fused_norms(ts, 2)).isfinite().all()) for ts in by_dtype.values())


def _weights_and_statistics(model: nn.Module, *, named: bool = False) -> dict[Any, torch.Tensor]:
    """Floating-point parameters and BatchNorm running statistics, by name (``named``) or by identity.

    Names cost a walk with path strings; the common case (all finite) needs none.
    """
    modules = model.named_modules() if named else ((None, m) for m in model.modules())
    found: dict[Any, torch.Tensor] = {}
    for name, m in modules:
        own = list(m._parameters.items())
        if isinstance(m, BN):
            own += [(stat, getattr(m, stat, None)) for stat in ("running_mean", "running_var")]
        for attr, t in own:
            if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel():
                found[f"{name}.{attr}" if name else attr if named else id(t)] = t
    return found


def refuse_nonfinite_weights(model: nn.Module) -> None:
    """Raise a ReparamError naming the parameters and BatchNorm statistics that hold NaN or Inf."""
    if _all_finite(list(_weights_and_statistics(model).values())):
        return
    tensors = _weights_and_statistics(model, named=True)
    with torch.no_grad():
        # one fused reduction over every tensor: NaN and Inf both make the max-norm non-finite
        peaks = fused_norms(list(tensors.values()), float("inf"))
    bad = [
        f"{name} ({int((~torch.isfinite(t)).sum())} of {t.numel()})"
        for (name, t), peak in zip(tensors.items(), peaks)
        if not bool(torch.isfinite(peak))
    ]
    if bad:
        raise ReparamError(
            f"the model holds NaN/Inf values in {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''} "
            f"({len(bad)} tensors in all)",
            hint="the checkpoint is damaged or training diverged; nothing computed from it would be meaningful",
        )


def warn_training_batchnorms(
    model: nn.Module, report: ConversionReport, modules: list[tuple[str, nn.Module]] | None = None
) -> None:
    """Warn (Python warning and report) that BatchNorms in training mode are converted in eval mode.

    ``modules``: ``model.named_modules()`` when the caller has them already.
    """
    named = model.named_modules() if modules is None else modules
    names = [n or type(model).__name__ for n, m in named if isinstance(m, BN) and m.training]
    if not names:
        return
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    message = (
        f"{len(names)} BatchNorm layer(s) are in training mode ({shown}): the conversion uses their running "
        "statistics (eval mode), not the statistics of each batch; call model.eval() first if that is intended"
    )
    report.warnings.append(message)
    warnings.warn(message, stacklevel=3)


def own_copy(deploy: nn.Module, original: nn.Module) -> None:
    """Give ``deploy`` its own copy of every module and tensor it still shares with ``original``.

    Modules of the original are deep-copied where they sit; tensors of new modules that share
    memory with the original's (a weight handed on unchanged) are cloned. One memo keeps tensors
    that were shared within the original shared within the copy.
    """
    modules: set[int] = set()
    storages: set[int] = set()
    for m in original.modules():
        modules.add(id(m))
        for t in [*m._parameters.values(), *m._buffers.values()]:
            if t is not None and t.numel():
                storages.add(t.untyped_storage().data_ptr())
    memo: dict[int, Any] = {}

    def copy_tensor(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in memo:
            clone = t.detach().clone()
            memo[id(t)] = nn.Parameter(clone, t.requires_grad) if isinstance(t, nn.Parameter) else clone
        return memo[id(t)]

    def walk(module: nn.Module) -> None:
        for name, child in list(module._modules.items()):
            if child is None:
                continue
            if id(child) in modules:
                module._modules[name] = copy.deepcopy(child, memo)
            else:
                walk(child)
        for table in (module._parameters, module._buffers):
            for name, t in table.items():
                if t is not None and t.numel() and t.untyped_storage().data_ptr() in storages:
                    table[name] = copy_tensor(t)

    walk(deploy)
    # walk is in a reference cycle with its own closure: the memo would keep the copies alive
    # until a cyclic collection
    memo.clear()
