"""The block Krylov engine: panels, the Krylov relation, widening, snapshots."""

import importlib
import io
import math

import pytest
import torch

from scalable_hrank.linalg import decomp as engine
from scalable_hrank.linalg.decomp import (
    block,  # its module constants are patched
    lanczos,
    ritz_pairs,
)
from scalable_hrank.linalg.krylov_rank import deflated_norm, krylov_rank

from .planted import gapped_spectrum, geometric_spectrum, planted

F64 = torch.float64
# the module (the package re-exports the function under the same name)
kr_module = importlib.import_module("scalable_hrank.linalg.krylov_rank")


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def small_panels(monkeypatch):
    """Panels of 16 vectors, so that a basis of a few dozen spans several of them."""
    monkeypatch.setattr(block, "PANEL_ROWS", 16)


@pytest.fixture
def always_widen(monkeypatch):
    """Widen from 24 basis vectors on, whatever the size (the default waits for big bases)."""
    monkeypatch.setattr(block, "WIDEN_FROM", 24)
    monkeypatch.setattr(block, "WIDEN_ELEMENTS", 0)


def _tol(state):
    return lambda scale, m: 16.0 * math.sqrt(m + 1) * torch.finfo(F64).eps * scale


def _grow(p, n, steps, *, width=5, widen_to=None, seed=0):
    gen = _gen(seed)
    state = engine.init_state(n, width, engine.draw(n, width, gen, F64, "cpu"), gen, None)
    for _ in range(steps):
        if widen_to is not None:
            engine.widen(state, widen_to, gen, None, "cpu")
        engine.step(state, p.matmat(), None, width=state.pending.shape[1], drop_tol=_tol(state))
    return state


def test_krylov_relation_across_panels(small_panels):
    n = 120
    p = planted(gapped_spectrum(n, 60, seed=1), seed=1)
    state = _grow(p, n, 9)  # 45 vectors in panels of 16, 16, 13
    assert [c.shape[1] for c in state.columns] == [16, 16, 13]
    q = state.basis
    assert q.shape == (n, 45)
    torch.testing.assert_close(q.mT @ q, torch.eye(45, dtype=F64), atol=1e-13, rtol=0)
    a = p.matrix
    torch.testing.assert_close(state.projected, q.mT @ a @ q, atol=1e-12, rtol=0)
    relation = a @ q - q @ state.projected
    assert float(torch.linalg.matrix_norm(relation, 2)) <= engine.residual_bound(state) * (
        1 + 1e-8) + 1e-12
    c = torch.randn(45, 3, generator=_gen(4), dtype=F64)
    torch.testing.assert_close(state.combine(c), q @ c, atol=1e-13, rtol=0)


def test_widen_keeps_the_residual_bound(small_panels):
    n = 150
    p = planted(gapped_spectrum(n, 90, seed=2), seed=2)
    state = _grow(p, n, 6, width=4, widen_to=12)
    assert state.pending.shape[1] == 12
    q = state.basis
    pend = state.pending
    torch.testing.assert_close(pend.mT @ pend, torch.eye(12, dtype=F64), atol=1e-13, rtol=0)
    assert float((q.mT @ pend).abs().max()) < 1e-13
    a = p.matrix
    relation = a @ q - q @ state.projected
    assert float(torch.linalg.matrix_norm(relation, 2)) <= engine.residual_bound(state) * (
        1 + 1e-8) + 1e-12
    # The widened columns' coupling rows are the residual's: pending^T A X_last.
    x_last = q[:, -state.last_width:]
    torch.testing.assert_close(state.coupling, pend.mT @ a @ x_last, atol=1e-12, rtol=0)


def test_snapshot_trims_and_resumes_into_open_panel(small_panels):
    n = 100
    p = planted(gapped_spectrum(n, 50, seed=3), seed=3)
    state = _grow(p, n, 4)  # 20 vectors: the second panel holds 4 of 16 rows
    snap = state.snapshot()
    assert [t.shape[0] for t in snap.panels] == [16, 4]
    buf = io.BytesIO()
    torch.save(snap, buf)
    again = torch.load(io.BytesIO(buf.getvalue()), weights_only=False)
    for s in (state, again):
        engine.step(s, p.matmat(), None, width=s.pending.shape[1], drop_tol=_tol(s))
    assert torch.equal(state.basis, again.basis)
    assert torch.equal(state.projected, again.projected)


# --------------------------------------------------------------------------------------------
# The rank solver with widened blocks: same certified answers on spectra built to break it.


@pytest.mark.parametrize("kw", [{"indefinite": True}, {"indefinite": False}])
def test_widened_rank_is_exact_and_certified(always_widen, small_panels, kw):
    n, r = 400, 150
    p = planted(gapped_spectrum(n, r, seed=5, **kw), seed=5)
    res = krylov_rank(p.matmat(), n, rtol=1e-6, block_size=4, max_block_size=32,
                      generator=_gen())
    assert res.certified and res.rank == p.rank(res.tol) == r
    assert res.error_bound < res.tol
    # widening costs at most about two widest blocks of products beyond the basis it needs;
    # the certificate, with a large basis, batches CERT_STARTS shorter runs
    batched = kr_module.certificate_steps_for(n, kr_module.CERTIFICATE_FAILURE ** (
        1 / kr_module.CERT_STARTS))
    assert res.num_matvecs <= r + 2 * 32 + 4 + kr_module.CERT_STARTS * batched


