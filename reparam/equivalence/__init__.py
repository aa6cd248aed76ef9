"""The one place that decides whether two forms of a model compute the same thing.

- :mod:`~reparam.equivalence.capture`: run a model and read its outputs and block outputs
  (module hooks, fx graph nodes, ONNX tensors);
- :mod:`~reparam.equivalence.metrics`: error metrics, accumulated batch by batch;
- :mod:`~reparam.equivalence.judge`: the one judge of outputs (torch or numpy, streaming), with the
  verdicts of :mod:`~reparam.equivalence.compare`;
- :mod:`~reparam.equivalence.tolerance`: tolerance profiles (the fp32 noise rule);
- :mod:`~reparam.equivalence.noise`: the reference's own fp32 noise against float64;
- :mod:`~reparam.equivalence.localize`: the first diverging block;
- :mod:`~reparam.equivalence.boundaries`: where each block's output lives in a deploy model,
  a ``.pt2`` program or an ONNX file;
- :mod:`~reparam.equivalence.check`: the built-in check of convert/expand.

The engine's check and the verifier both use these.
"""

from reparam.equivalence.boundaries import Boundaries, BoundaryKind, graph_boundaries
from reparam.equivalence.capture import (
    BlockRun,
    BlockValue,
    block_outputs,
    onnx_block_outputs,
    run_with_block_hooks,
)
from reparam.equivalence.check import ErrorVerdict, judge_error, judge_model_outputs
from reparam.equivalence.compare import BlockError, CandidateResult, Divergence, OutputResult
from reparam.equivalence.judge import OutputJudge, compare_outputs, judge_outputs, named_outputs
from reparam.equivalence.localize import block_metrics, locate_divergence
from reparam.equivalence.metrics import (
    ErrorSummary,
    MetricsAccumulator,
    OutputMetrics,
    compute_metrics,
    output_error,
)
from reparam.equivalence.noise import block_noise, float64_copy, fp32_noise, output_noise
from reparam.equivalence.tolerance import (
    PROFILES,
    Tolerance,
    ToleranceProfile,
    make_tolerance,
    profile_for_dtype,
)

__all__ = [
    "PROFILES",
    "BlockError",
    "BlockRun",
    "BlockValue",
    "Boundaries",
    "BoundaryKind",
    "CandidateResult",
    "Divergence",
    "ErrorSummary",
    "ErrorVerdict",
    "OutputMetrics",
    "MetricsAccumulator",
    "OutputJudge",
    "OutputResult",
    "Tolerance",
    "ToleranceProfile",
    "block_metrics",
    "block_noise",
    "block_outputs",
    "compare_outputs",
    "compute_metrics",
    "float64_copy",
    "fp32_noise",
    "graph_boundaries",
    "judge_error",
    "judge_model_outputs",
    "judge_outputs",
    "locate_divergence",
    "make_tolerance",
    "named_outputs",
    "onnx_block_outputs",
    "output_error",
    "output_noise",
    "profile_for_dtype",
    "run_with_block_hooks",
]
