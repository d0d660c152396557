"""Memory planner: will a rank computation fit the device, and with which method and block?

Before any product is taken, :func:`plan` adds up

* **model**: parameters and buffers in their dtype (plus a copy when products are upcast);
* **activations**: the bytes autograd saves for one forward on ``batch_example``, measured with
  ``torch.autograd.graph.saved_tensors_hooks`` (one forward; views of one storage counted
  once). A double-backward Hessian product keeps the forward graph (A), the first backward's
  graph (about A) and, per column of a vmapped block of k, a transient second backward (A):
  ``activations = A (2 + k)``, an upper estimate (the prototype kept about 50 MB per 16-sentence
  MiniLM batch across products);
* **method storage** for n selected parameters, in the product dtype (b bytes per number):

  ========  ==============================================================  ===========
  method    storage                                                         products
  ========  ==============================================================  ===========
  exact     dense H in float64, its transpose sums and the eigvalsh         n
            workspace: ``DENSE_COPIES * 8 n^2``
  sketch    block Krylov basis (r + 3k) n plus 2 blocks in flight: 2 k n    ~ r + 2k + 40
  lanczos   Lanczos basis m n (full reorthogonalisation), m = r + 3k
  density   the larger of the deflation phase, its block Lanczos basis      probes x steps
            ``m = min(n, 8 d + 64)`` held in panels (at most ``1.25 m + 16``
            allocated: no panel is copied to grow) plus ``3 * 8 + d`` vectors,
            and the SLQ phase, the
            d deflation vectors plus ``SLQ_VECTORS_PER_PROBE`` per probe; on
            the CPU also the quadrature's ``8 depth^2`` bytes
  ========  ==============================================================  ===========

and compares the total with the device memory (CUDA: free memory plus what the model already
occupies there; CPU: ``fraction`` of the available RAM from ``os.sysconf``). ``method="auto"``
takes the most informative method that fits: exact when n <= ``exact_max_n``, else a sketch
whose basis can hold every rank (or ``expected_rank``), else density, and only when density
does not fit either a sketch with a capped basis (which can only return a bound beyond its
cap); it refuses with a :class:`PlanError` that gives the numbers and what to change.

Precision: bf16/fp16 models get products in their own dtype only with
``allow_low_precision=True`` (the plan states the error budget); otherwise products are
upcast to float32. :func:`tf32_disabled` turns TF32 off for matmul and cuDNN during products.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn

from .errors import HRankError
from .linalg.slq import MAX_DEPTH as _MAX_DEPTH

__all__ = ["Plan", "PlanError", "plan", "available_memory", "measure_activation_bytes",
           "product_dtype", "tf32_disabled", "METHODS", "format_bytes"]

logger = logging.getLogger(__name__)

#: Methods the planner knows; ``auto`` picks one of the others.
METHODS = ("auto", "exact", "sketch", "lanczos", "density")
_LOW = (torch.bfloat16, torch.float16)


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


def format_bytes(n: float) -> str:
    """Human-readable bytes (binary units): ``format_bytes(3 * 2**30) == '3.00 GiB'``."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


