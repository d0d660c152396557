"""Memory planner: will a rank computation fit the device, and with which method and block?

Before any product is taken, :func:`plan` adds up

* **model**: parameters and buffers in their dtype (plus a copy when products are upcast);
* **activations**: the bytes autograd saves for one forward on ``batch_example``
  (:func:`~scalable_hrank.device_memory.measure_activation_bytes`). A double-backward Hessian
  product keeps the forward graph (A), the first backward's graph (about A) and, per column
  of a vmapped block of k, a transient second backward (A): ``activations = A (2 + k)``, an
  upper estimate, with k the method's ``product_width``;
* **method storage**: the estimator's own count (``Estimator.storage_bytes`` in the
  registry, :mod:`scalable_hrank.estimators`): for ``exact`` the dense float64 copies
  (``DENSE_COPIES * 8 n^2``), for ``sketch`` and ``lanczos`` the peak of the Krylov solver
  (:func:`scalable_hrank.linalg.krylov_rank.memory_bytes`: its basis in panels, the
  workspace blocks and the projected matrix), for ``density`` its deflation basis, probe
  vectors and quadrature (:func:`scalable_hrank.estimators.density.density_vectors`);

and compares the total with the device memory (CUDA: free memory plus what the model already
occupies there; CPU: ``fraction`` of the available RAM). For each method it tries the
estimator's configurations in order (halved blocks, less deflation) and takes the first that
fits; a method whose storage grows with the rank gets the largest rank that fits
(``Plan.max_rank``). ``method="auto"`` applies :func:`scalable_hrank.estimators.auto.choose`;
when nothing fits, :class:`PlanError` gives the numbers and what to change. Product dtypes
and TF32: :mod:`scalable_hrank.precision`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from scalable_hrank.density import DEFAULT_DEFLATE, DEFAULT_DENSITY_MATVECS, DEFAULT_PROBES
from scalable_hrank.device_memory import available_memory, format_bytes, measure_activation_bytes
from scalable_hrank.errors import HRankError
from scalable_hrank.estimators import Sizing, auto_candidates, choose, estimator, method_names
from scalable_hrank.precision import LOW_PRECISION, parameter_dtype, product_dtype, tf32_disabled

__all__ = ["METHODS", "Plan", "PlanError", "available_memory", "format_bytes",
           "measure_activation_bytes", "plan", "product_dtype", "tf32_disabled"]

logger = logging.getLogger(__name__)

#: The built-in methods; ``auto`` picks one of the others (``method_names()`` lists every
#: registered one).
METHODS = ("auto", "exact", "sketch", "lanczos", "density")


class PlanError(HRankError, ValueError):
    """The computation does not fit the memory; the message gives the numbers and the fixes.

    Attributes:
        needed: Bytes the cheapest admissible configuration needs.
        available: Bytes available.
    """

    def __init__(self, message: str, *, needed: int = 0, available: int = 0) -> None:
        super().__init__(message)
        self.needed = needed
        self.available = available


@dataclass(frozen=True)
class Plan:
    """What the planner chose and why (all sizes in bytes).

    Attributes:
        method: A registered method (``exact``, ``sketch``, ``lanczos``, ``density``, ...).
        block_size: Columns per block product (k).
        n: Selected parameters.
        dtype: Product dtype (as a string, e.g. ``"torch.float32"``).
        device: Device string.
        model_bytes: Parameters and buffers (plus an upcast copy if any).
        activation_bytes: Saved-for-backward bytes of one forward (A), measured or given.
        activation_method: How A was obtained.
        product_bytes: Activations during one block product, A (2 + width).
        storage_bytes: The method's working storage (the estimator's ``storage_bytes``).
        total_bytes: model + product + storage.
        available_bytes: The memory budget compared against.
        max_rank: Largest rank the method's basis can hold (None when its storage does not
            grow with the rank).
        expected_products: The estimator's expected products at ``expected_rank`` (None
            when unknown).
        low_precision: Products run in bf16/fp16.
        error_budget: Relative threshold (of lambda_max) below which eigenvalues cannot be
            told from zero at the product precision: 10 eps(dtype).
        notes: Human-readable remarks (upcasts, fallbacks, smaller blocks).
        deflation: Density only: the deflation eigenpairs that fit (lowered from the
            request when needed; None for the other methods).
    """

    method: str
    block_size: int
    n: int
    dtype: str
    device: str
    model_bytes: int
    activation_bytes: int
    activation_method: str
    product_bytes: int
    storage_bytes: int
    total_bytes: int
    available_bytes: int
    max_rank: int | None = None
    expected_products: int | None = None
    low_precision: bool = False
    error_budget: float = 0.0
    notes: tuple[str, ...] = field(default_factory=tuple)
    deflation: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field."""
        d = asdict(self)
        d["notes"] = list(self.notes)
        return d

    def summary(self) -> str:
        """A few lines for logs and the CLI."""
        lines = [
            f"plan: method {self.method}, block {self.block_size}, n = {self.n:,}, "
            f"{self.dtype} on {self.device}",
            f"  model {format_bytes(self.model_bytes)} + activations "
            f"{format_bytes(self.product_bytes)} (A = {format_bytes(self.activation_bytes)}, "
            f"{self.activation_method}) + storage {format_bytes(self.storage_bytes)} = "
            f"{format_bytes(self.total_bytes)} of {format_bytes(self.available_bytes)}",
        ]
        if self.max_rank is not None:
            lines.append(f"  basis holds ranks up to {self.max_rank:,}")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


