"""Figures of Hessian spectra, rank curves, spectral densities and sweeps (matplotlib, Agg).

matplotlib is an optional dependency (``pip install scalable-hrank[plots]``); it is imported
lazily, with the non-interactive Agg backend, so importing this module costs nothing. Every
function draws on a given ``ax`` (or a new figure) and returns the ``Figure``; what it marks
carries a ``label`` (and a ``gid``) so a test or a caller can find it:

- ``"threshold"``: the rank threshold (horizontal line), ``"gap"``: the detected spectral gap
  (shaded band), ``"predicted index"`` / ``"predicted zero region"``: where the formula says
  the null space starts (vertical line and shaded span) -- the paper's spectrum figure
  (Singh, Bachmann, Hofmann 2021, arXiv 2106.16225).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scalable_hrank.result import RankResult

__all__ = [
    "KIND_LABELS",
    "plot_density",
    "plot_rank_curve",
    "plot_spectrum",
    "plot_sweep",
    "pyplot",
    "save_figure",
]

#: Curvature kind -> the symbol used in legends.
KIND_LABELS: dict[str, str] = {"loss": "H_L", "outer": "H_O", "functional": "H_F"}

_COLORS = {"loss": "C0", "outer": "C1", "functional": "C2"}


def pyplot() -> Any:
    """Import and return ``matplotlib.pyplot`` with the Agg backend (no display needed).

    Raises:
        ImportError: If matplotlib is not installed.
    """
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - depends on the environment
        msg = "plots need matplotlib: pip install 'scalable-hrank[plots]'"
        raise ImportError(msg) from exc
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _axes(ax: Any, figsize: tuple[float, float] = (6.0, 4.0)) -> tuple[Any, Any]:
    if ax is not None:
        return ax.figure, ax
    fig, ax = pyplot().subplots(figsize=figsize)
    return fig, ax


def save_figure(fig: Any, path: str | Path, *, dpi: int = 100) -> Path:
    """Write ``fig`` as PNG (tight bounding box), close it, and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)
    return path


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
            default = f"{KIND_LABELS.get(res.kind, res.kind)} (rank {res.rank} of {res.n})"
        else:
            eigs = [float(v) for v in (item.tolist() if hasattr(item, "tolist") else item)]
            default = f"series {i}"
        label = default if labels is None else labels[i]
        out.append((label, eigs, res))
    if not out:
        msg = "plot_spectrum: no spectrum given"
        raise ValueError(msg)
    return out