def test_widened_mass_just_above_tau(always_widen):
    # 30 eigenvalues at 1.02 tau and 30 at 0.98 tau: the count must not be certified on the
    # wrong side of the threshold.
    n, tau = 300, 1e-4
    lam = torch.cat([torch.linspace(1.0, 0.1, 60, dtype=F64),
                     torch.full((30,), 1.02 * tau, dtype=F64),
                     torch.full((30,), 0.98 * tau, dtype=F64),
                     torch.zeros(n - 120, dtype=F64)])
    p = planted(lam, seed=6)
    res = krylov_rank(p.matmat(), n, tol=tau, block_size=4, max_block_size=32,
                      generator=_gen())
    assert res.rank_low <= 90 <= res.rank_high
    if res.certified:
        assert res.rank == 90


def test_widened_no_gap_brackets_the_truth(always_widen):
    n = 300
    p = planted(geometric_spectrum(n, ratio=0.9), seed=7, noise=1e-10)
    for budget in (80, 200, None):
        res = krylov_rank(p.matmat(), n, rtol=1e-6, block_size=4, max_block_size=32,
                          max_matvecs=budget, generator=_gen())
        true = p.rank(res.tol)
        assert res.rank_low <= true <= res.rank_high
        if res.certified:
            assert res.rank == true


def test_widened_resume_is_bit_identical(always_widen, small_panels):
    n = 300
    p = planted(gapped_spectrum(n, 120, seed=8), seed=8, noise=1e-12)
    kw = {"rtol": 1e-8, "block_size": 4, "max_block_size": 32}
    full = krylov_rank(p.matmat(), n, generator=_gen(3), **kw)
    saved = {}

    class Stop(Exception):
        pass

    def hook(state):
        if state.num_blocks == 21:  # past the first widenings, inside an open panel
            buf = io.BytesIO()
            torch.save(state.snapshot(), buf)
            saved["state"] = buf.getvalue()
            raise Stop

    with pytest.raises(Stop):
        krylov_rank(p.matmat(), n, generator=_gen(3), on_block=hook, **kw)
    state = torch.load(io.BytesIO(saved["state"]), weights_only=False)
    assert state.last_width > 4 and state.size % 16
    resumed = krylov_rank(p.matmat(), n, generator=_gen(999), state=state, **kw)
    assert torch.equal(resumed.ritz_values, full.ritz_values)
    assert resumed.num_matvecs == full.num_matvecs and resumed.certified == full.certified
    assert full.certified and full.rank == 120


def test_target_width_policy():
    big = engine.WIDEN_ELEMENTS
    assert engine.target_width(100, 10**6, 8, 64) == 8  # basis too small in vectors
    assert engine.target_width(1000, 100, 8, 64) == 8  # basis fits in the caches
    assert engine.target_width(300, big, 8, 64) == 32
    assert engine.target_width(4000, big, 8, 64) == 64
    assert engine.target_width(4000, big, 1, 1) == 1  # Lanczos stays single-vector


def test_deflated_norm_one_pass_is_a_lower_bound_within_the_slack(small_panels):
    # PSD: the estimate lies in [(1 - eps) ||C||, ||C||] (up to rounding) with eps = 0.25.
    n = 200
    p = planted(torch.cat([torch.linspace(1.0, 0.5, 40, dtype=F64),
                           torch.linspace(1e-3, 1e-6, 160, dtype=F64)]), seed=9)
    state = _grow(p, n, 8)  # a 40-vector basis in panels of 16
    q = state.basis
    proj = torch.eye(n, dtype=F64) - q @ q.mT
    c_norm = float(torch.linalg.matrix_norm(proj @ p.matrix @ proj, 2))
    theta, used = deflated_norm(p.matmat(), state.columns, num_matvecs=35, generator=_gen(1))
    assert used == 35
    assert (1 - kr_module.KW_EPS) * c_norm <= theta <= c_norm * (1 + 1e-10)
    # the same estimate from the concatenated basis
    theta2, _ = deflated_norm(p.matmat(), q, num_matvecs=35, generator=_gen(1))
    assert math.isclose(theta, theta2, rel_tol=1e-10)


def largest_ritz_magnitudes(matmat, v0, *, num_matvecs, breakdown=0.0):
    """The engine's lock-step mode on the columns of v0: each run's largest |Ritz value|."""
    runs, _ = engine.start_probes(v0, None)
    engine.advance_probes(runs, matmat, num_matvecs, None, breakdown=breakdown)
    return engine.extreme_ritz(runs), runs.num_matvecs