@dataclass(frozen=True)
class _Budget:
    """The fixed part of a plan: model, activations per column, memory, requested sizing."""

    model_bytes: int
    activations: int
    activation_method: str
    available: int
    sizing: Sizing
    dtype: torch.dtype
    device: torch.device
    error_budget: float
    notes: tuple[str, ...]

    def total(self, method: str, sizing: Sizing) -> tuple[int, int, int]:
        """(activation bytes, storage bytes, total bytes) of ``method`` at ``sizing``."""
        entry = estimator(method)
        prod = self.activations * (2 + entry.product_width(sizing))
        storage = entry.storage_bytes(sizing)
        return prod, storage, self.model_bytes + prod + storage

    def make(self, method: str, sizing: Sizing, max_rank: int | None,
             products: int | None) -> Plan:
        prod, storage, total = self.total(method, sizing)
        return Plan(method, sizing.block_size, sizing.n, str(self.dtype), str(self.device),
                    self.model_bytes, self.activations, self.activation_method, prod, storage,
                    total, self.available, max_rank=max_rank, expected_products=products,
                    low_precision=self.dtype in LOW_PRECISION, error_budget=self.error_budget,
                    notes=self.notes + ((sizing.note,) if sizing.note else ()),
                    deflation=sizing.deflation if method == "density" else None)


def _largest_rank(fits: Any, low: int, high: int) -> int:
    """Largest r in [low, high] with ``fits(r)``, given ``fits(low)`` (storage grows with r)."""
    while low < high:
        mid = (low + high + 1) // 2
        if fits(mid):
            low = mid
        else:
            high = mid - 1
    return low


def _fit(method: str, budget: _Budget, expected_rank: int | None) -> Plan | None:
    """The first configuration of ``method`` that fits, or None.

    For a method that holds a basis, the first whose basis holds the expected rank (every
    rank when none is expected); when none does, the one whose basis holds the most (a
    narrower block leaves room for more basis vectors).
    """
    entry = estimator(method)
    n = budget.sizing.n
    wanted = min(n, expected_rank) if expected_rank is not None else n
    best: Plan | None = None
    for sizing in entry.configurations(budget.sizing):
        if not entry.holds_basis:
            if budget.total(method, sizing)[2] <= budget.available:
                return budget.make(method, sizing, None, entry.expected_products(sizing))
            continue
        need = min(n, expected_rank if expected_rank is not None else 1)

        def fits(rank: int, sizing: Sizing = sizing) -> bool:
            return budget.total(method, sizing.but(rank=rank))[2] <= budget.available

        if not fits(need):
            continue
        max_rank = _largest_rank(fits, need, n)
        held = sizing.but(rank=need if expected_rank is not None else max_rank)
        products = None if expected_rank is None else entry.expected_products(held)
        candidate = budget.make(method, held, max_rank, products)
        if max_rank >= wanted:
            return candidate
        if best is None or max_rank > (best.max_rank or 0):
            best = candidate
    return best