def plot_spectrum(results_or_eigs: Any, *, labels: Sequence[str] | None = None,
                  predicted_index: int | Sequence[int | None] | None = None,
                  tol: float | None = None, gap: tuple[float, float] | None = None,
                  floor: float | None = None, title: str | None = None, ax: Any = None) -> Any:
    """Plot sorted eigenvalue magnitudes on a log scale, with threshold, gap and predicted rank.

    Index i (1-based) against the i-th largest |lambda|. Exact zeros and magnitudes below
    ``floor`` are drawn at ``floor`` (default: 1e-8 times the threshold, or 1e-4 times the
    smallest positive magnitude without one, so that the null region stays visible).

    Args:
        results_or_eigs: A :class:`~scalable_hrank.RankResult` with eigenvalues, a sequence of
            eigenvalues, or a list / dict (label -> item) of either for several spectra.
        labels: Legend labels, one per series (default: kind and rank, or the dict keys).
        predicted_index: The predicted rank (one int, or one per series): a vertical line at
            that index and the span to its right shaded as the predicted zero region.
        tol: Rank threshold (horizontal line); default the ``tol`` of the first RankResult.
        gap: ``(lower, upper)`` magnitudes of the detected gap (shaded band); default the
            ``gap`` of the first RankResult.
        floor: Magnitude at which zeros are drawn.
        title: Axes title.
        ax: Axes to draw on (default a new figure).

    Returns:
        The matplotlib Figure.

    Raises:
        ValueError: If a RankResult has no eigenvalues or nothing is given.
    """
    series = _as_series(results_or_eigs, labels)
    first = next((res for _, _, res in series if res is not None), None)
    if tol is None and first is not None:
        tol = first.tol
    if gap is None and first is not None:
        gap = first.gap
    positive = [abs(v) for _, eigs, _ in series for v in eigs if abs(v) > 0]
    if floor is None:
        floor = tol * 1e-8 if tol else (min(positive) if positive else 1.0) * 1e-4
    fig, ax = _axes(ax)
    for i, (label, eigs, _) in enumerate(series):
        mags = sorted((max(abs(v), floor) for v in eigs), reverse=True)
        ax.semilogy(range(1, len(mags) + 1), mags, ".", ms=2.5, color=f"C{i}", label=label,
                    gid=f"spectrum:{i}")
    if tol is not None and tol > 0:
        ax.axhline(tol, color="k", ls="--", lw=1, label=f"threshold {tol:.2g}", gid="threshold")
    if gap is not None:
        lo = max(gap[0], floor)
        ax.axhspan(lo, gap[1], color="0.85", alpha=0.6, label="gap", gid="gap")
    preds = (list(predicted_index) if isinstance(predicted_index, Sequence)
             else [predicted_index] * len(series))
    n_max = max(len(eigs) for _, eigs, _ in series)
    drawn: set[int] = set()
    for i, p in enumerate(preds):
        if p is None or p in drawn:
            continue
        first = not drawn
        drawn.add(p)
        color = f"C{i}" if len(set(x for x in preds if x is not None)) > 1 else "r"
        ax.axvline(p + 0.5, color=color, lw=1.2, label=f"predicted index {p}",
                   gid="predicted index")
        ax.axvspan(p + 0.5, n_max + 0.5, color=color, alpha=0.07,
                   label="predicted zero region" if first else None,
                   gid="predicted zero region")
    ax.set_xlabel("index (eigenvalues sorted by magnitude)")
    ax.set_ylabel("|eigenvalue|")
    ax.set_xlim(0, n_max + 1)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=7, loc="lower left")
    return fig


def plot_rank_curve(result: RankResult | Sequence[RankResult], *,
                    predicted: int | Sequence[int | None] | None = None,
                    title: str | None = None, ax: Any = None) -> Any:
    """Plot rank against the relative threshold (``RankResult.rank_curve``).

    A flat stretch is a spectral gap: the rank does not depend on the threshold there.

    Args:
        result: One RankResult or several (one line each).
        predicted: Predicted rank(s): horizontal dotted line(s) labelled "predicted ...".
        title: Axes title.
        ax: Axes to draw on.

    Returns:
        The matplotlib Figure.

    Raises:
        ValueError: If a result has no rank curve.
    """
    results = [result] if isinstance(result, RankResult) else list(result)
    preds = (list(predicted) if isinstance(predicted, Sequence)
             else [predicted] * len(results))
    fig, ax = _axes(ax)
    for i, res in enumerate(results):
        if not res.rank_curve or not res.scale:
            msg = f"result {i} ({res.kind}) has no rank curve"
            raise ValueError(msg)
        rtols = [t / res.scale for t, _ in res.rank_curve]
        ranks = [k for _, k in res.rank_curve]
        name = KIND_LABELS.get(res.kind, res.kind)
        color = _COLORS.get(res.kind, f"C{i}")
        ax.semilogx(rtols, ranks, "o-", ms=3, color=color, label=f"{name} measured",
                    gid=f"curve:{res.kind}")
        ax.axvline(res.tol / res.scale, color=color, ls="--", lw=0.8,
                   label=f"{name} threshold", gid="threshold")
        if preds[i] is not None:
            ax.axhline(preds[i], color=color, ls=":", lw=1.2, label=f"{name} predicted",
                       gid="predicted")
    ax.set_xlabel("relative threshold (fraction of sigma_max(H_L))")
    ax.set_ylabel("rank")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=7)
    return fig


