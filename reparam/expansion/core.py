"""``expand``: turn a plain CNN into its multi-branch training form (ACNet's "architecture-neutral" step)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from reparam.branching.expand import (  # noqa: F401  (also reparam.expansion.core's names)
    INITS,
    ExpandedLayer,
    ExpandReport,
    count_params,
    expand_structure,
)
from reparam.branching.structure import conv_layout
from reparam.engine import convert
from reparam.engine.inputs import make_inputs
from reparam.equivalence import fp32_noise, judge_model_outputs
from reparam.errors import InternalError, MismatchError, ReparamError
from reparam.tensors import eval_mode, module_dtype


class Expansion(NamedTuple):
    """The expanded model and the report (unpacks as ``model, report``)."""

    model: nn.Module
    report: ExpandReport


@torch.no_grad()
def eval_outputs(model: nn.Module, inputs: tuple) -> Any:
    """``model(*inputs)`` in eval mode, leaving each submodule's train/eval mode as it was."""
    with eval_mode(model):
        return model(*inputs)


def judge_against(model: nn.Module, inputs: tuple, reference: Any, candidate: Any) -> tuple[bool, float]:
    """``candidate`` judged against ``model``'s output ``reference`` by the rule of the model's dtype.

    Returns whether it passes and its scale-relative error (inf for NaN/Inf or another shape). The
    reference's fp32 noise is measured only when the fixed limit is exceeded.
    """
    dtype, _ = module_dtype(model)
    verdict = judge_model_outputs(reference, candidate, dtype, lambda: fp32_noise(model, inputs, reference))
    return verdict.passed, verdict.scale_rel


def _check_preserved(plain: nn.Module, expanded: nn.Module, inputs: tuple, report: ExpandReport) -> None:
    reference = eval_outputs(plain, inputs)
    passed, rel = judge_against(plain, inputs, reference, eval_outputs(expanded, inputs))
    report.preserve_error = rel
    if not passed:
        raise MismatchError(
            f"the expanded model does not compute what the plain model computes (scale-relative error {rel:.3g})",
            hint="report the model: expansion with init='preserve' should be exact",
        )


def _check_roundtrip(plain: nn.Module, expanded: nn.Module, inputs: tuple, report: ExpandReport) -> None:
    with eval_mode(plain, expanded):
        fused = convert(expanded, inputs)  # raises MismatchError when the fusion is not exact
        plain_deploy = convert(plain, inputs, check=False).model
    report.roundtrip_error = fused.report.check.relative_error if fused.report.check else None
    report.roundtrip_layout = conv_layout(fused.model) == conv_layout(plain_deploy)
    if not report.roundtrip_layout:
        raise InternalError("the fused expanded model does not have the plain model's conv layout")


def expand(
    model: nn.Module,
    scheme: str = "acb",
    *,
    init: str = "preserve",
    example_inputs: Any = None,
    input_shape: Sequence[int] | None = None,
    check: bool = True,
    inplace: bool = False,
) -> Expansion:
    """Replace every conv (+ BN) the scheme fits, found by dataflow, with its training-time block.

    ``scheme``: ``acb`` | ``repvgg`` | ``dbb`` (see ``reparam.expansion.SCHEMES``). ``init="preserve"``
    keeps the original conv and BN and starts each new branch at zero contribution (BN gamma = 0),
    so the expanded model computes what the plain one does; ``"fresh"`` gives new branches
    PyTorch's default initialisation (gamma = 1), for training from scratch. With ``check``, the
    expanded model is run on ``example_inputs`` (or random inputs of ``input_shape``): under
    ``preserve`` it must match the plain model, and its fusion must have the plain conv layout.
    """
    work = model if inplace else copy.deepcopy(model)
    report = expand_structure(work, scheme, init)
    if check:
        inputs, _ = make_inputs(model, example_inputs, input_shape)
        if inputs is None:
            raise ReparamError(
                "cannot check the expansion: no example inputs and no input shape could be inferred",
                hint="pass example_inputs or input_shape (`input_shape`), or check=False",
            )
        if init == "preserve":
            _check_preserved(model, work, inputs, report)
        _check_roundtrip(model, work, inputs, report)
    return Expansion(work, report)