def plan(model: nn.Module, n_params_selected: int, batch_example: Any, method: str = "auto",
         dtype: torch.dtype | None = None, device: str | torch.device | None = None, *,
         memory_bytes: int | None = None, expected_rank: int | None = None,
         block_size: int = 8, probes: int = DEFAULT_PROBES, deflation: int = DEFAULT_DEFLATE,
         density_matvecs: int = DEFAULT_DENSITY_MATVECS,
         activation_bytes: int | None = None, allow_low_precision: bool = False,
         exact_max_n: int = 20_000, fraction: float = 0.8) -> Plan:
    """Check that a rank computation fits and choose method and block size.

    Args:
        model: The module (its parameters and buffers are counted; one forward measures A
            unless ``activation_bytes`` is given).
        n_params_selected: n, the parameters of the block whose Hessian is analysed.
        batch_example: One ``(inputs, targets)`` batch, the largest the products will see.
        method: ``"auto"`` or a registered method (:func:`scalable_hrank.estimators.method_names`).
        dtype: Product dtype; None = the model's (bf16/fp16 upcast to float32 unless
            ``allow_low_precision``).
        device: Where products run (default: the model's device).
        memory_bytes: Budget override (default :func:`available_memory`).
        expected_rank: Rank a Krylov basis must hold (None: unknown; the plan reports the
            largest rank that fits, and a basis must fit rank 1 at least).
        block_size: Largest k to try; halved until the plan fits.
        probes: SLQ probes for ``density``.
        deflation: Deflation eigenpairs for ``density`` (capped at n // 10 as it runs).
        density_matvecs: Product budget of the SLQ stage (sets the quadrature's depth).
        activation_bytes: Skip the measuring forward and use this A.
        allow_low_precision: Accept bf16/fp16 products (see :func:`product_dtype`).
        exact_max_n: Largest n for which ``auto`` picks the dense method.
        fraction: Share of CPU RAM to use.

    Returns:
        The :class:`Plan` (logged at INFO level).

    Raises:
        ValueError: For an unknown method or a non-positive size.
        PlanError: If nothing fits; the message gives the numbers and what to change.
    """
    if method not in method_names():
        msg = f"method must be one of {method_names()}; got {method!r}"
        raise ValueError(msg)
    if n_params_selected < 1 or block_size < 1 or probes < 1:
        msg = (f"n_params_selected, block_size and probes must be >= 1; got "
               f"{n_params_selected!r}, {block_size!r}, {probes!r}")
        raise ValueError(msg)
    budget = _budget(model, int(n_params_selected), batch_example, dtype, device,
                     memory_bytes=memory_bytes, expected_rank=expected_rank,
                     block_size=block_size, probes=probes, deflation=deflation,
                     density_matvecs=density_matvecs, activation_bytes=activation_bytes,
                     allow_low_precision=allow_low_precision, fraction=fraction)
    n = budget.sizing.n
    if method == "auto":
        chosen = choose(lambda m: _fit(m, budget, expected_rank), n,
                        n if expected_rank is None else expected_rank, exact_max_n)
    else:
        chosen = _fit(method, budget, expected_rank)
    if chosen is not None:
        logger.info("%s", chosen.summary())
        return chosen
    candidates = auto_candidates(n, exact_max_n) if method == "auto" else [method]
    raise _refusal(method, candidates, budget, expected_rank)