def test_batched_runs_equal_separate_runs():
    # s runs batched in one block product give each run's own three-term Lanczos estimate.
    n = 120
    p = planted(torch.linspace(-0.5, 2.0, n, dtype=F64), seed=10)
    v0 = torch.randn(n, 3, generator=_gen(11), dtype=F64)
    theta, used = largest_ritz_magnitudes(p.matmat(), v0, num_matvecs=12)
    assert used == 36 and theta.shape == (3,)
    for i in range(3):
        alone, _ = largest_ritz_magnitudes(p.matmat(), v0[:, i:i + 1], num_matvecs=12)
        assert math.isclose(float(theta[i]), float(alone[0]), rel_tol=1e-12)
        ref = ritz_pairs(lanczos(p.matmat(), v0[:, i], num_matvecs=12)).values.abs().max()
        assert math.isclose(float(theta[i]), float(ref), rel_tol=1e-9)
    assert float(theta.max()) <= 2.0 * (1 + 1e-12)


def test_batched_run_stops_alone_on_breakdown():
    # Run 0 starts in a 2-dimensional invariant subspace: it breaks down after 2 steps, the
    # other keeps going; the products count only active runs.
    n = 60
    lam = torch.linspace(1.0, 0.1, n, dtype=F64)
    a = torch.diag(lam)
    v0 = torch.zeros(n, 2, dtype=F64)
    v0[:2, 0] = 1.0
    v0[:, 1] = torch.randn(n, generator=_gen(12), dtype=F64)
    theta, used = largest_ritz_magnitudes(lambda x: a @ x, v0, num_matvecs=10,
                                          breakdown=1e-12)
    assert used == 2 + 10
    assert math.isclose(float(theta[0]), 1.0, rel_tol=1e-12)
    # the run that goes on (its vectors now gathered from the state) is the run alone
    alone, _ = largest_ritz_magnitudes(lambda x: a @ x, v0[:, 1:], num_matvecs=10,
                                       breakdown=1e-12)
    assert math.isclose(float(theta[1]), float(alone[0]), rel_tol=1e-12)


@pytest.mark.parametrize("below", [0.05, 0.4])
def test_batched_certificate_keeps_the_bound(always_widen, below):
    # With a large basis the certificate batches shorter runs. PSD mass below tau: far below,
    # it certifies the true count; at 0.4 tau the slack 1 / (1 - eps) leaves the window
    # unclear, and the bracket must still hold.
    n, tau = 400, 1e-6
    lam = torch.cat([torch.linspace(1.0, 1e-3, 120, dtype=F64),
                     torch.full((40,), below * tau, dtype=F64), torch.zeros(n - 160, dtype=F64)])
    p = planted(lam, seed=13)
    res = krylov_rank(p.matmat(), n, tol=tau, block_size=4, max_block_size=32,
                      generator=_gen())
    assert res.rank_low <= 120 <= res.rank_high
    assert res.certified == (below < 0.1)
    if res.certified:
        assert res.rank == 120 and res.error_bound < tau


def test_panel_layout_bounds_the_unused_room():
    dim = 10**6
    for m in (1, 16, 17, 100, 168, 255, 1000, 3000, 5000):
        alloc = engine.allocated_vectors(m, dim)
        assert m <= alloc <= m + min(m / 4 + 16, engine.PANEL_ROWS)
    assert engine.allocated_vectors(50, 40) == 40  # never beyond the dimension


def test_panels_are_never_copied_to_grow():
    n = 300
    p = planted(gapped_spectrum(n, 200, seed=14), seed=14)
    gen = _gen(0)
    state = engine.init_state(n, 8, engine.draw(n, 8, gen, F64, "cpu"), gen, None)
    seen = {}
    for _ in range(20):
        engine.step(state, p.matmat(), None, width=state.pending.shape[1], drop_tol=_tol(state))
        for i, panel in enumerate(state.panels):
            assert seen.setdefault(i, panel.data_ptr()) == panel.data_ptr()
    assert state.size == 160 and len(state.panels) > 1
    assert sum(t.shape[0] for t in state.panels) == engine.allocated_vectors(160, n)


def test_lock_step_survives_operators_that_reuse_or_return_their_storage():
    # The update works in place: an operator that writes every product into one buffer it
    # keeps, or one that returns its input (the identity), must not corrupt the kept vectors.
    n = 80
    p = planted(torch.linspace(0.1, 1.0, n, dtype=F64), seed=13)
    v0 = torch.randn(n, 3, generator=_gen(14), dtype=F64)
    buf = torch.empty(n, 3, dtype=F64)

    def reusing(x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(p.matrix, x, out=buf[:, :x.shape[1]])

    fresh, _ = largest_ritz_magnitudes(p.matmat(), v0, num_matvecs=20)
    reused, _ = largest_ritz_magnitudes(reusing, v0, num_matvecs=20)
    assert torch.equal(fresh, reused)
    runs, _ = engine.start_probes(v0, None)
    kept = runs.v.clone()
    engine.advance_probes(runs, lambda x: x, 3, None)
    # A = I: alpha = 1 and beta = 0 at the first step, and the start vectors are intact
    assert torch.allclose(runs.alphas[0], torch.ones(3, dtype=F64), atol=1e-14)
    assert int(runs.lengths.max()) == 1 and not bool(runs.active.any())
    assert torch.equal(runs.v_prev, kept)
