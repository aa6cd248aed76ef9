"""Verify that a deploy artifact computes what the training model computes.

Compares dicts of named numpy outputs (see ``compare_outputs``), judges them against tolerance
profiles (``fp32``, ``fp16``, ``int8``), localizes the first diverging block through the engine's
rewrite record, estimates int8 quantization risk of fused layers and writes reports.
"""

from reparam.verify.compare import BlockError, CandidateResult, Divergence, OutputResult, compare_outputs
from reparam.verify.core import Candidate, make_candidate, verify
from reparam.verify.inputs import default_input_shape, load_npz_batches, random_batches
from reparam.verify.localize import locate_divergence, read_onnx_boundaries, write_onnx_boundaries
from reparam.verify.metrics import OutputMetrics, compute_metrics
from reparam.verify.quant import LayerRisk, quantization_risk
from reparam.verify.report import VerifyReport
from reparam.verify.tolerance import PROFILES, Tolerance, ToleranceProfile, get_profile, judge, make_tolerance

__all__ = [
    "PROFILES",
    "BlockError",
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
    "default_input_shape",
    "get_profile",
    "judge",
    "load_npz_batches",
    "locate_divergence",
    "make_candidate",
    "make_tolerance",
    "quantization_risk",
    "random_batches",
    "read_onnx_boundaries",
    "verify",
    "write_onnx_boundaries",
]