def plot_density(grid: Sequence[float], density: Sequence[float], *,
                 label: str | None = None, tol: float | None = None, logy: bool = True,
                 title: str | None = None, ax: Any = None) -> Any:
    """Plot a spectral density (for example from KPM or SLQ) on its grid.

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
    fig, ax = _axes(ax)
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
    ax.legend(fontsize=7)
    return fig


def _number(value: Any) -> float:
    if value is None or value == "":
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def plot_sweep(rows: Sequence[Mapping[str, Any]], *, x: str,
               kinds: Sequence[str] = ("loss", "outer", "functional"),
               measured: str = "rank_{kind}", predicted: str = "pred_{kind}",
               normalize: str | None = None, group: str | None = None,
               logy: bool = False, title: str | None = None, ax: Any = None) -> Any:
    """Plot measured ranks (markers) against predicted ranks (dashed lines) over a sweep.

    Args:
        rows: Sweep rows (CSV ``DictReader`` rows or dicts); values may be strings.
        x: Column for the x axis (e.g. "N", "width", "depth", "epoch").
        kinds: Which of "loss", "outer", "functional" to draw.
        measured: Column name pattern of the measured rank.
        predicted: Column name pattern of the predicted rank (missing/empty: not drawn).
        normalize: Column to divide both by (e.g. "p" to plot rank/p).
        group: Column whose distinct values get separate lines (e.g. "loss").
        logy: Log scale on y.
        title: Axes title.
        ax: Axes to draw on.

    Returns:
        The matplotlib Figure.

    Raises:
        ValueError: If ``rows`` is empty or ``x`` is not a column.
    """
    rows = list(rows)
    if not rows:
        msg = "plot_sweep: no rows"
        raise ValueError(msg)
    if x not in rows[0]:
        msg = f"x must be a column of the rows {sorted(rows[0])}; got {x!r}"
        raise ValueError(msg)
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault("" if group is None else str(row.get(group)), []).append(row)
    markers = "osd^v<>"
    fig, ax = _axes(ax)
    for gi, (gname, grows) in enumerate(groups.items()):
        grows = sorted(grows, key=lambda r: _number(r[x]))
        xs = [_number(r[x]) for r in grows]
        den = [(_number(r[normalize]) if normalize else 1.0) for r in grows]
        suffix = f" [{gname}]" if gname else ""
        for kind in kinds:
            name = KIND_LABELS.get(kind, kind)
            color = _COLORS.get(kind, "k")
            m_col, p_col = measured.format(kind=kind), predicted.format(kind=kind)
            ms = [_number(r.get(m_col)) / dv for r, dv in zip(grows, den, strict=True)]
            ax.plot(xs, ms, markers[gi % len(markers)], color=color, ms=4, mfc="none",
                    label=f"{name} measured{suffix}", gid=f"measured:{kind}")
            ps = [_number(r.get(p_col)) / dv for r, dv in zip(grows, den, strict=True)]
            if any(not math.isnan(v) for v in ps):
                ax.plot(xs, ps, "x--", color=color, lw=1, ms=3, alpha=0.8,
                        label=f"{name} predicted{suffix}", gid=f"predicted:{kind}")
    ax.set_xlabel(x)
    ax.set_ylabel(f"rank / {normalize}" if normalize else "rank")
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=7, ncol=2 if len(groups) > 1 else 1)
    return fig


def plot_result_density(result: RankResult, *, log: bool = True, title: str | None = None,
                        ax: Any = None) -> Any:
    """Spectral density of a ``method="density"`` result (its stored SLQ nodes and weights).

    With ``log`` the variable is log10 |lambda| (density per decade), where the threshold and
    the detected gap read best.

    Raises:
        ValueError: If the result holds no SLQ nodes (not a density run).
    """
    import torch

    from scalable_hrank.linalg import slq_density

    nodes, weights = result.extra.get("nodes"), result.extra.get("weights")
    if not nodes or not weights:
        msg = "result holds no SLQ nodes/weights: run estimate_rank(method='density')"
        raise ValueError(msg)
    grid, dens = slq_density(torch.tensor(nodes, dtype=torch.float64),
                             torch.tensor(weights, dtype=torch.float64),
                             n=result.n, log=log)
    fig = plot_density(grid.tolist(), dens.tolist(), label=f"{result.kind} (SLQ)",
                       tol=None, logy=not log, title=title, ax=ax)
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
        ax.legend(fontsize=7)
    return fig
