"""``method="auto"``: a policy over the registered estimators, applied by the memory planner.

The most informative method that fits wins: the dense reference when n is small enough,
else a sketch whose basis holds every rank (or the expected rank), else a density count; a
method whose basis fits only below the wanted rank (it could return only a bound beyond its
cap) is taken last, when nothing else fits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scalable_hrank.planner import Plan

#: The methods ``auto`` considers, most informative first.
AUTO_ORDER = ("exact", "sketch", "density")
#: Largest n for which ``auto`` takes the dense reference by default.
AUTO_EXACT_MAX_N = 3000


def auto_candidates(n: int, exact_max_n: int = AUTO_EXACT_MAX_N) -> list[str]:
    """The methods ``auto`` tries for size n, in order (exact only up to ``exact_max_n``)."""
    return [m for m in AUTO_ORDER if m != "exact" or n <= exact_max_n]


def choose(fit: Callable[[str], Plan | None], n: int, wanted_rank: int,
           exact_max_n: int = AUTO_EXACT_MAX_N) -> Plan | None:
    """The plan ``auto`` takes, or None when no candidate fits.

    Args:
        fit: ``method -> Plan`` of the method's best configuration that fits, or None.
        n: Operator size.
        wanted_rank: The rank a basis must hold to count rather than bound (n when unknown).
        exact_max_n: Largest n for the dense reference.

    Returns:
        The first candidate that fits with a basis holding ``wanted_rank`` (a note says
        auto chose it), else the first that fits with a capped basis (a note says ranks
        above the cap get only a bound), else None.
    """
    capped: Plan | None = None
    for method in auto_candidates(n, exact_max_n):
        p = fit(method)
        if p is None:
            continue
        if p.max_rank is not None and p.max_rank < min(n, wanted_rank):
            capped = capped or p
            continue
        return replace(p, notes=(*p.notes, f"auto chose {method}"))
    if capped is None:
        return None
    return replace(capped, notes=(*capped.notes, (
        f"auto chose {capped.method} with a basis capped at {capped.max_rank} vectors: density "
        "does not fit either; ranks above the cap get only a bound")))
