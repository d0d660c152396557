"""What a result guarantees, as the command line reports it and turns into its exit code."""

from __future__ import annotations

from collections.abc import Iterable

from scalable_hrank.cli.errors import EXIT_BOUND, EXIT_OK
from scalable_hrank.result import RankResult

#: Guarantees that make a run succeed (exit 0); "bound" and "unreliable" give exit 1.
SOUND = frozenset({"exact", "certified", "estimate"})


def guarantee_of(result: RankResult) -> str:
    """One of "exact", "certified", "estimate", "bound" or "unreliable".

    ``result.guarantee`` when the result carries one; otherwise derived: a dense result is
    exact, a certified count certified, a converged density count (an interval at a stated
    confidence) an estimate, and anything else (a budget that ran out, an infeasible count)
    only a bound.
    """
    stated = getattr(result, "guarantee", None)
    if isinstance(stated, str) and stated:
        return stated
    if result.method == "exact":
        return "exact"
    if result.certified:
        return "certified"
    converged = bool(result.extra.get("converged"))
    if result.method == "density" and converged and result.rank_low <= result.rank_high:
        return "estimate"
    return "bound"


def summary_line(result: RankResult) -> str:
    """The result's one-line summary with its guarantee."""
    return f"{result.summary()} [{guarantee_of(result)}]"


def exit_code(results: Iterable[RankResult]) -> int:
    """0 when every result is exact, certified or an estimate; 1 when one is only a bound."""
    return EXIT_OK if all(guarantee_of(r) in SOUND for r in results) else EXIT_BOUND
