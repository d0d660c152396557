"""Certified numerical rank by adaptive randomized block Krylov and Rayleigh-Ritz counting.

The estimator on top of the block Krylov decomposition (:mod:`.decomp.block`; the guarantees
are stated in docs/theory.md#estimator-guarantees): grow a block Krylov basis Q from a
Gaussian start block with full reorthogonalization; count the Ritz values of B = Q^T A Q with
``|theta| > tau``. In the basis [Q, Q_perp], ``A = [[B, R^T], [R, C]]`` with R the Krylov
residual and C = (I - QQ^T) A (I - QQ^T) the deflated operator. ``A - diag(B, 0)`` has norm
``<= ||R|| + ||C|| =: e``, so by Weyl every eigenvalue of A lies within e of the sorted
eigenvalues of diag(B, 0) (the Ritz values and n - m zeros). If ``e < tau`` and no Ritz value
has ``|theta|`` in ``[tau - e, tau + e]``, the count is exact. ``||C||`` is estimated by
Lanczos from fresh random starts (one, or a few batched once the basis is large), inflated by
``1 / (1 - eps)``, eps = 0.25.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from scalable_hrank._validation import check_positive_int, check_tolerance
from scalable_hrank.linalg import decomp as _engine
from scalable_hrank.linalg._types import MatMat, Reduce
from scalable_hrank.linalg.decomp import KrylovState
from scalable_hrank.linalg.orth import Basis, inner, panels_of, project_out
from scalable_hrank.threshold import default_rtol

__all__ = ["KrylovRank", "KrylovState", "deflated_norm", "krylov_rank"]

F64 = torch.float64
#: Kuczynski-Wozniakowski slack: the Lanczos estimate is inflated by 1 / (1 - KW_EPS).
KW_EPS = 0.25


@dataclass(frozen=True)
class KrylovRank:
    """Numerical rank from :func:`krylov_rank`.

    Attributes:
        rank: ``#{|theta| > tol}`` over the Ritz values. Exact when ``certified``; otherwise a
            certified lower bound (Cauchy interlacing, up to the product error).
        rank_low: Equal to ``rank`` (the interlacing lower bound).
        rank_high: Upper bound: ``rank`` when certified, else ``#{|theta| > tol - e}`` plus
            ``n - basis_size`` when ``e >= tol`` (then nothing is known about the rest).
        certified: True when ``e < tol`` (or ``e == 0``) and no Ritz value lies in
            ``[tol - e, tol + e]``.
        tol: The absolute threshold tau used.
        ritz_values: Shape (m,) float64 on CPU, descending.
        inertia: ``(#{theta > tol}, #{theta < -tol})``.
        error_bound: e = residual + certificate estimate (``inf`` when no certificate ran).
        residual_norm: Upper bound on ``||A Q - Q B||``.
        sigma_max_estimate: Largest ``|theta|`` (a lower bound on ``||A||`` that converges fast).
        noise_floor: Absolute product-noise estimate: relative asymmetry of B times
            ``sigma_max_estimate`` (0 for exactly symmetric products).
        basis_size: m.
        num_matvecs: Products spent, certificate included (a block of k counts k).
    """

    rank: int
    rank_low: int
    rank_high: int
    certified: bool
    tol: float
    ritz_values: Tensor
    inertia: tuple[int, int]
    error_bound: float
    residual_norm: float
    sigma_max_estimate: float
    noise_floor: float
    basis_size: int
    num_matvecs: int


#: Ritz values are recomputed (an (m, m) eigvalsh, O(m^3)) once the basis grew by this fraction
#: since the last time, and at every block once the residual nears the threshold.
RITZ_GROWTH = 0.5
#: Blocks of the widest width alive at once in a step besides the basis: the pending block
#: and the product while it runs, then the product and its residual (the factorization and
#: the second pass work in the residual's storage), and one for what the operator holds
#: while it multiplies.
WORKSPACE_BLOCKS = 3
#: Failure probability of the default certificate (all its Lanczos runs short of (1 - eps)).
CERTIFICATE_FAILURE = 1e-10
#: Independent certificate runs batched together once the basis outgrows the caches (each
#: step then reads the basis once for all of them): 4 runs of 13 steps at n = 5e4 instead of
#: one of 30, for the same failure probability, in 2.3x fewer passes over the basis.
CERT_STARTS = 4


def _certificate_runs(m: int, n: int) -> int:
    """Lanczos runs a default certificate batches at basis size m (vectors of length n).

    :data:`CERT_STARTS` once the basis is beyond the caches (:data:`~.decomp.WIDEN_ELEMENTS`
    numbers), else 1.
    """
    return CERT_STARTS if m * n >= _engine.WIDEN_ELEMENTS else 1


def memory_bytes(n: int, rank: int, block_size: int, itemsize: int,
                 max_block_size: int | None = None) -> int:
    """Bytes :func:`krylov_rank` holds at its peak for a rank-``rank`` operator of size n.

    The basis of about ``rank + b_last + 2 b`` vectors (b_last the final block width, from
    :func:`~.decomp.target_width`) as its storage panels allocate it, plus the larger
    workspace of a step (:data:`WORKSPACE_BLOCKS` blocks of width b_last) and of the
    certificate (:data:`~.decomp.VECTORS_PER_RUN` vectors per run), plus the
    float64 projected matrix and its eigenvalue workspace (3 m^2 numbers). Not counted: the
    operator's own memory.

    Args:
        n: Operator size.
        rank: Expected rank r.
        block_size: The ``block_size`` passed to :func:`krylov_rank`.
        itemsize: Bytes per number of the basis dtype (8 for float64).
        max_block_size: As for :func:`krylov_rank` (default the same default).
    """
    if max_block_size is None:
        max_block_size = 1 if block_size == 1 else max(block_size, 64)
    wide = _engine.target_width(min(n, rank), n, block_size, max_block_size)
    # a basis for a rank-r operator spans at most range(A) and its random directions: the
    # start block, those the widening added (b_last - b) and a refill of b; one more block
    # of b covers a second refill or directions kept from rounding
    m = min(n, rank + wide + 2 * block_size)
    basis = _engine.allocated_vectors(m, n) * n * itemsize
    workspace = max(WORKSPACE_BLOCKS * wide, _engine.VECTORS_PER_RUN * _certificate_runs(m, n))
    return basis + workspace * n * itemsize + 3 * m * m * 8


def certificate_steps_for(n: int, failure_probability: float = CERTIFICATE_FAILURE) -> int:
    """Lanczos steps k with ``1.648 sqrt(n) exp(-sqrt(KW_EPS) (2k - 1)) <= failure_probability``.

    The Kuczynski-Wozniakowski (1992) bound for a PSD operator and a Gaussian start: with
    KW_EPS = 0.25, k = ceil(ln(1.648 sqrt(n) / p) + 0.5); 27 steps at n = 100, 35 at n = 1e9.
    """
    k = math.log(1.648 * math.sqrt(n) / failure_probability) / (2 * math.sqrt(KW_EPS)) + 0.5
    return max(1, math.ceil(k))


def deflated_norm(matmat: MatMat, basis: Basis, *, num_matvecs: int,
                  generator: torch.Generator, reduce: Reduce = None, num_starts: int = 1,
                  shard: tuple[int, int] | None = None) -> tuple[float, int]:
    """Lanczos estimate of ``||C||``, C = (I - QQ^T) A (I - QQ^T), from random starts.

    ``num_starts`` independent three-term Lanczos runs on the deflated operator (the engine's
    lock-step mode, :func:`~scalable_hrank.linalg.decomp.advance_probes`: each step reads the
    basis once for all runs); the estimate is the largest ``|Ritz value|`` over the runs.
    In float64 each product is projected out of Q once (classical Gram-Schmidt; twice in
    lower precision): what one pass
    leaves along Q is rounding, delta of about eps ||A v||; the next product maps it to
    ``Q B delta + R delta``, whose Q part the next projection removes again, so the deflated
    iteration is perturbed only by ``||R|| delta``, far below the threshold (R the Krylov
    residual, itself below tau / 2 when the certificate runs). A second pass per product
    would double the passes over the basis, which dominate the certificate's cost. A run
    stops only on an exact breakdown (``beta = 0``, e.g. C = 0; a run on rounding noise is
    harmless, a premature stop is not): from a
    Gaussian start its Krylov space then holds every distinct eigenvalue of C (almost surely),
    so its estimate is exact. The estimate is a lower bound on ``||C||`` up to rounding; by
    Kuczynski and Wozniakowski (1992), for PSD C and a Gaussian start, one k-step run has
    ``P(theta_k < (1 - eps) ||C||) <= 1.648 sqrt(n) exp(-sqrt(eps) (2k - 1))`` (eps = 0.25);
    s independent runs all fall short with at most that probability to the power s
    (:func:`certificate_steps_for` picks k). For indefinite C it is applied as a heuristic.

    Args:
        matmat: The operator.
        basis: Q, shape (n, m) orthonormal, or a non-empty sequence of (n, m_i) column panels.
        num_matvecs: Lanczos steps k per run (products of one column); capped at n - m.
        generator: CPU generator for the start vectors.
        reduce: Sums inner products over processes.
        num_starts: Independent runs s.
        shard: ``(offset, global length)`` of this process's rows (sharded vectors).

    Returns:
        ``(theta, products)``: the largest ``|Ritz value|`` and the products spent (at most
        s k). Cost: one projection (4 n m s flops) per step in float64, two otherwise;
        memory :data:`~.decomp.VECTORS_PER_RUN` blocks of (n, s) besides Q and the operator's
        own (the lock-step state and one step).
    """
    check_positive_int("num_starts", num_starts)
    panels = panels_of(basis)
    n = basis.shape[0] if isinstance(basis, Tensor) else panels[0].shape[0]
    steps = num_matvecs
    if reduce is None or shard is not None:  # the dimension is known: cap at C's
        m = sum(p.shape[1] for p in panels)
        steps = min(steps, (shard[1] if shard is not None else n) - m)
    if steps <= 0:
        return 0.0, 0
    dtype = panels[0].dtype if panels else basis.dtype
    device = panels[0].device if panels else basis.device
    v = _engine.draw(n, num_starts, generator, dtype, device, shard)
    v = project_out(v, panels, reduce, passes=2)
    sq = inner(v, v, reduce, dtype=F64).diagonal()
    v = v[:, sq > 0]
    if v.shape[1] == 0:
        return 0.0, 0

    # float64: one pass (see above); lower precision: the leak, eps sqrt(m) ||A v|| per step,
    # comes within reach of the threshold (tau >= 1e-6 sigma), so project twice
    passes = 1 if dtype == torch.float64 else 2

    def deflated(x: Tensor) -> Tensor:
        ax = matmat(x)
        _engine.check_product(x, ax)
        return project_out(ax, panels, reduce, passes=passes)

    runs, _ = _engine.start_probes(v, reduce)
    _engine.advance_probes(runs, deflated, steps, reduce, breakdown=0.0)
    return float(_engine.extreme_ritz(runs).max()), runs.num_matvecs


def krylov_rank(matmat: MatMat, n: int, *, tol: float | None = None, rtol: float | None = None,
                block_size: int = 8, max_block_size: int | None = None,
                max_matvecs: int | None = None,
                certificate_steps: int | None = None, generator: torch.Generator,
                dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu",
                reduce: Reduce = None, state: KrylovState | None = None,
                on_block: Callable[[KrylovState], None] | None = None,
                shard: tuple[int, int] | None = None) -> KrylovRank:
    """Numerical rank ``#{|lambda| > tau}`` of a symmetric operator, with a certificate.

    Adaptive randomized block Krylov (block Lanczos, full CGS2 reorthogonalization, Gaussian
    start block drawn from ``generator`` on CPU; ``block_size=1`` is plain Lanczos) and a
    Rayleigh-Ritz count. When the Krylov residual is below ``tau / 2`` and some Ritz value is
    below the threshold, a certificate is attempted: ``e = ||R|| + theta_C / (1 - 0.25)`` with
    ``theta_C`` a ``certificate_steps``-step Lanczos estimate of the deflated operator's norm
    (:func:`deflated_norm`; failure probability ``<= 1.648 sqrt(n) exp(-0.5 (2k - 1))``, i.e.
    at most 1e-10 with the default k, rigorous for PSD operators, heuristic for indefinite). If
    ``e < tau`` and no ``|theta|`` lies in ``[tau - e, tau + e]`` the count is exact by Weyl. A
    failed certificate means more growth and a later retry; an invariant (empty) block is
    continued with fresh random directions (multiplicities larger than the block size).

    Args:
        matmat: ``X (n, k) -> A X (n, k)`` in ``dtype`` on ``device``; A symmetric.
        n: Operator size.
        tol: Absolute threshold tau. Overrides ``rtol``.
        rtol: Relative threshold: tau = rtol * (largest ``|theta|`` so far). Default when
            neither is given: :func:`scalable_hrank.threshold.default_rtol` of ``dtype``.
        block_size: Block width b (batch of products per call).
        max_block_size: Widest block the run grows to. Once the basis is large (see
            :func:`~.decomp.target_width`), the pending block is topped up with fresh random
            directions (orthogonal to the basis) to ``m / 8`` columns, up to this width, so
            that the orthogonalization, which dominates at ranks in the thousands, runs as
            matrix-matrix products; each added column costs one product. Only a block that
            lost no direction in its last step is widened. Default ``max(b, 64)``, and 1
            (plain Lanczos, never widened) when ``block_size`` is 1.
        max_matvecs: Product budget, certificate included. Default ``n + certificate_steps``.
        certificate_steps: Lanczos steps of the certificate (one run). Default
            :func:`certificate_steps_for` (n): failure probability <= 1e-10; with the default,
            once the basis is large (as for widening), :data:`CERT_STARTS` independent runs of
            ``certificate_steps_for(n, 1e-10 ** (1 / CERT_STARTS))`` steps are batched
            instead (same failure probability, more products, fewer passes over the basis),
            when the budget allows.
        generator: CPU ``torch.Generator``; all randomness comes from it.
        dtype: Basis / product dtype.
        device: Where the basis lives (the operator's device).
        reduce: Sums inner products over processes when vectors are sharded by rows.
        state: A :class:`KrylovState` from ``on_block`` to resume; the result is bit-identical
            to an uninterrupted run (the generator state is restored from it).
        on_block: Called with the live state after every block (e.g. to checkpoint
            ``state.snapshot()``); must not modify it.
        shard: ``(offset, global length)`` when each process holds rows
            ``offset:offset + n`` of every vector (pass ``reduce`` too): random blocks are
            drawn full length and sliced, and sizes and budgets refer to the global length.

    Returns:
        A :class:`KrylovRank`. With an exactly rank-r operator and separated nonzero
        eigenvalues: about ``r + b`` products for the basis plus ``certificate_steps``.
        Memory (:func:`memory_bytes`): the basis in panels (m length-n vectors plus unused
        room below m / 16 + 16 and below ``PANEL_ROWS``) and a workspace of about 3 blocks
        of the widest width (pending block, product, residual), m the final basis size
        (about r + b_max + 2 b).
        Budget exhausted: ``certified=False`` and ``rank`` is the certified lower bound.

    Raises:
        ValueError: For invalid arguments or a state from another problem.
        TypeError: If ``generator`` is not a ``torch.Generator``.
    """
    check_positive_int("n", n)
    n_local, n = n, (shard[1] if shard is not None else n)
    check_positive_int("block_size", block_size)
    if max_block_size is None:
        max_block_size = 1 if block_size == 1 else max(block_size, 64)
    check_positive_int("max_block_size", max_block_size)
    batch_certificate = certificate_steps is None
    if certificate_steps is None:
        certificate_steps = certificate_steps_for(n)
    check_positive_int("certificate_steps", certificate_steps, minimum=0)
    tol = check_tolerance("tol", tol)
    rtol = check_tolerance("rtol", rtol)
    if not isinstance(generator, torch.Generator):
        msg = f"generator must be a torch.Generator; got {type(generator).__name__}"
        raise TypeError(msg)
    if max_matvecs is None:
        max_matvecs = n + certificate_steps
    check_positive_int("max_matvecs", max_matvecs)
    if tol is None and rtol is None:
        rtol = default_rtol(n, dtype)
    rounding = _engine.rounding_tol(dtype)

    if state is None:
        start = _engine.draw(n_local, min(block_size, n), generator, dtype, device, shard)
        state = _engine.init_state(n_local, block_size, start, generator, reduce, shard)
        state.extra.update(sigma=0.0, ritz=None, ritz_size=-1, cert_theta=math.inf,
                           cert_size=-1, certified=False)
    else:
        if (state.n != n_local or state.dtype != dtype or state.block_size != block_size
                or state.shard != shard):
            msg = "state comes from a different problem (n, dtype or block_size differ)"
            raise ValueError(msg)
        generator.set_state(state.generator_state)
    reserve = certificate_steps if max_matvecs >= certificate_steps + min(n, 2 * block_size) \
        else 0
    ex = state.extra

    def tau_now() -> float:
        return tol if tol is not None else rtol * ex["sigma"]

    def drop_tol(scale: float, m: int) -> float:
        # the engine's rounding rule, never above a twentieth of the threshold
        t = tau_now()
        base = rounding(scale, m)
        return min(base, 0.05 * t) if t > 0 else base

    def update_ritz() -> Tensor:
        if ex["ritz_size"] != state.size:
            vals = torch.linalg.eigvalsh(state.projected).flip(0).cpu()
            ex["ritz"], ex["ritz_size"] = vals, state.size
            if vals.numel():
                ex["sigma"] = max(ex["sigma"], float(vals.abs().max()))
        return ex["ritz"]

    def window_clear(vals: Tensor, t: float, e: float) -> bool:
        if e == 0.0:
            return True  # the eigenvalues are exactly those of diag(B, 0)
        mags = vals.abs()
        return not bool(((mags >= t - e) & (mags <= t + e)).any())

    def certify() -> bool:
        """Run the certificate at the current basis; record its estimate."""
        res = _engine.residual_bound(state)
        if state.size >= n:
            theta, used = 0.0, 0
        else:
            starts, steps = 1, certificate_steps
            runs = _certificate_runs(state.size, n)
            if batch_certificate and runs > 1:
                # a basis beyond the caches: fewer, batched steps read it fewer times
                batched = certificate_steps_for(n, CERTIFICATE_FAILURE ** (1 / runs))
                if state.num_matvecs + runs * batched <= max_matvecs:
                    starts, steps = runs, batched
            theta, used = deflated_norm(matmat, state.columns or state.basis,
                                        num_matvecs=steps, generator=generator,
                                        reduce=reduce, num_starts=starts, shard=shard)
        state.num_matvecs += used
        ex["cert_theta"] = min(ex["cert_theta"], theta)
        ex["cert_size"] = state.size
        e = res + ex["cert_theta"] / (1.0 - KW_EPS)
        t = tau_now()
        # e == 0: the eigenvalues are exactly those of diag(B, 0) (the zero operator).
        ok = (e < t or e == 0.0) and window_clear(update_ritz(), t, e)
        ex["certified"] = ok
        return ok

    while state.phase == "grow":
        target = _engine.target_width(state.size, n, block_size, max_block_size)
        if state.pending.shape[1] == state.last_width < target:
            _engine.widen(state, target, generator, reduce, device)
        width = state.pending.shape[1]
        room = max_matvecs - reserve - state.num_matvecs
        k = min(width, room, n - state.size)
        if k <= 0:
            state.phase = "final"
            break
        _engine.step(state, matmat, reduce, width=k, drop_tol=drop_tol)
        res = _engine.residual_bound(state)
        m = state.size
        grew = m - max(ex["ritz_size"], 0)
        if ex["ritz_size"] < 0 or m <= 64 or grew >= RITZ_GROWTH * m or res < 0.5 * tau_now():
            update_ritz()
        t = tau_now()
        # Near-invariant: nothing left (an exact Krylov breakdown) or a residual that can
        # no longer move any eigenvalue across tau.
        collapsed = state.pending.shape[1] == 0 or res < 0.5 * t
        if m >= n:
            certify()
            state.phase = "done"
        elif collapsed:
            # Certify only once a fresh random block, at its first product, was
            # near-invariant and added no Ritz value above tau: b products that find missed
            # multiplicities (block Krylov sees each distinct eigenvalue at most b times),
            # where a failed certificate would cost certificate_steps.
            vals = update_ritz()
            count = int((vals.abs() > t).sum())
            immediate = (ex.get("refilled_at", -1) == m - k
                         and ex.get("count_at_refill", -1) == count)
            can = (immediate and window_clear(vals, t, res)
                   and state.num_matvecs + certificate_steps <= max_matvecs)
            if can and certify():
                state.phase = "done"
            else:
                if can:
                    ex["multiplicity"] = True
                if state.pending.shape[1]:  # drop the residual block: it enters the bound
                    state.dropped_sq += state.residual_norm ** 2
                _engine.refill(state, generator, reduce, device)
                ex["refilled_at"], ex["count_at_refill"] = m, count
                if state.pending.shape[1] == 0:
                    state.phase = "final"
        state.generator_state = generator.get_state()
        if on_block is not None:
            on_block(state)

    if state.phase == "final":
        if (not ex["certified"] and ex["cert_size"] != state.size and state.size > 0
                and state.num_matvecs + certificate_steps <= max_matvecs
                and certificate_steps > 0):
            certify()
        state.phase = "done"
        state.generator_state = generator.get_state()
    return _result(state, n, tau_now(), update_ritz())


def _result(state: KrylovState, n: int, tau: float, vals: Tensor) -> KrylovRank:
    ex = state.extra
    res = _engine.residual_bound(state)
    if state.size >= n:
        e = res
    elif math.isfinite(ex["cert_theta"]):
        e = res + ex["cert_theta"] / (1.0 - KW_EPS)
    else:
        e = math.inf
    certified = bool(ex["certified"])
    n_pos = int((vals > tau).sum())
    n_neg = int((vals < -tau).sum())
    rank = n_pos + n_neg
    if certified:
        high = rank
    else:
        high = int((vals.abs() > tau - e).sum()) if math.isfinite(e) else state.size
        if not e < tau:
            high += n - state.size
        high = min(max(high, rank), n)
    sigma = ex["sigma"]
    return KrylovRank(
        rank=rank, rank_low=rank, rank_high=high, certified=certified, tol=tau,
        ritz_values=vals, inertia=(n_pos, n_neg), error_bound=e, residual_norm=res,
        sigma_max_estimate=sigma, noise_floor=_engine.asymmetry(state) * sigma,
        basis_size=state.size, num_matvecs=state.num_matvecs)
