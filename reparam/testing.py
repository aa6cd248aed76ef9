"""Assertions for users' test suites: "the model I ship computes what I trained".

Example (pytest)::

    from reparam.testing import assert_equivalent

    def test_deploy_model_matches_training_model(trained, tmp_path):
        deploy = reparam.reparameterize(trained, torch.randn(1, 3, 224, 224))
        assert_equivalent(trained, deploy, torch.randn(4, 3, 224, 224))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from reparam.equivalence.tolerance import Tolerance
from reparam.verify.core import verify
from reparam.verify.report import VerifyReport

__all__ = ["assert_equivalent"]


def _to_numpy(x: Any) -> np.ndarray:
    try:
        if isinstance(x, torch.Tensor):
            return x.detach().cpu().numpy()
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    return np.asarray(x)


def _batches(inputs: Any) -> list[dict[str, np.ndarray]]:
    """Accept one tensor/array, a dict of named inputs, or a list of either (one entry per batch)."""
    if isinstance(inputs, Mapping):
        return [{str(k): _to_numpy(v) for k, v in inputs.items()}]
    if (
        isinstance(inputs, Sequence)
        and not isinstance(inputs, str | bytes)
        and not isinstance(inputs, np.ndarray)
    ):
        out: list[dict[str, np.ndarray]] = []
        for item in inputs:
            out.extend(_batches(item))
        return out
    return [{"input": _to_numpy(inputs)}]


def assert_equivalent(
    reference: Any,
    candidate: Any,
    inputs: Any,
    *,
    tolerance: str | Tolerance = "fp32",
    atol: float | dict[str, float] | None = None,
    rtol: float | dict[str, float] | None = None,
) -> VerifyReport:
    """Raise AssertionError unless ``candidate`` matches ``reference`` on ``inputs`` within tolerance.

    ``reference``/``candidate``: nn.Modules (run in eval mode), ``.pt2`` / ``.onnx`` / TensorRT
    engine paths, or reparam Runners. ``inputs``: a tensor/array (the input named "input"), a dict
    of named inputs, or a list of those, one per batch. The error message holds the metrics table
    and, when the candidate carries a rewrite record (or an ONNX file its block metadata), the
    first diverging block. Returns the report when the check passes.
    """
    report = verify(
        reference,
        [candidate],
        _batches(inputs),
        tolerance=tolerance,
        atol=atol,
        rtol=rtol,
        localize="on_failure",
        quant=False,
    )
    if not report.passed:
        raise AssertionError("candidate is not equivalent to the reference\n" + report.render_text())
    return report
