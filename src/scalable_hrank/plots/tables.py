"""Figures of tables: reproduction sweeps and the collected table of ``hrank collect``.

A collected table has one row per (task, kind) with at least ``task``, ``status``, ``block``,
``kind``, ``n``, ``rank``, ``rank_low``, ``rank_high``, ``guarantee`` and ``bound`` (a formula
upper bound, empty when none), plus one column per sweep setting; values may be strings (CSV).
With a non-empty ``block`` column it is drawn as a rank map (:func:`plot_rank_map`), otherwise
as rank against the sweep's axes (:func:`plot_collected`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from scalable_hrank.plots._style import (
    KIND_COLORS,
    KIND_LABELS,
    legend_outside,
    log_if_decades,
    new_axes,
    pyplot,
    series_color,
)

__all__ = ["COLLECTED_COLUMNS", "is_collected", "plot_collected", "plot_rank_map",
           "plot_sweep", "sweep_axes"]

#: Columns of a collected table that are not sweep settings.
COLLECTED_COLUMNS = frozenset({
    "task", "status", "block", "kind", "n", "rank", "rank_low", "rank_high", "guarantee",
    "certified", "confidence", "method", "matvecs", "seconds", "bound", "error", "tol",
    "exact_rank", "path"})
_KINDS = ("loss", "outer", "functional")
_SOUND = ("exact", "certified")


def _number(value: Any) -> float:
    if value is None or value == "" or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def is_collected(rows: Sequence[Mapping[str, Any]]) -> bool:
    """True for the table of ``hrank collect`` (one row per task and kind)."""
    return bool(rows) and {"task", "status", "kind", "rank"} <= set(rows[0])


def _ok(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    ok = [r for r in rows if str(r.get("status", "ok")) == "ok"
          and not math.isnan(_number(r.get("rank")))]
    if not ok:
        msg = (f"the table has no finished task to plot ({len(rows)} rows, none with status "
               "ok and a rank); run the missing tasks, then hrank collect again")
        raise ValueError(msg)
    return ok


def sweep_axes(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The sweep-setting columns whose value varies over the rows, in column order."""
    cols = [c for c in rows[0] if c not in COLLECTED_COLUMNS]
    return [c for c in cols if len({str(r.get(c)) for r in rows}) > 1]


def plot_rank_map(rows: Sequence[Mapping[str, Any]], *, title: str | None = None,
                  ax: Any = None) -> Any:
    """Blocks by kinds: colour = rank / n, the rank written in each cell.

    Exact and certified ranks are written plainly; an estimate as ``~r`` and a bound as
    ``>=r`` on a hatched cell; a formula upper bound, where the table has one, as ``<= b``
    under the rank. Missing or failed tasks are grey cells that say so.

    Raises:
        ValueError: If no row has a rank.
    """
    ok = _ok(rows)
    blocks = list(dict.fromkeys(str(r.get("block")) for r in rows if r.get("block")))
    kinds = [k for k in _KINDS if any(r.get("kind") == k for r in rows)]
    kinds += sorted({str(r.get("kind")) for r in rows} - set(kinds) - {"None", ""})
    cell = {(str(r.get("block")), str(r.get("kind"))): r for r in rows}
    plt = pyplot()
    fig, ax = new_axes(ax, figsize=(1.9 * len(kinds) + 2.6, 0.62 * len(blocks) + 1.6))
    cmap = plt.get_cmap("viridis")
    image = [[math.nan] * len(kinds) for _ in blocks]
    for i, block in enumerate(blocks):
        for j, kind in enumerate(kinds):
            r = cell.get((block, kind))
            if r is not None and r in ok:
                image[i][j] = _number(r["rank"]) / max(_number(r["n"]), 1.0)
    shown = ax.imshow(image, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    for i, block in enumerate(blocks):
        for j, kind in enumerate(kinds):
            r = cell.get((block, kind))
            _cell(ax, i, j, r, r is not None and r in ok, image[i][j], cmap)
    n_of = {b: next((str(int(_number(r["n"]))) for r in ok if str(r.get("block")) == b), "?")
            for b in blocks}
    ax.set_xticks(range(len(kinds)), [KIND_LABELS.get(k, k) for k in kinds])
    ax.set_yticks(range(len(blocks)), [f"{b} (n={n_of[b]})" for b in blocks])
    ax.tick_params(length=0)
    bar = fig.colorbar(shown, ax=ax, fraction=0.05, pad=0.03)
    bar.set_label("rank / n")
    ax.set_title(title or "rank of each block and kind (plain: exact or certified; "
                          "~: estimate; >=: lower bound, hatched)", fontsize=9, loc="left")
    return fig


def _cell(ax: Any, i: int, j: int, row: Mapping[str, Any] | None, ok: bool, frac: float,
          cmap: Any) -> None:
    """Write one cell of the rank map."""
    if not ok:
        status = "missing" if row is None else str(row.get("status") or "no rank")
        ax.add_patch(pyplot().Rectangle((j - 0.5, i - 0.5), 1, 1, color="0.85"))
        ax.text(j, i, status, ha="center", va="center", fontsize=9, color="0.3",
                gid="cell:missing")
        return
    assert row is not None
    guarantee = str(row.get("guarantee") or ("certified" if str(row.get("certified")) in (
        "True", "true", "1") else "bound"))
    rank = int(_number(row["rank"]))
    if guarantee in _SOUND:
        text = f"{rank}"
    elif guarantee == "estimate":
        text = f"~{rank}"
    else:
        low = _number(row.get("rank_low"))
        text = f">={int(low) if not math.isnan(low) else rank}"
        ax.add_patch(pyplot().Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///",
                                        edgecolor="0.5", lw=0))
    bound = _number(row.get("bound"))
    if not math.isnan(bound):
        text += f"\n<= {int(bound)} (formula)"
    light = cmap(frac)[:3] if not math.isnan(frac) else (1, 1, 1)
    dark = sum(c * w for c, w in zip(light, (0.299, 0.587, 0.114), strict=True)) < 0.55
    ax.text(j, i, text, ha="center", va="center", fontsize=9,
            fontweight="bold" if guarantee in _SOUND else "normal",
            color="white" if dark else "black", gid=f"cell:{guarantee}")


