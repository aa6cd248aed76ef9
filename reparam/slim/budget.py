"""MAC budgets: a fraction of the seed's MACs (``0.6``) or an absolute count (``3.8G``)."""

from __future__ import annotations

import re

from reparam.errors import ReparamError

_SUFFIX = {"K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_ABSOLUTE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([KMGTkmgt])\s*$")
_HINT = "give a fraction of the seed's MACs in (0, 1], e.g. 0.6, or an absolute count with a unit, e.g. 3.8G"


def parse_budget(budget: float | str, seed_macs: int) -> int:
    """The MAC budget in MACs; plain numbers are fractions of ``seed_macs``, K/M/G/T marks a count."""
    if isinstance(budget, str):
        match = _ABSOLUTE.match(budget)
        if match:
            macs = float(match.group(1)) * _SUFFIX[match.group(2).upper()]
            if not 0 < macs <= seed_macs:
                raise ReparamError(
                    f"MAC budget {budget} ({macs:.4g}) is not in (0, {seed_macs:.4g}], the seed's MACs",
                    hint=_HINT,
                )
            return round(macs)
        try:
            budget = float(budget)
        except ValueError as exc:
            raise ReparamError(f"cannot read the MAC budget {budget!r}", hint=_HINT) from exc
    if isinstance(budget, bool) or not isinstance(budget, int | float) or not 0 < budget <= 1:
        raise ReparamError(f"MAC budget fraction {budget!r} is not in (0, 1]", hint=_HINT)
    return int(budget * seed_macs)
