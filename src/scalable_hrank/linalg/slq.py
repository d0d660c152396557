"""Stochastic Lanczos quadrature (SLQ) rank counts without a stored basis.

``rank_tau(A) = #{|lambda| > tau} = tr g(A)`` for a step ``g``; SLQ estimates the trace with
Rademacher probes and, per probe, the Gauss quadrature rule of its Lanczos tridiagonal
(Ubaru, Chen & Saad 2017, "Fast estimation of tr(f(A)) via stochastic Lanczos quadrature";
Ubaru & Saad 2016, "Fast methods for estimating the numerical rank of large matrices";
Lin, Saad & Yang 2016, "Approximating spectral densities of large matrices").

The probes run in lock-step as the columns of one block (one ``matmat`` per step on an
(n, probes) block). No basis is kept: two vectors per probe between steps and a few
temporaries during one (the memory planner counts ``SLQ_VECTORS_PER_PROBE`` at the peak),
plus the deflation block, independent of the number of steps. Without reorthogonalization the
Gauss rule stays right (ghost Ritz values share the weight), which is all a trace needs;
only a cheap local reorthogonalization against the two latest vectors is done.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from scalable_hrank._validation import bad_value, check_positive_int
from scalable_hrank.linalg._types import MatMat, Reduce
from scalable_hrank.linalg.counting import (
    Bracket,
    DensityRank,
    bracket,
    check_tau_and_gap,
    count_interval,
    kappa_for_steps,
    rademacher,
    smooth_step,
    steps_for_kappa,
)
from scalable_hrank.linalg.decomp import (
    ProbeLanczos,
    advance_probes,
    gauss_rules,
    start_probes,
)
from scalable_hrank.linalg.orth import project_out

__all__ = ["SLQState", "slq_density", "slq_rank"]

_FIRST_STEPS = 20  # steps before lambda_max and the gap are read from the Ritz values
_GROWTH = 1.5  # depth growth factor while the k vs 0.75 k check fails


def _counts(nodes: Tensor, weights: Tensor, sq: Tensor, lower: float, upper: float) -> Tensor:
    """Per-probe traces ``||z||^2 sum_j w_j g(theta_j)`` of the step on [lower, upper], (m,)."""
    return sq * (weights * smooth_step(nodes, lower, upper)).sum(1)


def _lower_bound(full: tuple[Tensor, Tensor], three_quarter: tuple[Tensor, Tensor], sq: Tensor,
                 active: Tensor, at: float, *, n: int, confidence: float) -> int:
    """Lower confidence bound on ``#{|lambda| > tau}`` for any ``tau < at``, from the probes.

    The smooth step on ``[at, 2 at]`` is 0 below ``at``, so its trace is at most
    ``#{|lambda| > at}``; its width is what the depth resolves when ``at`` comes from
    ``kappa_for_steps``. The change between the ``0.75 k`` and ``k`` step readings (the
    same nodes and weights as the main count) is added to the probe half-width.

    Args:
        full: Nodes and weights at the depth reached, each (m, k), float64.
        three_quarter: The same at ``0.75 k`` steps.
        sq: Squared probe norms, (m,).
        active: Probes still running (a broken-down probe's quadrature is exact).
        at: Magnitude the bound counts above.
        n: Operator size.
        confidence: Level of the probe part.

    Returns:
        The lower end of the interval (>= 0).
    """
    counts = _counts(*full, sq, at, 2.0 * at)
    counts3 = torch.where(active, _counts(*three_quarter, sq, at, 2.0 * at), counts)
    bias = abs(float(counts.mean()) - float(counts3.mean()))
    return count_interval(counts, n=n, bias=bias, confidence=confidence)[2]


def _deflated_op(matmat: MatMat, q: Tensor, reduce: Reduce) -> MatMat:
    # column-major q: ``q.T @ y`` is then a unit-stride reduction for either layout of y
    q = q.T.contiguous().T

    def op(x: Tensor) -> Tensor:
        return project_out(matmat(x), q, reduce, passes=1)

    return op


#: Lanczos steps between two ``on_step`` reports (checkpoint granularity).
CHECKPOINT_STEPS = 25
#: Most Lanczos steps per probe: the Gauss quadrature at depth k solves a k x k tridiagonal
#: eigenproblem with k^2 float64 of eigenvectors (2 GiB at this depth).
MAX_DEPTH = 16384


@dataclass
class SLQState:
    """What a pre-empted SLQ run needs to continue.

    The lock-step Lanczos state and the probes' squared norms. Memory: 2 (n, probes) blocks
    plus (probes, steps) float64 numbers.
    """

    lanczos: ProbeLanczos
    sq: Tensor
    target: int = 0  # the depth the run was advancing to (decisions are made only there)

    def snapshot(self) -> SLQState:
        """A deep copy (tensors cloned, lists copied) for ``torch.save``."""
        return SLQState(lanczos=self.lanczos.snapshot(), sq=self.sq.clone(), target=self.target)

    def restore(self, *, dtype: torch.dtype, device: torch.device | str
                ) -> tuple[ProbeLanczos, Tensor]:
        """The Lanczos state with its vectors on ``device`` in ``dtype`` (a fresh copy)."""
        lz = self.snapshot().lanczos
        lz.v = lz.v.to(device=device, dtype=dtype)
        lz.v_prev = lz.v_prev.to(device=device, dtype=dtype)
        return lz, self.sq.clone()


def slq_rank(matmat: MatMat, n: int, *, tau: float, generator: torch.Generator,
             num_probes: int = 4, max_matvecs: int | None = None, max_steps: int = 1000,
             num_steps: int | None = None, psd: bool = False,
             gap: tuple[float, float] | None = None, lambda_max: float | None = None,
             deflation: tuple[Tensor, Tensor] | None = None, rtol: float = 0.01,
             confidence: float = 0.95, probes: Tensor | None = None,
             dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu",
             reduce: Reduce = None, state: SLQState | None = None,
             on_step: Callable[[SLQState], None] | None = None) -> DensityRank:
    """Count eigenvalues with ``|lambda| > tau`` by stochastic Lanczos quadrature.

    Estimator (Ubaru, Chen & Saad 2017): for Rademacher probes ``z_l``,
    ``tr g(A) ~ (1/m) sum_l ||z_l||^2 sum_j w_lj g(theta_lj)`` with ``theta, w`` the Gauss
    nodes and weights of the Lanczos tridiagonal started at ``z_l``. Two C^1 smooth steps
    (``counting.smooth_step``) bracket the count (``counting.Bracket``): one on
    ``[tau - w_below, tau]`` is 1 wherever ``|x| > tau``, so its trace is at least the count;
    one on ``[tau, tau + w_above]`` is 0 wherever ``|x| <= tau``, so its trace is at most the
    count. The widths reach halfway to the nearest Ritz values on either side (at least
    ``tau / 4``; a given ``gap`` is trusted and filled). No gap is assumed: eigenvalues near
    tau separate the two readings and widen the interval
    ``[lower end of the step above, upper end of the step below]`` (probe half-width at
    ``confidence`` plus each reading's change between ``0.75 k`` and ``k`` steps).

    Depth: after 20 steps ``lambda_max`` and the band around tau are read from the Ritz
    values; the depth is planned from ``kappa = lambda_max / width`` with ``width`` the
    smaller of the band and ``tau - w_below`` (what separates the step below tau from zero:
    null-space Ritz values wander until the depth resolves that), ``steps_for_kappa``: about
    ``3 sqrt(kappa)`` steps when no Ritz value lies below ``-width`` (zero is then an edge),
    ``3 kappa`` otherwise, at most ``2 n`` (by then Lanczos has found every eigenvalue to
    round-off). It grows by 1.5x until both readings at ``k`` and ``0.75 k`` steps (the
    leading block of the same tridiagonal, so free) agree within
    ``max(1, rtol * estimate / 2)``, or the budget ends. Converged means the check passed at
    or beyond the planned depth (or every probe broke down: the rule is then exact).
    Not converged within the budget: ``converged=False``, ``steps_needed`` /
    ``matvecs_needed`` say what it would take (at the band seen so far), and ``lower_bound``
    bounds the count from below: it counts ``|lambda| > bound_at``, the smallest magnitude
    (at least tau) the depth reached resolves.

    Deflation: with an orthonormal block ``Q`` (n, d) and its Ritz values (d,) (e.g. the
    top outliers from block Krylov), the count is ``#{|theta_Q| > tau}`` plus SLQ on
    ``(I - Q Q^T) A (I - Q Q^T)`` with projected probes; this shrinks ``lambda_max`` and
    thus ``kappa``.

    Cost: ``num_probes x steps`` products (one block product per step), plus ``2 d``
    length-n inner products per column and step when deflating. Memory: a few length-n
    vectors per probe (``estimators.density.SLQ_VECTORS_PER_PROBE`` at the peak of a step) and the d
    deflation vectors; nothing grows with the depth except the (probes, steps) float64
    tridiagonals and the quadrature's ``depth^2`` float64 eigenvectors of one probe.

    Args:
        matmat: ``X (n, k) -> A X (n, k)`` for a symmetric A, same dtype and device.
        n: Vector length (the local slice when ``reduce`` sums over processes).
        tau: Threshold > 0; eigenvalues with ``|lambda| > tau`` are counted.
        generator: CPU ``torch.Generator`` for the probes (drawn on CPU, then moved).
        num_probes: Rademacher probes m (columns of the block).
        max_matvecs: Product budget (probes x steps); default ``num_probes * max_steps``.
        max_steps: Cap on the steps per probe.
        num_steps: Run exactly this many steps (no planning or growth).
        psd: Whether A is positive semidefinite (plans ``sqrt(kappa)`` steps).
        gap: ``(lower, upper)`` known to hold no eigenvalue, ``lower <= tau < upper``: the
            two steps then fill it. Default: the band is read from the Ritz values.
        lambda_max: Known ``max |lambda|`` (of the deflated operator when deflating).
        deflation: ``(Q, theta)``: Q (n, d) with orthonormal columns in the operator dtype
            and device, theta (d,) its Ritz values.
        rtol: Relative tolerance of the ``k`` vs ``0.75 k`` convergence check.
        confidence: Level of the probe part of ``[rank_low, rank_high]``.
        probes: Probe block (n, m) to use instead of drawing (e.g. each process's slice of
            global probes); ``generator`` and ``num_probes`` are then ignored.
        dtype: Vector dtype when drawing probes (the operator dtype).
        device: Vector device when drawing probes (the operator device).
        reduce: Sums a small tensor over processes (None: one process).
        state: An :class:`SLQState` from ``on_step`` to resume from (same operator, same
            deflation): the result equals the uninterrupted run's.
        on_step: Called with the live state every ``CHECKPOINT_STEPS`` Lanczos steps (e.g. to
            checkpoint ``state.snapshot()``); must not modify it.

    Returns:
        ``DensityRank`` (``method="slq"``) with nodes/weights of shape (m, num_steps);
        ``estimate`` is the midpoint of the two readings (``readings``).

    Raises:
        ValueError: If ``tau <= 0``, a gap does not bracket ``tau``, ``rtol`` or
            ``confidence`` is out of range, or the budget allows fewer than 2 steps.
    """
    tau = check_tau_and_gap(tau, gap)
    if not 0 < rtol < 1:
        err = bad_value("rtol", "in (0, 1)", rtol)
        raise err
    resume, target = None, 0
    if state is not None:  # the probes live on in the Lanczos vectors
        resume, target = state.restore(dtype=dtype, device=device), state.target
        z = resume[0].v
        num_probes = z.shape[1]
    elif probes is None:
        check_positive_int("num_probes", num_probes)
        z = rademacher(n, num_probes, generator=generator, dtype=dtype, device=device)
    else:
        z = probes
        num_probes = z.shape[1]
    check_positive_int("max_steps", max_steps, minimum=2)
    budget = num_probes * max_steps if max_matvecs is None else max_matvecs
    step_cap = min(max_steps, budget // num_probes)
    if num_steps is not None:
        check_positive_int("num_steps", num_steps, minimum=2)
        step_cap = min(step_cap, num_steps)
    if step_cap < 2:
        err = bad_value("max_matvecs", f">= 2 * num_probes = {2 * num_probes}", max_matvecs)
        raise err
    notes = []
    if step_cap > MAX_DEPTH:
        notes.append(f"depth capped at {MAX_DEPTH} steps per probe (its quadrature needs "
                     "depth^2 numbers): the budget beyond that is not used")
        step_cap = MAX_DEPTH

    op = matmat
    d, deflated_count = 0, 0
    if deflation is not None:
        q, theta_q = deflation
        d = q.shape[1]
        deflated_count = int((theta_q.abs() > tau).sum())
        op = _deflated_op(matmat, q, reduce)
        if resume is None:
            c = q.T @ z
            z = z - q @ (c if reduce is None else reduce(c))

    if resume is None:
        state, sq = start_probes(z, reduce)
    else:
        state, sq = resume
    del z

    def advance(steps: int) -> None:
        """Lanczos steps in chunks of CHECKPOINT_STEPS, reporting the state after each.

        The target depth travels with the reported state, so a resumed run first reaches
        it and then decides exactly as the uninterrupted run did.
        """
        goal = int(state.lengths.max()) + steps
        while steps > 0:
            chunk = min(steps, CHECKPOINT_STEPS)
            advance_probes(state, op, chunk, reduce)
            steps -= chunk
            if on_step is not None:
                on_step(SLQState(lanczos=state, sq=sq, target=goal))

    def read(depth: int) -> tuple[Tensor, Tensor, float, Bracket]:
        nodes, weights = gauss_rules(state, depth)
        lmax = float(nodes.abs().max()) * 1.01 if lambda_max is None else float(lambda_max)
        return nodes, weights, lmax, bracket(nodes, weights, tau, n=n, gap=gap)

    def readings(nodes: Tensor, weights: Tensor, br: Bracket) -> tuple[Tensor, Tensor]:
        """Per-probe traces of the step above tau (<= count) and below it (>= count)."""
        return (_counts(nodes, weights, sq, tau, tau + br.w_above),
                _counts(nodes, weights, sq, tau - br.w_below, tau))

    first = step_cap if num_steps is not None else min(_FIRST_STEPS, step_cap)
    if resume is None:
        advance(first)
    elif state.active.any() and target > int(state.lengths.max()):
        advance(target - int(state.lengths.max()))
    while True:
        depth = int(state.lengths.max())
        nodes, weights, lmax, br = read(depth)
        # the depth must resolve the band around tau and separate tau - w_below from zero:
        # below that resolution null-space Ritz values cannot be told from small eigenvalues
        kappa = max(1.0, lmax / min(br.width, tau - br.w_below))
        # no node below -width: zero is (within the band) an edge of what Lanczos has seen,
        # so plan as for a PSD operator; the k vs 0.75 k check still has the last word
        edge = psd or float(nodes.min()) >= -br.width
        planned = steps_for_kappa(kappa, edge)
        if reduce is None:  # n is the full size: by 2 n steps Lanczos (in floating point)
            planned = min(planned, 2 * n)  # has found every eigenvalue to round-off
        finished = not bool(state.active.any())
        if num_steps is None and not finished and depth < min(planned, step_cap):
            # grow towards the plan at most 2x at a time: the first band reading is rough
            advance(min(planned, step_cap, 2 * depth) - depth)
            continue
        lo_probe, hi_probe = readings(nodes, weights, br)
        nodes3, weights3 = gauss_rules(state, max(1, round(0.75 * depth)))
        lo3, hi3 = readings(nodes3, weights3, br)
        # a probe that broke down has an exact quadrature: it contributes no bias
        lo3 = torch.where(state.active, lo3, lo_probe)
        hi3 = torch.where(state.active, hi3, hi_probe)
        bias_lo = abs(float(lo_probe.mean()) - float(lo3.mean()))
        bias_hi = abs(float(hi_probe.mean()) - float(hi3.mean()))
        est = 0.5 * float(lo_probe.mean() + hi_probe.mean())
        bias = max(bias_lo, bias_hi)
        # the k vs 0.75 k check can be fooled far below the planned depth: require both
        converged = finished or (bias <= max(1.0, 0.5 * rtol * abs(est)) and depth >= planned)
        if converged or num_steps is not None or depth >= step_cap:
            break
        advance(min(step_cap, math.ceil(_GROWTH * depth)) - depth)

    if finished:
        notes.append("Lanczos broke down on every probe: the quadrature is exact")
    g = br.gap()
    if g is None:
        notes.append(f"no spectral gap around tau: eigenvalues with |lambda| in "
                     f"[{tau - br.w_below:.3g}, {tau + br.w_above:.3g}] (about "
                     f"{float((hi_probe - lo_probe).mean()):.0f} of them) are not resolved "
                     "and widen the interval")
    steps_needed = depth if converged else max(planned, math.ceil(_GROWTH * depth))
    mean_lo, s_lo, low, _ = count_interval(lo_probe, n=n, bias=bias_lo, confidence=confidence)
    mean_hi, s_hi, _, high = count_interval(hi_probe, n=n, bias=bias_hi, confidence=confidence)
    lower_bound, bound_at = None, None
    if not converged:
        notes.append(f"not converged within {budget} products: about {steps_needed} steps per "
                     f"probe ({num_probes * steps_needed} products) needed at the band seen "
                     "so far (more if smaller eigenvalues show up as the depth grows)")
        # the step on [at, 2 at] is resolved when at is: it counts at most #{|lambda| > tau}
        bound_at = max(lmax / kappa_for_steps(depth, edge), tau)
        lower_bound = deflated_count + _lower_bound(
            (nodes, weights), (nodes3, weights3), sq, state.active, bound_at, n=n,
            confidence=confidence)
    estimate = 0.5 * (mean_lo + mean_hi) + deflated_count
    return DensityRank(
        estimate=estimate, rank=round(estimate), rank_low=low + deflated_count,
        rank_high=min(n, high + deflated_count), confidence=confidence,
        probe_std=max(s_lo, s_hi), resolution_bias=bias, num_matvecs=state.num_matvecs,
        num_steps=depth, num_probes=num_probes, converged=converged,
        steps_needed=steps_needed, matvecs_needed=num_probes * steps_needed, tau=tau,
        delta=tau + br.w_above, gap=g, lambda_max=lmax, kappa=kappa, num_deflated=d,
        deflated_count=deflated_count, lower_bound=lower_bound, bound_at=bound_at,
        probe_estimates=0.5 * (lo_probe + hi_probe) + deflated_count,
        readings=(mean_lo + deflated_count, mean_hi + deflated_count),
        delta_below=tau - br.w_below, nodes=nodes, weights=weights, method="slq",
        notes=tuple(notes))


def slq_density(nodes: Tensor, weights: Tensor, *, n: int, num_points: int = 512,
                sigma: float | None = None, log: bool = False,
                bounds: tuple[float, float] | None = None) -> tuple[Tensor, Tensor]:
    """Smoothed spectral density from SLQ nodes and weights (Lin, Saad & Yang 2016).

    ``phi(x) = (n/m) sum_l sum_j w_lj K_sigma(x - theta_lj)`` with a Gaussian kernel, on a
    uniform grid (of ``x``, or of ``log10 |x|`` when ``log`` is True, where ``phi`` is then
    a density per decade of ``|lambda|``). Integrates to about ``n`` eigenvalues.

    Args:
        nodes: Ritz values, shape (m, k), float64 (``DensityRank.nodes``).
        weights: Quadrature weights, shape (m, k), rows summing to 1.
        n: Operator size (scales the density to eigenvalue counts).
        num_points: Grid size G.
        sigma: Kernel width (in ``x`` or in decades); default 1/100 of the grid range.
        log: Use ``log10 |x|`` as the variable (nodes with zero magnitude are dropped).
        bounds: Grid range; default the node range padded by ``3 sigma``.

    Returns:
        ``(grid, density)``, each shape (G,), float64.

    Raises:
        ValueError: If there are no usable nodes.
    """
    x = nodes.reshape(-1).to(torch.float64)
    w = weights.reshape(-1).to(torch.float64) * n / nodes.reshape(-1, nodes.shape[-1]).shape[0]
    keep = w > 0
    if log:
        keep &= x.abs() > 0
        x = torch.log10(x.abs().clamp_min(torch.finfo(torch.float64).tiny))
    x, w = x[keep], w[keep]
    if x.numel() == 0:
        err = bad_value("nodes", "at least one node with positive weight", nodes.shape)
        raise err
    lo, hi = (float(x.min()), float(x.max())) if bounds is None else bounds
    span = max(hi - lo, 1e-12 * max(1.0, abs(hi)))
    sig = span / 100.0 if sigma is None else sigma
    if bounds is None:
        lo, hi = lo - 3 * sig, hi + 3 * sig
    grid = torch.linspace(lo, hi, num_points, dtype=torch.float64)
    k = torch.exp(-0.5 * ((grid[:, None] - x[None, :]) / sig) ** 2) / (sig * math.sqrt(2 * math.pi))
    return grid, k @ w
