"""The result record of every rank computation, and its JSON form."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scalable_hrank._io import atomic_write_text

#: Relative thresholds (of the spectral norm used for ``tol``) at which ``rank_curve`` is read.
CURVE_RTOLS: tuple[float, ...] = (1e-15, 1e-14, 1e-13, 1e-12, 1e-11, 1e-10, 1e-9, 1e-8, 1e-7,
                                  1e-6, 1e-5, 1e-4, 1e-3, 1e-2)

#: What a result promises, strongest first (see :class:`RankResult`).
GUARANTEES: tuple[str, ...] = ("exact", "certified", "estimate", "bound", "unreliable")


@dataclass(frozen=True)
class RankResult:
    """Numerical rank of one curvature matrix, with everything needed to judge it.

    ``guarantee`` says which promise the numbers keep; ``rank``, ``rank_low``,
    ``rank_high``, ``certified`` and ``confidence`` mean, for each:

    - "exact": dense float64 eigendecomposition. ``rank`` is the count at ``tol``;
      ``rank_low == rank == rank_high``, ``certified`` True, ``confidence`` 1.
    - "certified": a Krylov residual certificate holds at ``tol`` (or an exact dense
      output-space count). Same meaning as "exact".
    - "estimate": a converged statistical estimate (spectral density). ``rank`` is the point
      estimate; ``[rank_low, rank_high]`` holds with probability ``confidence``;
      ``certified`` False.
    - "bound": only bounds are known (the budget ran out, or the count is infeasible).
      ``rank == rank_low``, the largest count known to hold from below; ``rank_high`` the
      upper bound that holds (``n`` when none is known). Both hold with probability
      ``confidence`` (1 for deterministic bounds); ``certified`` False.
    - "unreliable": ``tol`` lies within about 10x of the product noise floor, so round-off
      can move eigenvalues across it: neither a certificate nor a bound holds. ``rank`` is
      the count read at ``tol`` (unverified), ``rank_low = 0``, ``rank_high = n``,
      ``certified`` False; ``notes`` say why and what fixes it (float64 products, a larger
      ``rtol``).

    Attributes:
        rank: The count at ``tol``, the point estimate, or the lower bound (see above).
        n: Number of parameters P (the matrix is P x P).
        kind: "loss" (H_L), "outer" (H_O, Gauss-Newton) or "functional" (H_F).
        method: "exact", "sketch", "lanczos", "density" (or "predict" for formulas).
        tol: Absolute threshold used.
        scale: The spectral norm ``tol`` is relative to (sigma_max of H_L by default).
        matvecs: Curvature products spent (a block of k counts k).
        seconds: Wall time.
        certified: True when the count is exact at ``tol`` (dense, or a residual certificate).
        rank_low, rank_high: Bounds on the rank; equal to ``rank`` when certified.
        confidence: Probability that [rank_low, rank_high] holds (1.0 for deterministic bounds).
        guarantee: One of ``GUARANTEES`` (above). Derived from the other fields when not
            given (as for JSON files written before it existed).
        eigenvalues: Dense eigenvalues (exact) or Ritz values (matrix-free), sorted descending.
        inertia: (positive, negative) counts above ``tol``.
        noise_floor: Estimated absolute error of one product (None where unknown).
        rank_curve: ``[(absolute threshold, rank), ...]`` over a log grid.
        gap: ``(lower, upper)`` eigenvalue magnitudes around the largest spectral gap used,
            None when no gap (ratio >= ``gap_ratio``) was found.
        notes: Human-readable remarks (no gap, which method auto chose and why, ...).
        dtype, device: Where the products ran.
        extra: Free-form method details (block size, error bound, ...).
    """

    rank: int
    n: int
    kind: str
    method: str
    tol: float
    scale: float
    matvecs: int
    seconds: float
    certified: bool
    rank_low: int
    rank_high: int
    confidence: float = 1.0
    eigenvalues: tuple[float, ...] | None = None
    inertia: tuple[int, int] | None = None
    noise_floor: float | None = None
    rank_curve: tuple[tuple[float, int], ...] = ()
    gap: tuple[float, float] | None = None
    notes: tuple[str, ...] = ()
    dtype: str = "torch.float64"
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)
    guarantee: str = ""

    def __post_init__(self) -> None:
        if not self.guarantee:
            object.__setattr__(self, "guarantee", _derived_guarantee(self))
        if self.guarantee not in GUARANTEES:
            msg = f"guarantee must be one of {GUARANTEES}, got {self.guarantee!r}"
            raise ValueError(msg)

    @property
    def reliable(self) -> bool:
        """True for "exact", "certified" and "estimate" (the CLI exits 0 for these)."""
        return self.guarantee in ("exact", "certified", "estimate")

    def to_dict(self, *, eigenvalues: bool = True) -> dict[str, Any]:
        """Return a JSON-ready dict (non-finite floats become None)."""
        out = dataclasses.asdict(self)
        if not eigenvalues:
            out.pop("eigenvalues")
        return _jsonable(out)

    def to_json(self, path: str | Path | None = None, *, eigenvalues: bool = True) -> str:
        """Serialize to JSON; with ``path`` also write it atomically."""
        text = json.dumps(self.to_dict(eigenvalues=eigenvalues), indent=2)
        if path is not None:
            atomic_write_text(Path(path), text + "\n")
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RankResult:
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        for key in ("eigenvalues", "notes"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        for key in ("inertia", "gap"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        data["rank_curve"] = tuple(tuple(p) for p in data.get("rank_curve", ()))
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> RankResult:
        """Read a result written by :meth:`to_json` (a path or the JSON text)."""
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            text = Path(text_or_path).read_text()
        return cls.from_dict(json.loads(text))

    def summary(self) -> str:
        """One line: rank with its guarantee, bounds, threshold, products, time."""
        level = f" at {self.confidence:.0%}" if self.confidence < 1 else ""
        if self.guarantee in ("exact", "certified"):
            r = f"rank {self.rank} ({self.guarantee})"
        elif self.guarantee == "estimate":
            r = f"rank ~{self.rank} (estimate), in [{self.rank_low}, {self.rank_high}]{level}"
        elif self.guarantee == "bound":
            r = f"rank in [{self.rank_low}, {self.rank_high}] (bound{level})"
        else:
            r = f"rank {self.rank} at tol UNRELIABLE (tol near the noise floor; see notes)"
        return (f"{self.kind}: {r} of n={self.n}, method={self.method}, tol={self.tol:.3g}, "
                f"matvecs={self.matvecs}, {self.seconds:.2f}s")


def rank_curve(magnitudes: Sequence[float], scale: float,
               rtols: Sequence[float] = CURVE_RTOLS) -> tuple[tuple[float, int], ...]:
    """Count ``magnitudes > rtol * scale`` for each relative threshold of the grid."""
    mags = sorted((abs(float(m)) for m in magnitudes), reverse=True)
    out = []
    for rt in rtols:
        t = rt * scale
        out.append((t, sum(1 for m in mags if m > t)))
    return tuple(out)


def find_gap(magnitudes: Sequence[float], *, floor: float = 0.0,
             ratio: float = 1e3) -> tuple[float, float] | None:
    """Largest ratio between consecutive sorted magnitudes above ``floor``.

    Args:
        magnitudes: Eigenvalue magnitudes (any order).
        floor: Magnitudes at or below it are noise; the gap's upper side must exceed it.
        ratio: Minimum ratio upper/lower that counts as a gap.

    Returns:
        ``(lower, upper)`` around the largest qualifying gap, or None. ``lower`` may be 0
        (everything below the gap is exactly zero or below ``floor``).
    """
    mags = sorted((abs(float(m)) for m in magnitudes), reverse=True)
    best, best_ratio = None, ratio
    for hi, lo in zip(mags, mags[1:] + [0.0], strict=True):
        if hi <= floor:
            break
        lo_eff = max(lo, floor)
        r = math.inf if lo_eff == 0 else hi / lo_eff
        if r >= best_ratio and (best is None or r > best_ratio):
            best, best_ratio = (lo, hi), r
    return best


def _derived_guarantee(res: RankResult) -> str:
    """The guarantee implied by the older fields (results written before it was recorded)."""
    if res.certified:
        return "exact" if res.method == "exact" else "certified"
    if res.method == "density" and res.extra.get("feasible", True) and res.confidence < 1:
        return "estimate"
    return "bound"


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):
        return _jsonable(obj.item())
    return obj
