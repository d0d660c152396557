"""Shared figure style.

matplotlib with the Agg backend, fonts of at least 9 pt, distinct colours, legends outside the
data, log axes where values span decades.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: Curvature kind -> the symbol used in legends and titles.
KIND_LABELS: dict[str, str] = {"loss": "H_L", "outer": "H_O", "functional": "H_F"}
#: Curvature kind -> colour (the first three of matplotlib's tab10).
KIND_COLORS: dict[str, str] = {"loss": "#1f77b4", "outer": "#ff7f0e", "functional": "#2ca02c"}
#: Font sizes in points at the saved size (figures are saved unscaled).
FONT = {"font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "legend.fontsize": 9,
        "xtick.labelsize": 9, "ytick.labelsize": 9, "figure.titlesize": 11}
#: Ratio max/min from which an axis of positive values is drawn on a log scale.
DECADES = 100.0


def pyplot() -> Any:
    """Import and return ``matplotlib.pyplot`` with the Agg backend and the project's fonts.

    Raises:
        ModuleNotFoundError: If matplotlib is not installed (``pip install
            'scalable-hrank[plots]'``).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    plt.rcParams.update(FONT)
    return plt


def new_axes(ax: Any = None, figsize: tuple[float, float] = (6.4, 4.0)) -> tuple[Any, Any]:
    """``(figure, axes)``: those of ``ax``, or a new figure of ``figsize`` inches."""
    if ax is not None:
        return ax.figure, ax
    fig, ax = pyplot().subplots(figsize=figsize)
    return fig, ax


def series_color(i: int) -> Any:
    """Colour of the i-th overlaid series: tab10, then tab20's lighter shades (20 distinct)."""
    plt = pyplot()
    if i < 10:
        return plt.get_cmap("tab10")(i)
    return plt.get_cmap("tab20")((2 * (i - 10) + 1) % 20)


def legend_outside(ax: Any, **kwargs: Any) -> Any:
    """A legend to the right of the axes, never over the data (None when nothing is labelled)."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return None
    return ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                     frameon=False, **kwargs)


def legend_below(ax: Any, ncol: int = 2, **kwargs: Any) -> Any:
    """A legend under the axes (for figures of several panels side by side)."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return None
    return ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), borderaxespad=0.0,
                     frameon=False, ncol=ncol, **kwargs)


def log_if_decades(ax: Any, axis: str, values: Iterable[float]) -> bool:
    """Put ``axis`` ("x" or "y") on a log scale when its positive values span >= 2 decades."""
    vals = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v) and v > 0]
    if len(vals) < 2 or max(vals) / min(vals) < DECADES:
        return False
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    return True


def save_figure(fig: Any, path: str | Path, *, dpi: int = 150) -> Path:
    """Write ``fig`` as PNG (tight bounding box, legends included), close it, return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)
    return path
