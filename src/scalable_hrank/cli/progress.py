"""Progress bars of ``hrank rank``: products done, products per second and an ETA.

A bar counts curvature products (a block of k counts k). Its total is the run's product budget
(``--max-matvecs``), else an upper bound where one is known (P plus the certificate for the
Krylov methods, P for exact; none for density), so the ETA is pessimistic. It is set to 100%
when the solver returns, whatever stopped it; methods without per-block reports (exact) jump
from 0 to 100% at the end.
"""

from __future__ import annotations

import sys
from typing import Any


def products_done(state: Any) -> int:
    """Products counted in a solver state (Krylov state, SLQ state, or a nested one)."""
    for holder in (state, getattr(state, "lanczos", None)):
        count = getattr(holder, "num_matvecs", None)
        if isinstance(count, int):
            return count
    return 0


class ProductBar:
    """A tqdm bar over curvature products, or nothing when disabled.

    Args:
        enabled: Draw the bar (on stderr).
        label: Shown before the bar (e.g. "loss sketch").
        total: Expected products (None: unknown, no ETA).
    """

    def __init__(self, enabled: bool, label: str, total: int | None) -> None:
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=label, unit="prod",
                             file=sys.stderr, dynamic_ncols=True, smoothing=0.1)

    def update(self, state: Any) -> None:
        """Advance to the products counted in ``state``; a per-block solver callback."""
        if self._bar is None:
            return
        done = products_done(state)
        if self._bar.total is not None and done > self._bar.total:
            self._bar.total = done
        if done > self._bar.n:
            self._bar.update(done - self._bar.n)

    def finish(self, products: int | None) -> None:
        """Set the bar to 100% (``products`` done in all) and close it."""
        if self._bar is None:
            return
        done = max(int(products or 0), self._bar.n)
        self._bar.total = done
        self._bar.update(done - self._bar.n)
        self._bar.close()

    def close(self) -> None:
        """Close the bar where it stands (a pre-empted or failed run)."""
        if self._bar is not None:
            self._bar.close()