def plot_collected(rows: Sequence[Mapping[str, Any]], *, x: str | None = None,
                   kinds: Sequence[str] | None = None, title: str | None = None,
                   ax: Any = None) -> Any:
    """Rank against a sweep axis, one line per kind (and per value of a second axis).

    Filled markers are exact or certified ranks; hollow ones estimates or bounds, with their
    interval ``[rank_low, rank_high]`` as an error bar; a formula upper bound, where the table
    has one, is a dashed line. Axes whose values span two decades or more are logarithmic.

    Args:
        rows: The collected table.
        x: The sweep setting on the x axis (default: the first that varies).
        kinds: Kinds to draw (default: all present).
        title: Axes title (default: what is drawn).
        ax: Axes to draw on.

    Raises:
        ValueError: If no row has a rank or ``x`` is not a varying sweep setting.
    """
    ok = _ok(rows)
    axes_ = sweep_axes(ok) or sweep_axes(rows)
    if x is None:
        if not axes_:
            msg = "the sweep has no setting that varies; nothing to put on the x axis"
            raise ValueError(msg)
        x = axes_[0]
    if x not in ok[0]:
        msg = f"--x must be a sweep setting of the table {sorted(axes_)}; got {x!r}"
        raise ValueError(msg)
    group = next((a for a in axes_ if a != x), None)
    kinds = list(kinds or [k for k in _KINDS if any(r.get("kind") == k for r in ok)])
    fig, ax = new_axes(ax, figsize=(7.0, 4.2))
    groups = list(dict.fromkeys(str(r.get(group)) for r in ok)) if group else [""]
    styles = ["-", "--", ":", "-."]
    xs_all, ys_all = [], []
    for gi, gval in enumerate(groups):
        for ki, kind in enumerate(kinds):
            sel = sorted((r for r in ok if r.get("kind") == kind
                          and (group is None or str(r.get(group)) == gval)),
                         key=lambda r: _number(r.get(x)))
            if not sel:
                continue
            color = KIND_COLORS.get(kind, series_color(ki))
            if len(groups) > len(styles):
                color = series_color(gi * len(kinds) + ki)
            xs = [_number(r.get(x)) for r in sel]
            ys = [_number(r["rank"]) for r in sel]
            xs_all += xs
            ys_all += ys
            name = KIND_LABELS.get(kind, kind) + (f", {group}={gval}" if group else "")
            ax.plot(xs, ys, styles[gi % len(styles)], color=color, lw=1.2, label=name,
                    gid=f"rank:{kind}")
            _markers(ax, sel, xs, ys, color)
            bounds = [_number(r.get("bound")) for r in sel]
            if any(not math.isnan(b) for b in bounds):
                ys_all += [b for b in bounds if not math.isnan(b)]
                ax.plot(xs, bounds, "x", ls=(0, (4, 3)), color=color, lw=0.9, ms=5,
                        label=f"{name}: formula bound", gid=f"bound:{kind}")
    log_if_decades(ax, "x", xs_all)
    log_if_decades(ax, "y", ys_all)
    ax.set_xlabel(x)
    ax.set_ylabel("rank")
    ax.plot([], [], "o", color="0.3", label="exact / certified")
    ax.plot([], [], "o", mfc="none", color="0.3", label="estimate / bound (interval)")
    ax.set_title(title or f"rank against {x}" + (f" for each {group}" if group else ""))
    legend_outside(ax)
    return fig


