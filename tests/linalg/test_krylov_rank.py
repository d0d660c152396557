import io
import math

import pytest
import torch

from scalable_hrank.linalg import KrylovState, krylov_rank, lanczos, ritz_pairs
from scalable_hrank.linalg.krylov_rank import certificate_steps_for

from .planted import gapped_spectrum, geometric_spectrum, planted

F64 = torch.float64
SLACK = 8  # products beyond r + 2 b + certificate_steps allowed by the budget tests


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


CASES = {
    # name: (n, r, spectrum kwargs, noise)
    "indefinite": (300, 40, {"indefinite": True}, 0.0),
    "psd": (300, 40, {"indefinite": False}, 0.0),
    "noise_floor": (400, 100, {"indefinite": True}, 1e-10),
    "large_r": (500, 300, {"indefinite": True}, 0.0),
}


@pytest.mark.parametrize("block_size", [1, 8])
@pytest.mark.parametrize("case", sorted(CASES))
def test_gapped_rank_is_exact_and_certified(case, block_size):
    n, r, kw, noise = CASES[case]
    p = planted(gapped_spectrum(n, r, seed=1, **kw), seed=1, noise=noise)
    res = krylov_rank(p.matmat(), n, rtol=1e-6, block_size=block_size, generator=_gen())
    assert res.certified
    assert res.rank == res.rank_low == res.rank_high == p.rank(res.tol) == r
    assert res.num_matvecs <= r + 2 * block_size + 40 + SLACK
    assert res.error_bound < res.tol
    lam = p.eigenvalues
    assert res.inertia == (int((lam > res.tol).sum()), int((lam < -res.tol).sum()))
    sigma = float(torch.linalg.matrix_norm(p.matrix, 2))
    assert abs(res.sigma_max_estimate - sigma) < 1e-8 * sigma
    assert res.ritz_values.dtype == F64 and res.ritz_values.device.type == "cpu"
    assert torch.all(res.ritz_values[:-1] >= res.ritz_values[1:])


@pytest.mark.parametrize("block_size", [1, 4])
def test_products_counted_exactly(block_size):
    n, r = 200, 30
    p = planted(gapped_spectrum(n, r, seed=2), seed=2)
    mm = p.matmat()
    res = krylov_rank(mm, n, tol=1e-6, block_size=block_size, generator=_gen())
    assert sum(mm.calls) == res.num_matvecs
    assert res.tol == 1e-6


