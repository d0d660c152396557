"""Figures of rank results: spectra, rank-vs-threshold curves and spectral densities.

Every function draws on a given ``ax`` (or a new figure) and returns the ``Figure``. Several
results can be overlaid; each keeps its own threshold and gap, drawn in its own colour. What a
function marks carries a ``gid`` so a test or a caller can find it: ``"threshold"`` (the rank
threshold), ``"gap"`` (the detected spectral gap, a shaded band), ``"predicted index"`` and
``"predicted zero region"`` (where a formula says the null space starts).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from scalable_hrank.plots._style import (
    KIND_COLORS,
    KIND_LABELS,
    legend_outside,
    new_axes,
    series_color,
)
from scalable_hrank.result import RankResult

__all__ = ["plot_density", "plot_rank_curve", "plot_result_density", "plot_spectrum",
           "result_label"]


def result_label(res: RankResult) -> str:
    """What a result is, for a legend: kind, method, rank and what the rank guarantees."""
    name = KIND_LABELS.get(res.kind, res.kind)
    if res.method == "exact" or res.certified:
        how = f"rank {res.rank} of {res.n}" + ("" if res.method == "exact" else ", certified")
    else:
        how = f"rank in [{res.rank_low}, {res.rank_high}] of {res.n}"
    return f"{name} {res.method}: {how}"


def _short(label: str) -> str:
    """A legend label without its rank part ("H_L sketch: rank 5 of 9" -> "H_L sketch")."""
    return label.rsplit(":", 1)[0] if ":" in label else label


def _as_series(results_or_eigs: Any,
               labels: Sequence[str] | None) -> list[tuple[str, list[float], RankResult | None]]:
    """Normalise the accepted inputs to ``[(label, eigenvalues, result or None), ...]``."""
    if isinstance(results_or_eigs, RankResult) or (
            isinstance(results_or_eigs, Sequence) and results_or_eigs
            and isinstance(results_or_eigs[0], (int, float))):
        items: list[Any] = [results_or_eigs]
    elif isinstance(results_or_eigs, Mapping):
        labels = list(results_or_eigs) if labels is None else labels
        items = list(results_or_eigs.values())
    elif hasattr(results_or_eigs, "tolist") and getattr(results_or_eigs, "ndim", 2) == 1:
        items = [results_or_eigs]
    else:
        items = list(results_or_eigs)
    out = []
    for i, item in enumerate(items):
        res = item if isinstance(item, RankResult) else None
        if res is not None:
            if res.eigenvalues is None:
                msg = f"series {i}: the RankResult holds no eigenvalues (run exact_rank)"
                raise ValueError(msg)
            eigs = list(res.eigenvalues)
            default = result_label(res)
        else:
            eigs = [float(v) for v in (item.tolist() if hasattr(item, "tolist") else item)]
            default = f"series {i}"
        out.append((default if labels is None else labels[i], eigs, res))
    if not out:
        msg = "plot_spectrum: no spectrum given"
        raise ValueError(msg)
    return out


def plot_spectrum(results_or_eigs: Any, *, labels: Sequence[str] | None = None,
                  predicted_index: int | Sequence[int | None] | None = None,
                  tol: float | None = None, gap: tuple[float, float] | None = None,
                  floor: float | None = None, title: str | None = None, ax: Any = None) -> Any:
    """Plot sorted eigenvalue magnitudes on a log scale, with thresholds, gaps, predicted rank.

    Index i (1-based) against the i-th largest |lambda|. Exact zeros and magnitudes below
    ``floor`` are drawn at ``floor`` (default: 1e-8 times the smallest threshold, or 1e-4 times
    the smallest positive magnitude without one, so that the null region stays visible). Each
    RankResult's own threshold and gap are drawn in its colour.

    Args:
        results_or_eigs: A :class:`~scalable_hrank.RankResult` with eigenvalues, a sequence of
            eigenvalues, or a list / dict (label -> item) of either for several spectra.
        labels: Legend labels, one per series (default: kind, method, rank; or the dict keys).
        predicted_index: The predicted rank (one int, or one per series): a vertical line at
            that index and the span to its right shaded as the predicted zero region.
        tol: Threshold for series without a RankResult (horizontal line).
        gap: ``(lower, upper)`` magnitudes of a gap for series without a RankResult.
        floor: Magnitude at which zeros are drawn.
        title: Axes title (default: what is drawn).
        ax: Axes to draw on (default a new figure).

    Returns:
        The matplotlib Figure.

    Raises:
        ValueError: If a RankResult has no eigenvalues or nothing is given.
    """
    series = _as_series(results_or_eigs, labels)
    marks = [(res.tol, res.gap) if res is not None else (tol, gap) for _, _, res in series]
    tols = [t for t, _ in marks if t]
    positive = [abs(v) for _, eigs, _ in series for v in eigs if abs(v) > 0]
    if floor is None:
        floor = min(tols) * 1e-8 if tols else (min(positive) if positive else 1.0) * 1e-4
    fig, ax = new_axes(ax)
    one = len(series) == 1
    owners: dict[float, list[str]] = {}
    for (label, _, _), (t, _) in zip(series, marks, strict=True):
        if t:
            owners.setdefault(t, []).append(_short(label))
    for i, ((label, eigs, _), (_, g)) in enumerate(zip(series, marks, strict=True)):
        color = series_color(i)
        mags = sorted((max(abs(v), floor) for v in eigs), reverse=True)
        ax.semilogy(range(1, len(mags) + 1), mags, ".", ms=3, color=color, label=label,
                    gid=f"spectrum:{i}")
        if g is None:
            continue
        if one:
            ax.axhspan(max(g[0], floor), g[1], color="0.8", alpha=0.4, lw=0, label="gap",
                       gid="gap")
        else:  # a bar at the gap's index: overlaid bands would hide each other
            index = sum(1 for v in mags if v >= g[1]) + 0.5
            ax.plot([index, index], [max(g[0], floor), g[1]], color=color, lw=4, alpha=0.45,
                    solid_capstyle="butt", label=f"gap of {_short(label)}", gid="gap")
    for j, (t, names) in enumerate(sorted(owners.items())):
        ax.axhline(t, color="k", ls=["--", ":", "-.", (0, (5, 1, 1, 1))][j % 4], lw=1,
                   label=f"threshold {t:.2g}" + ("" if one else f" ({', '.join(names)})"),
                   gid="threshold")
    preds = (list(predicted_index) if isinstance(predicted_index, Sequence)
             else [predicted_index] * len(series))
    n_max = max(len(eigs) for _, eigs, _ in series)
    distinct = {p for p in preds if p is not None}
    drawn: set[int] = set()
    for i, p in enumerate(preds):
        if p is None or p in drawn:
            continue
        first = not drawn
        drawn.add(p)
        color = series_color(i) if len(distinct) > 1 else "r"
        ax.axvline(p + 0.5, color=color, lw=1.2, label=f"predicted rank {p}",
                   gid="predicted index")
        ax.axvspan(p + 0.5, n_max + 0.5, color=color, alpha=0.07,
                   label="predicted zero region" if first else None,
                   gid="predicted zero region")
    ax.set_xlabel("index (eigenvalues sorted by magnitude)")
    ax.set_ylabel("|eigenvalue|")
    ax.set_xlim(0, n_max + 1)
    ax.set_title(title or ("sorted |eigenvalues| with rank threshold" if one else
                           f"sorted |eigenvalues| of {len(series)} results, each with its "
                           "threshold"))
    legend_outside(ax)
    return fig


def plot_rank_curve(result: RankResult | Sequence[RankResult], *,
                    predicted: int | Sequence[int | None] | None = None,
                    labels: Sequence[str] | None = None,
                    title: str | None = None, ax: Any = None) -> Any:
    """Plot rank against the relative threshold (``RankResult.rank_curve``).

    A flat stretch is a spectral gap: the rank does not depend on the threshold there. Each
    result's own threshold is a vertical dashed line (in its colour; black when shared).

    Args:
        result: One RankResult or several (one line each).
        predicted: Predicted rank(s): horizontal dotted line(s).
        labels: Legend labels, one per result (default: kind, method and rank).
        title: Axes title (default: what is drawn).
        ax: Axes to draw on.

    Returns:
        The matplotlib Figure.

    Raises:
        ValueError: If a result has no rank curve.
    """
    results = [result] if isinstance(result, RankResult) else list(result)
    preds = (list(predicted) if isinstance(predicted, Sequence)
             else [predicted] * len(results))
    kinds = [r.kind for r in results]
    by_kind = len(set(kinds)) == len(kinds)  # one result per kind: colour by kind
    fig, ax = new_axes(ax)
    ranks_all: list[int] = []
    owners: dict[float, list[tuple[str, Any]]] = {}
    for i, res in enumerate(results):
        if not res.rank_curve or not res.scale:
            msg = f"result {i} ({res.kind}) has no rank curve"
            raise ValueError(msg)
        rtols = [t / res.scale for t, _ in res.rank_curve]
        ranks = [k for _, k in res.rank_curve]
        ranks_all += ranks
        label = result_label(res) if labels is None else labels[i]
        color = KIND_COLORS.get(res.kind, series_color(i)) if by_kind else series_color(i)
        ax.semilogx(rtols, ranks, "o-", ms=3, color=color, label=label,
                    gid=f"curve:{res.kind}")
        owners.setdefault(res.tol / res.scale, []).append((_short(label), color))
        if preds[i] is not None:
            ax.axhline(preds[i], color=color, ls=":", lw=1.2, label=f"formula rank {preds[i]}",
                       gid="predicted")
    for rel, users in sorted(owners.items()):
        color = users[0][1] if len(users) == 1 else "k"
        names = "" if len(results) == 1 else f" ({', '.join(n for n, _ in users)})"
        ax.axvline(rel, color=color, ls="--", lw=0.9, label=f"threshold {rel:.1e}{names}",
                   gid="threshold")
    ax.set_xlabel("threshold relative to sigma_max(H_L)")
    ax.set_ylabel("rank (eigenvalues above the threshold)")
    ax.set_ylim(bottom=0, top=max(ranks_all + [1]) * 1.05)
    ax.set_title(title or "rank against the threshold (flat: a spectral gap)")
    legend_outside(ax)
    return fig


def plot_density(grid: Sequence[float], density: Sequence[float], *,
                 label: str | None = None, tol: float | None = None, logy: bool = True,
                 title: str | None = None, ax: Any = None) -> Any:
    """Plot a spectral density on its grid.

    Args:
        grid: Eigenvalue grid, length G.
        density: Density values at ``grid``, length G (non-negative).
        label: Legend label.
        tol: Threshold: two vertical lines at +/- tol (the band counted as zero).
        logy: Log scale for the density (values <= 0 are not drawn).
        title: Axes title.
        ax: Axes to draw on.

    Returns:
        The matplotlib Figure.

    Raises:
        ValueError: If ``grid`` and ``density`` differ in length.
    """
    g = [float(v) for v in grid]
    d = [float(v) for v in density]
    if len(g) != len(d):
        msg = f"grid and density must have the same length; got {len(g)} and {len(d)}"
        raise ValueError(msg)
    fig, ax = new_axes(ax)
    if logy:
        d = [v if v > 0 else math.nan for v in d]
        ax.set_yscale("log")
    ax.plot(g, d, lw=1.2, label=label or "density", gid="density")
    if tol is not None:
        ax.axvline(tol, color="k", ls="--", lw=0.8, label=f"+/- threshold {tol:.2g}",
                   gid="threshold")
        ax.axvline(-tol, color="k", ls="--", lw=0.8, gid="threshold")
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    if title:
        ax.set_title(title)
    legend_outside(ax)
    return fig


def plot_result_density(result: RankResult, *, log: bool = True, title: str | None = None,
                        ax: Any = None) -> Any:
    """Spectral density of a ``method="density"`` result (its stored nodes and weights).

    With ``log`` the variable is log10 |lambda| (density per decade), where the threshold and
    the detected gap read best. The legend and title say how the count was made: stochastic
    Lanczos quadrature in the parameter space or on the output-space Gram matrix of H_O, or
    the exact eigenvalues of that Gram matrix (then the count is exact, not an estimate).

    Raises:
        ValueError: If the result holds no quadrature nodes (not a stochastic density run).
    """
    import torch

    from scalable_hrank.linalg import slq_density

    nodes, weights = result.extra.get("nodes"), result.extra.get("weights")
    if not nodes or not weights:
        msg = ("result holds no SLQ nodes or weights: not a --method density result (plot "
               "its spectrum or rank curve instead)")
        raise ValueError(msg)
    grid, dens = slq_density(torch.tensor(nodes, dtype=torch.float64),
                             torch.tensor(weights, dtype=torch.float64),
                             n=result.n, log=log)
    how = {"outputs-dense": "exact eigenvalues of the output-space Gram matrix",
           "outputs": "SLQ on the output-space Gram matrix"}.get(
        str(result.extra.get("space")), "SLQ in parameter space")
    name = KIND_LABELS.get(result.kind, result.kind)
    fig = plot_density(grid.tolist(), dens.tolist(), label=f"{name} ({how})",
                       tol=None, logy=not log, ax=ax)
    ax = fig.axes[0]
    if log:
        ax.set_xlabel("log10 |eigenvalue|")
        ax.set_ylabel("eigenvalues per decade")
        if result.tol > 0:
            ax.axvline(math.log10(result.tol), color="k", ls="--", lw=0.8,
                       label=f"threshold {result.tol:.2g}", gid="threshold")
        if result.gap is not None and result.gap[1] > 0:
            ax.axvspan(math.log10(max(result.gap[0], result.tol, 1e-300)),
                       math.log10(result.gap[1]), color="0.85", label="gap", gid="gap")
        legend_outside(ax)
    count = (f"rank {result.rank}" if result.rank_low == result.rank_high
             else f"rank in [{result.rank_low}, {result.rank_high}]")
    ax.set_title(title or f"spectral density of {name}, {count}\n({how})")
    return fig
