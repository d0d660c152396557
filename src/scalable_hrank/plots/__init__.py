"""Figures of Hessian spectra, rank curves, spectral densities, sweeps and rank maps.

matplotlib is an optional dependency (``pip install scalable-hrank[plots]``); it is imported
lazily, with the non-interactive Agg backend. Every function draws on a given ``ax`` (or a new
figure) and returns the ``Figure``; fonts are at least 9 pt at the saved size, legends sit
outside the data, and axes spanning two decades or more are logarithmic.

- :mod:`~scalable_hrank.plots.results`: one or several rank results (spectrum, rank curve,
  density), each with its own threshold and gap;
- :mod:`~scalable_hrank.plots.tables`: sweep tables and the collected table of ``hrank
  collect`` (rank map of blocks by kinds, or rank against the sweep's axes).
"""

from scalable_hrank.plots._style import (
    KIND_LABELS,
    legend_below,
    legend_outside,
    log_if_decades,
    pyplot,
    save_figure,
    series_color,
)
from scalable_hrank.plots.results import (
    plot_density,
    plot_rank_curve,
    plot_result_density,
    plot_spectrum,
    result_label,
)
from scalable_hrank.plots.tables import (
    is_collected,
    plot_collected,
    plot_rank_map,
    plot_sweep,
)

__all__ = [
    "KIND_LABELS",
    "is_collected",
    "legend_below",
    "legend_outside",
    "log_if_decades",
    "plot_collected",
    "plot_density",
    "plot_rank_curve",
    "plot_rank_map",
    "plot_result_density",
    "plot_spectrum",
    "plot_sweep",
    "pyplot",
    "result_label",
    "save_figure",
    "series_color",
]