@dataclass(frozen=True)
class Plan:
    """What the planner chose and why (all sizes in bytes).

    Attributes:
        method: ``exact``, ``sketch``, ``lanczos`` or ``density``.
        block_size: Columns per block product (k).
        n: Selected parameters.
        dtype: Product dtype (as a string, e.g. ``"torch.float32"``).
        device: Device string.
        model_bytes: Parameters and buffers (plus an upcast copy if any).
        activation_bytes: Saved-for-backward bytes of one forward (A), measured or given.
        activation_method: How A was obtained.
        product_bytes: Activations during one block product, A (2 + k).
        storage_bytes: The method's vectors (table in the module docstring).
        total_bytes: model + product + storage.
        available_bytes: The memory budget compared against.
        max_rank: Largest rank the sketch / Lanczos basis can hold (None for exact/density).
        expected_products: Rough product count (None when unknown).
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


@contextlib.contextmanager
def tf32_disabled() -> Iterator[None]:
    """Turn TF32 off for CUDA matmul and cuDNN inside the block (restored on exit).

    TF32 rounds float32 matmul inputs to a 10-bit mantissa (relative error ~5e-4), far
    above the float32 noise floor that rank thresholds assume (docs/theory.md#threshold-rule).
    Harmless on CPU-only machines.

    Yields:
        None.
    """
    matmul = torch.backends.cuda.matmul
    cudnn = torch.backends.cudnn
    saved_prec = torch.get_float32_matmul_precision()
    saved_matmul = matmul.allow_tf32
    saved_cudnn = cudnn.allow_tf32
    try:
        matmul.allow_tf32 = False
        cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        yield
    finally:
        matmul.allow_tf32 = saved_matmul
        cudnn.allow_tf32 = saved_cudnn
        torch.set_float32_matmul_precision(saved_prec)


def _model_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.dtype.is_floating_point:
            return p.dtype
    return torch.float32


def product_dtype(model_dtype: torch.dtype, requested: torch.dtype | None = None, *,
                  allow_low_precision: bool = False) -> tuple[torch.dtype, float, str | None]:
    """Choose the dtype of curvature products.

    Args:
        model_dtype: The parameters' dtype.
        requested: An explicit product dtype, or None (model dtype, upcast if low).
        allow_low_precision: Accept bf16/fp16 products and their error budget.

    Returns:
        ``(dtype, error_budget, note)``: error budget = 10 eps(dtype), the relative
        threshold below which eigenvalues cannot be resolved; a note when upcasting.

    Raises:
        ValueError: If bf16/fp16 products are requested without ``allow_low_precision``.
    """
    dt = requested or model_dtype
    note = None
    if dt in _LOW and not allow_low_precision:
        if requested is not None:
            eps = torch.finfo(dt).eps
            msg = (f"products in {dt} err by about eps = {eps:.1e} of lambda_max, so no "
                   f"eigenvalue below ~{10 * eps:.1e} lambda_max can be told from zero; pass "
                   f"allow_low_precision=True to accept this, or use float32/float64")
            raise ValueError(msg)
        note = (f"model is {model_dtype}; products upcast to torch.float32 (pass "
                f"allow_low_precision=True to run them in {model_dtype} with error budget "
                f"{10 * torch.finfo(model_dtype).eps:.1e} lambda_max)")
        dt = torch.float32
    elif dt in _LOW:
        note = (f"low-precision products in {dt}: eigenvalues below "
                f"{10 * torch.finfo(dt).eps:.1e} lambda_max are not resolved; "
                f"use rtol >= that")
    return dt, 10 * torch.finfo(dt).eps, note


def available_memory(device: str | torch.device = "cpu", *, fraction: float = 0.8) -> int:
    """Bytes available for the computation on ``device``.

    Args:
        device: ``"cpu"`` or a CUDA device.
        fraction: Share of the available RAM the planner may use (CPU only; on CUDA the
            free memory reported by the driver is used whole).

    Returns:
        CUDA: ``torch.cuda.mem_get_info`` free bytes. CPU: ``fraction`` of the available
        physical pages (``os.sysconf``; total pages if unavailable).
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _total = torch.cuda.mem_get_info(dev)
        return int(free)
    page = os.sysconf("SC_PAGE_SIZE")
    try:
        pages = os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError):  # pragma: no cover - non-Linux
        pages = os.sysconf("SC_PHYS_PAGES")
    return int(fraction * page * pages)


def measure_activation_bytes(model: nn.Module, batch_example: Any) -> int:
    """Bytes autograd saves for one forward of ``model`` on ``batch_example``.

    Cost: one forward with gradients enabled (no backward). Tensors sharing a storage are
    counted once; parameters themselves are not counted.

    Args:
        model: The module (at least one parameter must require grad, else nothing is saved).
        batch_example: An ``(inputs, targets)`` pair, or bare inputs.

    Returns:
        Saved bytes (the graph a backward would free).
    """
    from .models.tasks import call_model

    inputs = batch_example[0] if isinstance(batch_example, tuple) and len(batch_example) == 2 \
        else batch_example
    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            st = t.untyped_storage()
            ptr = st.data_ptr()
            if ptr not in param_ptrs:
                seen[ptr] = max(seen.get(ptr, 0), st.nbytes())
        except (RuntimeError, NotImplementedError):  # pragma: no cover - exotic tensors
            seen[id(t)] = t.numel() * t.element_size()
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = call_model(model, inputs)
    del out
    return int(sum(seen.values()))


#: Length-n vectors per SLQ probe at the peak of a lock-step Lanczos step (the two kept
#: vectors, the product, the gathered active columns and the temporaries of the update).
SLQ_VECTORS_PER_PROBE = 8
#: Block width of the deflation's block Lanczos.
DEFLATION_BLOCK = 8
#: n x n float64 matrices alive at the peak of the dense path (the matrix, ``m - m.T``,
#: ``m + m.T``, its half, and the eigensolver's copy).
DENSE_COPIES = 5