def _budget(model: nn.Module, n: int, batch_example: Any, dtype: torch.dtype | None,
            device: str | torch.device | None, *, memory_bytes: int | None,
            expected_rank: int | None, block_size: int, probes: int, deflation: int,
            density_matvecs: int, activation_bytes: int | None, allow_low_precision: bool,
            fraction: float) -> _Budget:
    """Model bytes, measured activations, the memory budget and the requested sizing."""
    mdt = parameter_dtype(model)
    pdt, error_budget, note = product_dtype(mdt, dtype, allow_low_precision=allow_low_precision)
    first = next(iter(model.parameters()), None)
    dev = torch.device(device) if device is not None else (
        first.device if first is not None else torch.device("cpu"))
    nbytes = torch.empty((), dtype=pdt).element_size()

    model_bytes = sum(t.numel() * t.element_size() for t in model.parameters())
    model_bytes += sum(t.numel() * t.element_size() for t in model.buffers())
    upcast_copy = sum(p.numel() for p in model.parameters()) * nbytes if pdt != mdt else 0
    model_bytes += upcast_copy
    if memory_bytes is None:
        available = available_memory(dev, fraction=fraction)
        if first is not None and first.device == dev:  # the model is already resident
            available += model_bytes - upcast_copy
    else:
        available = int(memory_bytes)

    if activation_bytes is None:
        activations = measure_activation_bytes(model, batch_example)
        a_method = "measured: saved tensors of one forward"
        if pdt != mdt:
            activations = activations * nbytes // torch.empty((), dtype=mdt).element_size()
            a_method += f", scaled to {pdt}"
    else:
        activations = int(activation_bytes)
        a_method = "given"
    sizing = Sizing(n=n, itemsize=nbytes, block_size=block_size,
                    rank=n if expected_rank is None else min(n, int(expected_rank)),
                    probes=probes, deflation=deflation, max_matvecs=density_matvecs,
                    device_type=dev.type)
    return _Budget(model_bytes, activations, a_method, available, sizing, pdt, dev,
                   error_budget, (note,) if note else ())


def _refusal(method: str, candidates: list[str], budget: _Budget,
             expected_rank: int | None) -> PlanError:
    """The error when nothing fits: the cheapest configuration of each candidate, and fixes."""
    lines = []
    cheapest = None
    n, rank = budget.sizing.n, budget.sizing.rank if expected_rank is not None else 1
    for m in candidates:
        entry = estimator(m)
        sizing = list(entry.configurations(budget.sizing))[-1]
        if entry.holds_basis:
            sizing = sizing.but(rank=min(n, rank))
        prod, storage, total = budget.total(m, sizing)
        cheapest = total if cheapest is None else min(cheapest, total)
        lines.append(f"{m}: model {format_bytes(budget.model_bytes)} + activations "
                     f"{format_bytes(prod)} + storage {format_bytes(storage)} = "
                     f"{format_bytes(total)}")
    fixes = [f"select fewer parameters (--params, now n = {n:,})",
             f"use a smaller batch (activations A = {format_bytes(budget.activations)} per "
             "forward)"]
    if "density" not in candidates:
        density = estimator("density").storage_bytes(next(iter(
            estimator("density").configurations(budget.sizing))))
        fixes.append(f"use method 'density' (its probes and deflation basis take about "
                     f"{format_bytes(density)})")
    if budget.dtype == torch.float64:
        fixes.append("use float32 products (halves vector storage)")
    fixes.append("run on a device with more memory or pass memory_bytes / --memory")
    msg = (f"rank computation does not fit in {format_bytes(budget.available)} "
           f"(method {method}, n = {n:,}, {budget.dtype}): " + "; ".join(lines)
           + ". To fix: " + "; ".join(fixes))
    return PlanError(msg, needed=int(cheapest or 0), available=budget.available)
