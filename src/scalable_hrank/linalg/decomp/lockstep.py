"""Lock-step Lanczos on a block of probes, without a basis (the engine under SLQ).

Each probe runs its own three-term recurrence as one column of an (n, m) block: one
``matmat`` per step for all probes, two length-n vectors per probe kept between steps, a
local reorthogonalization against the two latest vectors (one reduce), and a per-probe
breakdown test. :func:`gauss_rules` turns the tridiagonals into Gauss quadrature nodes and
weights. The state is a dataclass of tensors and lists, so a checkpoint can save it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from scipy.linalg import eigh_tridiagonal, eigvalsh_tridiagonal
from torch import Tensor

from scalable_hrank.linalg._types import MatMat, Reduce

__all__ = ["VECTORS_PER_RUN", "ProbeLanczos", "advance_probes", "column_dots", "extreme_ritz",
           "gauss_rules", "start_probes"]


#: Length-n vectors per run alive at the peak of a step over a deflated operator (the SLQ
#: count and the Krylov certificate both run one), besides the deflation basis: the two kept
#: vectors, the operator's product, its projection off the basis and the new vector.
VECTORS_PER_RUN = 5

#: Elements of the (rows, m) product formed at a time by :func:`column_dots` on the CPU
#: (512 KB in float64: it stays in the caches) and on an accelerator (32 MB: few kernel
#: launches), so that the dots never need a temporary as large as the block.
DOT_CHUNK_ELEMENTS = {"cpu": 1 << 16, "other": 1 << 22}


def _local_dots(x: Tensor, y: Tensor) -> Tensor:
    """Column-wise ``x^T y`` of this process's rows, float64 on x's device, shape (m,)."""
    n, m = x.shape
    chunk = DOT_CHUNK_ELEMENTS["cpu" if x.device.type == "cpu" else "other"]
    rows = max(1, chunk // max(1, m))
    out = (x[:rows] * y[:rows]).sum(0, dtype=torch.float64)
    for start in range(rows, n, rows):
        out += (x[start:start + rows] * y[start:start + rows]).sum(0, dtype=torch.float64)
    return out


def _summed(local: Tensor, reduce: Reduce) -> Tensor:
    """``local`` summed over processes (one reduce), on the CPU."""
    return (local if reduce is None else reduce(local)).cpu()


def column_dots(x: Tensor, y: Tensor, reduce: Reduce) -> Tensor:
    """Column-wise inner products, float64 on the CPU (m numbers), summed over processes.

    Computed in row chunks of at most :data:`DOT_CHUNK_ELEMENTS` numbers: no (n, m)
    temporary for large n.
    """
    return _summed(_local_dots(x, y), reduce)


@dataclass
class ProbeLanczos:
    """Lock-step Lanczos on m probes: two length-n vectors per probe, no basis."""

    v_prev: Tensor  # (n, m), operator dtype
    v: Tensor  # (n, m)
    beta_prev: Tensor  # (m,), float64
    alphas: list[Tensor]  # each (m,), float64
    betas: list[Tensor]  # each (m,), float64; betas[j] couples steps j and j + 1
    lengths: Tensor  # (m,), int64: steps done per probe (frozen at a breakdown)
    active: Tensor  # (m,), bool
    scale: Tensor  # (m,), float64: max |T| entry seen, for the breakdown test
    num_matvecs: int = 0

    def snapshot(self) -> ProbeLanczos:
        """A deep copy (tensors cloned, lists copied) for ``torch.save``."""
        return replace(self, v_prev=self.v_prev.clone(), v=self.v.clone(),
                       beta_prev=self.beta_prev.clone(), alphas=[a.clone() for a in self.alphas],
                       betas=[b.clone() for b in self.betas], lengths=self.lengths.clone(),
                       active=self.active.clone(), scale=self.scale.clone())


def start_probes(z: Tensor, reduce: Reduce) -> tuple[ProbeLanczos, Tensor]:
    """Normalized start vectors from the probe block ``z`` (n, m).

    Returns:
        The state before the first step and the probes' squared norms (m,), float64.
    """
    m = z.shape[1]
    sq = column_dots(z, z, reduce)
    v = z / sq.sqrt().to(z.device, z.dtype)
    f64 = dict(dtype=torch.float64)
    state = ProbeLanczos(v_prev=torch.zeros_like(v), v=v, beta_prev=torch.zeros(m, **f64),
                          alphas=[], betas=[], lengths=torch.zeros(m, dtype=torch.int64),
                          active=torch.ones(m, dtype=torch.bool), scale=torch.zeros(m, **f64))
    return state, sq


def advance_probes(state: ProbeLanczos, op: MatMat, steps: int, reduce: Reduce, *,
                   breakdown: float | None = None) -> None:
    """Run ``steps`` more lock-step Lanczos steps on the active probes.

    A column stops (breaks down) when its new coefficient ``beta`` is at most ``breakdown``
    times the largest coefficient of its tridiagonal so far (default ``eps^0.7`` of the
    vector dtype: the rest of the Krylov space is rounding; 0 stops only on an exact zero).
    Cost: one product per active column and step, 4 column inner products (2 reduces).
    Memory besides the operator's: the two kept blocks, the product and the new block
    (length-n vectors: 4 per active probe; while no probe has stopped the kept blocks are
    reused, not gathered).
    """
    dt = state.v.dtype
    tol = torch.finfo(dt).eps ** 0.7 if breakdown is None else breakdown
    for _ in range(steps):
        idx = torch.nonzero(state.active).flatten()
        k = idx.numel()
        if k == 0:
            return
        every = k == state.active.numel()  # no copies of the state while no probe stopped
        v = state.v if every else state.v[:, idx]
        vp = state.v_prev if every else state.v_prev[:, idx]
        bp = state.beta_prev[idx]
        # a new block (never the operator's output itself, which it may hold or alias)
        w = torch.addcmul(op(v), vp, bp.to(v.device, dt), value=-1.0)
        state.num_matvecs += k
        alpha = column_dots(v, w, reduce)
        w.addcmul_(v, alpha.to(w.device, dt), value=-1.0)
        # cheap local reorthogonalization against the two latest vectors (one reduce)
        c = _summed(torch.cat([_local_dots(v, w), _local_dots(vp, w)]), reduce)
        w.addcmul_(v, c[:k].to(w.device, dt), value=-1.0)
        w.addcmul_(vp, c[k:].to(w.device, dt), value=-1.0)
        alpha = alpha + c[:k]
        beta = column_dots(w, w, reduce).clamp_min(0).sqrt()
        a_full = torch.zeros_like(state.beta_prev)
        b_full = torch.zeros_like(state.beta_prev)
        a_full[idx], b_full[idx] = alpha, beta
        state.alphas.append(a_full)
        state.betas.append(b_full)
        state.lengths[idx] += 1
        state.scale[idx] = torch.maximum(state.scale[idx],
                                         torch.maximum(alpha.abs(), torch.maximum(beta, bp)))
        broke = beta <= tol * state.scale[idx]
        safe = torch.where(broke, torch.ones_like(beta), beta)
        w.div_(safe.to(w.device, dt))
        if every:
            state.v_prev, state.v = state.v, w
        else:
            state.v_prev[:, idx] = v
            state.v[:, idx] = w
        state.beta_prev[idx] = beta
        state.active[idx[broke]] = False


def extreme_ritz(state: ProbeLanczos) -> Tensor:
    """Largest ``|eigenvalue|`` of each column's tridiagonal, shape (m,) float64 on CPU.

    Without reorthogonalization ghost copies of converged Ritz values appear, but they do not
    change the largest magnitude. A column with no step yet reads 0.
    """
    m = state.lengths.numel()
    out = torch.zeros(m, dtype=torch.float64)
    if not state.alphas:
        return out
    a, b = torch.stack(state.alphas, 1), torch.stack(state.betas, 1)
    for i in range(m):
        k = int(state.lengths[i])
        if k:
            theta = eigvalsh_tridiagonal(a[i, :k].numpy(), b[i, :k - 1].numpy())
            out[i] = float(abs(theta).max())
    return out


def gauss_rules(state: ProbeLanczos, depth: int) -> tuple[Tensor, Tensor]:
    """Gauss nodes and weights of every probe at ``depth`` steps (shorter after breakdown).

    The tridiagonal eigenproblem goes to LAPACK's MRRR (``stemr``), O(depth^2) flops per
    probe instead of a dense solver's O(depth^3) (timings: ``scripts/bench/quadrature.py``
    in docs/benchmarks.md). Memory: depth^2 float64 for the eigenvectors, of which only the
    first row (the weights) is kept.

    Returns:
        ``(nodes, weights)``, each (m, depth), float64, zero-padded.
    """
    m = state.lengths.numel()
    a = torch.stack(state.alphas, 1) if state.alphas else torch.zeros(m, 0, dtype=torch.float64)
    b = torch.stack(state.betas, 1) if state.betas else a
    nodes = torch.zeros(m, depth, dtype=torch.float64)
    weights = torch.zeros(m, depth, dtype=torch.float64)
    for i in range(m):
        k = min(depth, int(state.lengths[i]))
        if k == 0:
            continue
        theta, s = eigh_tridiagonal(a[i, :k].numpy(), b[i, :k - 1].numpy())
        nodes[i, :k] = torch.from_numpy(theta)
        weights[i, :k] = torch.from_numpy(s[0] ** 2)
    return nodes, weights
