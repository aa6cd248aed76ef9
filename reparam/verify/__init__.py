"""Verify that a deploy artifact computes what the training model computes.

Runs a reference and candidates (deploy model, ``.pt2``, ONNX, TensorRT) on the same inputs,
judges their outputs with :mod:`reparam.equivalence` (tolerance profiles ``fp32``, ``fp16``,
``int8``), localizes the first diverging block through the rewrite record's boundaries, estimates
int8 quantization risk of fused layers and writes reports.
"""

from reparam.equivalence import (
    PROFILES,
    BlockError,
    Boundaries,
    CandidateResult,
    Divergence,
    OutputMetrics,
    OutputResult,
    Tolerance,
    ToleranceProfile,
    compare_outputs,
    compute_metrics,
    locate_divergence,
)
from reparam.equivalence.tolerance import get_profile, judge, make_tolerance
from reparam.verify.core import Candidate, compute_reference, make_candidate, verify
from reparam.verify.inputs import default_input_shape, load_npz_batches, random_batches
from reparam.verify.quant import LayerRisk, quantization_risk
from reparam.verify.report import VerifyReport

__all__ = [
    "PROFILES",
    "BlockError",
    "Boundaries",
    "Candidate",
    "CandidateResult",
    "Divergence",
    "LayerRisk",
    "OutputMetrics",
    "OutputResult",
    "Tolerance",
    "ToleranceProfile",
    "VerifyReport",
    "compare_outputs",
    "compute_metrics",
    "compute_reference",
    "default_input_shape",
    "get_profile",
    "judge",
    "load_npz_batches",
    "locate_divergence",
    "make_candidate",
    "make_tolerance",
    "quantization_risk",
    "random_batches",
    "verify",
]