def deflation_basis(n: int, deflation: int) -> int:
    """Columns the deflation's block Lanczos holds at most: ``min(n, 8 d + 64)``."""
    return min(n, 8 * deflation + 64) if deflation > 0 else 0


def density_vectors(n: int, probes: int, deflation: int) -> int:
    """Length-n vectors at the peak of a density count (module table)."""
    defl = deflation_basis(n, deflation)
    phase1 = math.ceil(1.25 * defl) + 16 + 3 * DEFLATION_BLOCK + deflation if defl else 0
    return max(phase1, deflation + SLQ_VECTORS_PER_PROBE * probes)


def _storage(method: str, n: int, nbytes: int, k: int, rank_cap: int, probes: int,
             deflation: int, depth: int) -> int:
    if method == "exact":
        return DENSE_COPIES * 8 * n * n
    if method in ("sketch", "lanczos"):
        return (min(n, rank_cap + 3 * k) + 2 * k) * n * nbytes
    return density_vectors(n, probes, deflation) * n * nbytes + 8 * depth * depth


def plan(model: nn.Module, n_params_selected: int, batch_example: Any, method: str = "auto",
         dtype: torch.dtype | None = None, device: str | torch.device | None = None, *,
         memory_bytes: int | None = None, expected_rank: int | None = None,
         block_size: int = 8, probes: int = 12, deflation: int = 32,
         density_matvecs: int = 16000,
         activation_bytes: int | None = None, allow_low_precision: bool = False,
         exact_max_n: int = 20_000, fraction: float = 0.8) -> Plan:
    """Check that a rank computation fits and choose method and block size.

    Args:
        model: The module (its parameters and buffers are counted; one forward measures A
            unless ``activation_bytes`` is given).
        n_params_selected: n, the parameters of the block whose Hessian is analysed.
        batch_example: One ``(inputs, targets)`` batch, the largest the products will see.
        method: One of :data:`METHODS`.
        dtype: Product dtype; None = the model's (bf16/fp16 upcast to float32 unless
            ``allow_low_precision``).
        device: Where products run (default: the model's device).
        memory_bytes: Budget override (default :func:`available_memory`).
        expected_rank: Rank the sketch / Lanczos basis must hold (None: unknown; the plan
            reports the largest rank that fits; at least 3 k + 1 columns must fit).
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
    if method not in METHODS:
        msg = f"method must be one of {METHODS}; got {method!r}"
        raise ValueError(msg)
    if n_params_selected < 1 or block_size < 1 or probes < 1:
        msg = (f"n_params_selected, block_size and probes must be >= 1; got "
               f"{n_params_selected!r}, {block_size!r}, {probes!r}")
        raise ValueError(msg)
    n = int(n_params_selected)
    mdt = _model_dtype(model)
    pdt, budget, note = product_dtype(mdt, dtype, allow_low_precision=allow_low_precision)
    notes: list[str] = [note] if note else []
    first = next(iter(model.parameters()), None)
    dev = torch.device(device) if device is not None else (
        first.device if first is not None else torch.device("cpu"))
    nbytes = torch.empty((), dtype=pdt).element_size()

    model_bytes = sum(t.numel() * t.element_size() for t in model.parameters())
    model_bytes += sum(t.numel() * t.element_size() for t in model.buffers())
    if pdt != mdt:
        model_bytes += sum(p.numel() for p in model.parameters()) * nbytes
    resident = first is not None and first.device == dev
    if memory_bytes is None:
        available = available_memory(dev, fraction=fraction)
        if resident:
            available += model_bytes if pdt == mdt else model_bytes - sum(
                p.numel() for p in model.parameters()) * nbytes
    else:
        available = int(memory_bytes)

    if activation_bytes is None:
        A = measure_activation_bytes(model, batch_example)
        a_method = "measured: saved tensors of one forward"
        if pdt != mdt:
            A = A * nbytes // torch.empty((), dtype=mdt).element_size()
            a_method += f", scaled to {pdt}"
    else:
        A = int(activation_bytes)
        a_method = "given"

    rank_cap = n if expected_rank is None else min(n, int(expected_rank))
    d = min(deflation, n // 10)
    # the quadrature's tridiagonal eigenvectors live in host memory
    depth = min(_MAX_DEPTH, max(2, density_matvecs // probes)) if dev.type == "cpu" else 0

    def total(m: str, k: int, cap: int, dd: int = d) -> tuple[int, int, int]:
        prod = A * (2 + (max(probes, DEFLATION_BLOCK) if m == "density" else k))
        st = _storage(m, n, nbytes, k, cap, probes, dd, depth)
        return prod, st, model_bytes + prod + st

    def make(m: str, k: int, cap: int, max_rank: int | None, products: int | None,
             dd: int = d) -> Plan:
        prod, st, tot = total(m, k, cap, dd)
        extra = () if k == block_size or m == "density" else (
            f"block size lowered to {k} to fit",)
        if m == "density" and dd < d:
            extra = (f"deflation lowered from {d} to {dd} eigenpairs to fit",)
        return Plan(m, k, n, str(pdt), str(dev), model_bytes, A, a_method, prod, st, tot,
                    available, max_rank=max_rank, expected_products=products,
                    low_precision=pdt in _LOW, error_budget=budget,
                    notes=tuple(notes) + extra, deflation=dd if m == "density" else None)

    def try_method(m: str) -> Plan | None:
        ks = [block_size]
        while ks[-1] > 1:
            ks.append(max(1, ks[-1] // 2))
        for k in ks if m != "density" else [min(block_size, probes)]:
            if m in ("sketch", "lanczos"):
                # Columns of the basis that fit next to the model, activations and 2 blocks.
                room = available - model_bytes - A * (2 + k) - 2 * k * n * nbytes
                m_max = min(n, room // (n * nbytes)) if room > 0 else 0
                need = min(n, (rank_cap if expected_rank is not None else 1) + 3 * k)
                if m_max < need:
                    continue
                max_rank = n if m_max >= n else int(m_max - 3 * k)
                cap = rank_cap if expected_rank is not None else max_rank
                products = None if expected_rank is None else min(n, rank_cap + 2 * k + 40)
                return make(m, k, cap, max_rank, products)
            if m == "density":
                for dd in sorted({d, d // 2, d // 4, 0}, reverse=True):
                    if total(m, k, rank_cap, dd)[2] <= available:
                        return make(m, k, rank_cap, None, None, dd)
            elif total(m, k, rank_cap)[2] <= available:
                return make(m, k, rank_cap, None, n if m == "exact" else None)
        return None

    candidates = [method] if method != "auto" else (
        (["exact"] if n <= exact_max_n else []) + ["sketch", "density"])
    capped: Plan | None = None
    for m in candidates:
        p = try_method(m)
        if p is None:
            continue
        if method == "auto" and m == "sketch" and p.max_rank is not None and p.max_rank < min(
                n, rank_cap if expected_rank is not None else n):
            # a capped basis can only bound ranks above its cap: density first, if it fits
            capped = p
            continue
        if method == "auto":
            p = replace(p, notes=p.notes + (f"auto chose {m}",))
        logger.info("%s", p.summary())
        return p
    if capped is not None:
        p = replace(capped, notes=capped.notes + (
            f"auto chose sketch with a basis capped at {capped.max_rank} vectors: density "
            "does not fit either; ranks above the cap get only a bound",))
        logger.info("%s", p.summary())
        return p

    # Nothing fits: report the cheapest configuration of each candidate and what to change.
    lines = []
    cheapest = None
    for m in candidates:
        prod, st, tot = total(m, 1, rank_cap if m != "sketch" or expected_rank else 1,
                              0 if m == "density" else d)
        cheapest = tot if cheapest is None else min(cheapest, tot)
        lines.append(f"{m}: model {format_bytes(model_bytes)} + activations "
                     f"{format_bytes(prod)} + storage {format_bytes(st)} = {format_bytes(tot)}")
    fixes = [f"select fewer parameters (--params, now n = {n:,})",
             f"use a smaller batch (activations A = {format_bytes(A)} per forward)"]
    if method in ("exact", "sketch", "lanczos"):
        fixes.append("use method 'density' (memory about "
                     f"{density_vectors(n, probes, d)} n: probes and deflation basis)")
    if pdt == torch.float64:
        fixes.append("use float32 products (halves vector storage)")
    fixes.append("run on a device with more memory or pass memory_bytes / --memory")
    msg = (f"rank computation does not fit in {format_bytes(available)} "
           f"(method {method}, n = {n:,}, {pdt}): " + "; ".join(lines)
           + ". To fix: " + "; ".join(fixes))
    raise PlanError(msg, needed=int(cheapest or 0), available=available)
