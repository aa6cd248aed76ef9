"""The expansion schemes (see :mod:`reparam.branching.schemes`)."""

from reparam.branching.schemes import SCHEMES, branch_specs, build_branch, check_scheme

__all__ = ["SCHEMES", "branch_specs", "build_branch", "check_scheme"]
