"""The re-parameterization engine: exact graph rewrites that turn a training model into a deploy model.

``reparameterize(model)`` / ``convert(model)`` trace the model with torch.fx, fold BatchNorm into
convs, merge parallel linear branches and sequential 1x1-kxk convs, check the result numerically
and return it with a report and a rewrite record. Passes live in a registry (``register_pass``)
and can be picked or skipped by name.
"""

from reparam.engine import passes  # noqa: F401  (registers the built-in passes and their order)
from reparam.engine.base import (
    LeftAlone,
    Pass,
    PassContext,
    PassError,
    PassResult,
    available_passes,
    get_pass,
    register_pass,
)
from reparam.engine.core import ConversionResult, convert, reparameterize
from reparam.engine.manager import run_passes
from reparam.engine.record import FusionEntry, RewriteRecord
from reparam.engine.report import CheckSummary, ConversionReport

__all__ = [
    "CheckSummary",
    "ConversionReport",
    "ConversionResult",
    "FusionEntry",
    "LeftAlone",
    "Pass",
    "PassContext",
    "PassError",
    "PassResult",
    "RewriteRecord",
    "available_passes",
    "convert",
    "get_pass",
    "reparameterize",
    "register_pass",
    "run_passes",
]