def test_rank_zero_and_full_rank():
    n = 120
    zero = planted(torch.zeros(n, dtype=F64))
    res = krylov_rank(zero.matmat(), n, block_size=8, generator=_gen())
    assert res.rank == 0 and res.certified and res.num_matvecs <= 8 + 40
    full = planted(torch.linspace(0.5, 2.0, n, dtype=F64) * (-1) ** torch.arange(n), seed=3)
    res = krylov_rank(full.matmat(), n, rtol=1e-6, block_size=8, generator=_gen())
    assert res.rank == n and res.certified and res.num_matvecs == n
    assert res.inertia == (n // 2, n // 2)


def test_float32_with_noise_floor_gives_float64_count():
    n, r = 400, 60
    p = planted(gapped_spectrum(n, r, seed=4), seed=4, noise=1e-8)
    ref = krylov_rank(p.matmat(F64), n, rtol=1e-6, generator=_gen())
    res = krylov_rank(p.matmat(torch.float32), n, rtol=1e-6, generator=_gen(),
                      dtype=torch.float32)
    assert ref.certified and res.certified
    assert res.rank == ref.rank == p.rank(ref.tol) == r
    assert res.noise_floor > ref.noise_floor
    assert res.noise_floor < 1e-5


@pytest.mark.parametrize("budget", [10, 40, 90, 105])
def test_tiny_budget_never_overcounts(budget):
    n, r = 300, 80
    p = planted(gapped_spectrum(n, r, seed=5), seed=5)
    res = krylov_rank(p.matmat(), n, rtol=1e-8, block_size=8, max_matvecs=budget,
                      generator=_gen())
    true = p.rank(res.tol)
    assert res.num_matvecs <= budget
    assert not res.certified
    assert res.rank == res.rank_low <= true <= res.rank_high
    assert res.rank <= res.basis_size


def test_no_gap_gives_valid_bracket():
    n = 200
    p = planted(geometric_spectrum(n, ratio=0.85), seed=6, noise=1e-9)
    for budget in (60, 150, None):
        res = krylov_rank(p.matmat(), n, rtol=1e-5, block_size=8, max_matvecs=budget,
                          generator=_gen())
        true = p.rank(res.tol)
        assert res.rank_low <= true <= res.rank_high
        if res.certified:
            assert res.rank == true


@pytest.mark.parametrize("block_size, mult", [(1, 3), (2, 5), (4, 9)])
def test_multiplicity_beyond_block_size_is_caught(block_size, mult):
    n = 150
    lam = torch.cat([torch.ones(mult, dtype=F64), torch.tensor([0.5, 0.3, -0.2], dtype=F64),
                     torch.zeros(n - mult - 3, dtype=F64)])
    p = planted(lam, seed=7)
    true = mult + 3
    # Single-vector Lanczos sees each distinct eigenvalue once: after (4 distinct nonzero
    # + the null atom) steps the Krylov space is invariant and holds only 4 of them ...
    dec = lanczos(p.matmat(), torch.randn(n, generator=_gen(8), dtype=F64), num_matvecs=5)
    assert float(dec.betas[-1]) < 1e-10
    seen = int((ritz_pairs(dec).values.abs() > 1e-8).sum())
    assert seen == 4 < true
    # ... a fresh random block after the collapse finds the missing copies before any
    # certificate is spent, so no certificate fails.
    events = []
    res = krylov_rank(p.matmat(), n, rtol=1e-8, block_size=block_size, generator=_gen(),
                      on_block=lambda s: events.append(s.extra.get("multiplicity", False)))
    assert res.certified and res.rank == true
    assert not any(events)
    assert res.num_matvecs <= res.basis_size + block_size + certificate_steps_for(n)
    assert res.num_matvecs <= 2 * (true + 2 * block_size + 40) + 10 * block_size


def test_certificate_fails_on_missed_directions():
    # A tiny-budget run cannot certify even when it happens to see a rank gap in its Ritz values.
    n = 200
    lam = torch.cat([torch.ones(20, dtype=F64), torch.zeros(n - 20, dtype=F64)])
    p = planted(lam, seed=9)
    res = krylov_rank(p.matmat(), n, rtol=1e-8, block_size=4, max_matvecs=60,
                      generator=_gen())
    assert not res.certified and res.rank < 20 <= res.rank_high


def _fields(res):
    return {k: v for k, v in vars(res).items() if k != "ritz_values"}


@pytest.mark.parametrize("stop_after", [1, 3, 6])
@pytest.mark.parametrize("spectrum", ["gapped", "multiplicity"])
def test_resume_is_bit_identical(stop_after, spectrum):
    n = 200
    if spectrum == "gapped":
        lam = gapped_spectrum(n, 50, seed=10)
        bs = 8
    else:
        lam = torch.cat([torch.ones(6, dtype=F64), torch.linspace(0.1, 0.5, 10, dtype=F64),
                         torch.zeros(n - 16, dtype=F64)])
        bs = 2
    p = planted(lam, seed=10, noise=1e-12)
    full = krylov_rank(p.matmat(), n, rtol=1e-8, block_size=bs, generator=_gen(3))
    saved = {}

    class Stop(Exception):
        pass

    def hook(state):
        if state.num_blocks == stop_after:
            buf = io.BytesIO()
            torch.save(state.snapshot(), buf)
            saved["state"] = buf.getvalue()
            raise Stop

    with pytest.raises(Stop):
        krylov_rank(p.matmat(), n, rtol=1e-8, block_size=bs, generator=_gen(3), on_block=hook)
    state = torch.load(io.BytesIO(saved["state"]), weights_only=False)
    assert isinstance(state, KrylovState) and state.num_blocks == stop_after
    resumed = krylov_rank(p.matmat(), n, rtol=1e-8, block_size=bs, generator=_gen(12345),
                          state=state)
    assert torch.equal(resumed.ritz_values, full.ritz_values)
    assert _fields(resumed) == _fields(full)
    assert full.certified


def test_reproducible_and_seed_dependent():
    n = 150
    p = planted(gapped_spectrum(n, 30, seed=11), seed=11, noise=1e-12)
    a = krylov_rank(p.matmat(), n, rtol=1e-8, generator=_gen(1))
    b = krylov_rank(p.matmat(), n, rtol=1e-8, generator=_gen(1))
    c = krylov_rank(p.matmat(), n, rtol=1e-8, generator=_gen(2))
    assert torch.equal(a.ritz_values, b.ritz_values)
    assert not torch.equal(a.ritz_values, c.ritz_values) and a.rank == c.rank


def test_invalid_arguments():
    p = planted(torch.ones(5, dtype=F64))
    with pytest.raises(TypeError):
        krylov_rank(p.matmat(), 5, generator=0)
    with pytest.raises(ValueError):
        krylov_rank(p.matmat(), 5, tol=-1.0, generator=_gen())
    with pytest.raises(ValueError):
        krylov_rank(p.matmat(), 5, block_size=0, generator=_gen())
    bad = krylov_rank(p.matmat(), 5, generator=_gen(), block_size=2)
    assert bad.rank == 5 and math.isfinite(bad.error_bound)
    with pytest.raises(ValueError, match="matmat"):
        krylov_rank(lambda x: x[:, :1], 5, generator=_gen())


@pytest.mark.parametrize("block_size", [1, 8])
def test_basis_stays_orthonormal_to_working_precision(block_size):
    # A long run with the selective second pass (most residual directions skip it): the
    # basis the certificate relies on must stay orthonormal to working precision, and the
    # count must still be the exact one. An indefinite spectrum without a gap over 10
    # decades, then a gap down to zero.
    n, r = 900, 500
    gen = _gen(21)
    mags = torch.logspace(0, -10, r, dtype=F64)
    signs = torch.where(torch.rand(r, generator=gen, dtype=F64) < 0.3, -1.0, 1.0)
    lam = torch.cat([signs * mags, torch.zeros(n - r, dtype=F64)])
    p = planted(lam, seed=21)
    last = {}
    res = krylov_rank(p.matmat(), n, tol=1e-11, block_size=block_size, generator=_gen(),
                      on_block=lambda s: last.update(state=s))
    q = last["state"].basis
    assert q.shape[1] >= r
    assert float((q.mT @ q - torch.eye(q.shape[1], dtype=F64)).abs().max()) < 1e-13
    assert res.certified and res.rank == r