def _markers(ax: Any, sel: Sequence[Mapping[str, Any]], xs: list[float], ys: list[float],
             color: Any) -> None:
    sound = [str(r.get("guarantee") or "") in _SOUND or str(r.get("certified")) in ("True",
                                                                                    "true")
             for r in sel]
    for is_sound in (True, False):
        idx = [i for i, s in enumerate(sound) if s == is_sound]
        if not idx:
            continue
        px, py = [xs[i] for i in idx], [ys[i] for i in idx]
        if is_sound:
            ax.plot(px, py, "o", color=color, ms=5, gid="marker:sound")
            continue
        lo = [max(py[k] - _number(sel[i].get("rank_low")), 0.0) for k, i in enumerate(idx)]
        hi = [max(_number(sel[i].get("rank_high")) - py[k], 0.0) for k, i in enumerate(idx)]
        ax.errorbar(px, py, yerr=[[0 if math.isnan(v) else v for v in lo],
                                  [0 if math.isnan(v) else v for v in hi]],
                    fmt="o", mfc="white", color=color, ms=5, capsize=3, gid="marker:bound")


def plot_sweep(rows: Sequence[Mapping[str, Any]], *, x: str,
               kinds: Sequence[str] = _KINDS,
               measured: str = "rank_{kind}", predicted: str = "pred_{kind}",
               predicted_label: str = "formula", normalize: str | None = None,
               group: str | None = None, logy: bool | None = None, title: str | None = None,
               ax: Any = None) -> Any:
    """Plot measured ranks (markers) against a reference (dashed lines) over a sweep.

    Args:
        rows: Sweep rows (CSV ``DictReader`` rows or dicts); values may be strings.
        x: Column for the x axis (e.g. "N", "width", "depth", "epoch").
        kinds: Which of "loss", "outer", "functional" to draw.
        measured: Column name pattern of the measured rank.
        predicted: Column name pattern of the reference rank (missing/empty: not drawn).
        predicted_label: What the reference is, for the legend ("formula", "linear fit").
        normalize: Column to divide both by (e.g. "p" to plot rank/p).
        group: Column whose distinct values get separate lines (e.g. "loss").
        logy: Log scale on y (default: when the values span two decades or more).
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
    markers = "os^dv<>"
    fig, ax = new_axes(ax)
    xs_all, ys_all = [], []
    for gi, (gname, grows) in enumerate(groups.items()):
        grows = sorted(grows, key=lambda r: _number(r[x]))
        xs = [_number(r[x]) for r in grows]
        den = [(_number(r[normalize]) if normalize else 1.0) for r in grows]
        suffix = f" [{gname}]" if gname else ""
        for ki, kind in enumerate(kinds):
            name = KIND_LABELS.get(kind, kind)
            color = KIND_COLORS.get(kind, series_color(ki))
            m_col, p_col = measured.format(kind=kind), predicted.format(kind=kind)
            ms = [_number(r.get(m_col)) / dv for r, dv in zip(grows, den, strict=True)]
            xs_all += xs
            ys_all += ms
            # one marker shape per kind (per group when there are several): equal ranks of
            # two kinds stay visible as two shapes
            marker = markers[(gi if len(groups) > 1 else ki) % len(markers)]
            ax.plot(xs, ms, marker, color=color, ms=6 if marker == "o" else 5, mfc="none",
                    label=f"{name} measured{suffix}", gid=f"measured:{kind}")
            ps = [_number(r.get(p_col)) / dv for r, dv in zip(grows, den, strict=True)]
            if any(not math.isnan(v) for v in ps):
                ax.plot(xs, ps, "x--", color=color, lw=1, ms=4, alpha=0.8,
                        label=f"{name} {predicted_label}{suffix}", gid=f"predicted:{kind}")
    ax.set_xlabel(x)
    ax.set_ylabel(f"rank / {normalize}" if normalize else "rank")
    log_if_decades(ax, "x", xs_all)
    if logy or (logy is None and log_if_decades(ax, "y", ys_all)):
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    legend_outside(ax)
    return fig
