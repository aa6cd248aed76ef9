"""ScaleNet's data-driven neuron allocation (``reparam slim``).

Score every per-scale conv output channel of the SA blocks by |γ| of the BatchNorm after it, keep the
top-ranked channels network-wide so that the model meets a MAC budget, and rebuild the model with
that allocation (kept weights copied, or freshly initialised for the paper's from-scratch retraining).
"""

from reparam.slim.budget import parse_budget
from reparam.slim.core import SlimResult, slim_model
from reparam.slim.io import slim_checkpoint, write_outputs

__all__ = ["SlimResult", "parse_budget", "slim_checkpoint", "slim_model", "write_outputs"]
