import math

import pytest
import torch

from scalable_hrank.linalg import orth
from scalable_hrank.linalg.orth import inner, orthonormalize, project_out

F64 = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _basis(n, m, seed=0, dtype=F64):
    q, _ = torch.linalg.qr(torch.randn(n, m, generator=_gen(seed), dtype=F64))
    return q.to(dtype)


def identity_reduce(t):
    """A one-process 'reduce': exercises the sharded (Gram-based) code path."""
    return t.clone()


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("reduce", [None, identity_reduce])
def test_orthonormal_and_orthogonal_to_basis(dtype, reduce):
    n = 500
    q = _basis(n, 40, dtype=dtype)
    w = torch.randn(n, 8, generator=_gen(1), dtype=dtype)
    w = w + q @ torch.randn(40, 8, generator=_gen(2), dtype=dtype) * 1e3  # mostly in span(Q)
    out = orthonormalize(w, q, reduce=reduce)
    x = out.block
    eps = torch.finfo(dtype).eps
    assert x.shape == (n, 8) and x.dtype == dtype
    assert (x.mT @ x - torch.eye(8, dtype=dtype)).abs().max() < 50 * eps
    assert (q.mT @ x).abs().max() < 50 * eps
    # singular values of the projected block
    pw = w.double() - q.double() @ (q.double().mT @ w.double())
    sv = torch.linalg.svdvals(pw)
    torch.testing.assert_close(out.norms, sv, rtol=1e-3 if dtype != F64 else 1e-8, atol=0)


@pytest.mark.parametrize("reduce", [None, identity_reduce])
def test_dependent_columns_are_dropped(reduce):
    n = 300
    q = _basis(n, 20)
    g = torch.randn(n, 3, generator=_gen(3), dtype=F64)
    w = torch.cat([g, g[:, :1] + 2 * g[:, 1:2], q[:, :2], 1e-13 * g[:, 2:]], dim=1)
    out = orthonormalize(w, q, drop_tol=1e-10, reduce=reduce)
    # rank of the projected block: the 3 Gaussian directions (tiny copy of g2 is dependent)
    assert out.block.shape[1] == 3
    assert out.dropped_norm < 1e-10 * 3
    x = out.block
    assert (x.mT @ x - torch.eye(3, dtype=F64)).abs().max() < 1e-13
    pg = project_out(g, q)
    # the kept block spans the projected Gaussian columns
    assert torch.linalg.matrix_norm(pg - x @ (x.mT @ pg)) < 1e-12 * torch.linalg.matrix_norm(pg)


def test_fill_replaces_dropped_columns():
    n = 100
    q = _basis(n, 10)
    w = torch.cat([q[:, :3], torch.randn(n, 2, generator=_gen(4), dtype=F64)], dim=1)
    out = orthonormalize(w, q, generator=_gen(5), fill=True)
    assert out.block.shape[1] == 5 and out.num_random == 3
    full = torch.cat([q, out.block], dim=1)
    assert (full.mT @ full - torch.eye(15, dtype=F64)).abs().max() < 1e-13


def test_inner_accumulates_in_float64():
    a = torch.randn(5000, 3, generator=_gen(6), dtype=torch.float32)
    b = torch.randn(5000, 4, generator=_gen(7), dtype=torch.float32)
    ref = a.double().mT @ b.double()
    got = inner(a, b, dtype=F64)
    assert got.dtype == F64
    assert (got - ref).abs().max() < 1e-10
    assert torch.equal(inner(a, b, lambda t: 2 * t), 2 * (a.mT @ b))


def test_project_out_twice_is_enough():
    n = 400
    q = _basis(n, 50)
    w = q @ torch.randn(50, 4, generator=_gen(8), dtype=F64) + 1e-9 * torch.randn(
        n, 4, generator=_gen(9), dtype=F64)
    once = project_out(w, q, passes=1)
    twice = project_out(w, q, passes=2)
    assert (q.mT @ twice).abs().max() <= (q.mT @ once).abs().max()
    assert (q.mT @ twice).abs().max() < 1e-20 + 1e-16 * 1e-9 * 100


def test_rejects_bad_shapes():
    with pytest.raises(ValueError, match="shape"):
        orthonormalize(torch.zeros(5, dtype=F64))
    with pytest.raises(ValueError, match="generator"):
        orthonormalize(torch.zeros(5, 2, dtype=F64), fill=True)


def _once_projected(q, w0):
    """The caller's single Gram-Schmidt pass: (w0 - Q C, C^T C) with C = Q^T w0."""
    c = inner(q, w0, dtype=F64)
    w = w0 - q @ c.to(w0.dtype)
    return w, c.mT @ c


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("reduce", [None, identity_reduce])
def test_selective_second_pass_keeps_working_precision(dtype, reduce, monkeypatch):
    # Columns that keep most of their norm through one pass (skip the second) and columns
    # that lose a factor 1e4 (their one-pass leftovers along Q are eps * 1e4 of their norm,
    # so they must get the second pass), in one block.
    n, m = 600, 50
    q = _basis(n, m, dtype=dtype)
    fresh = project_out(torch.randn(n, 6, generator=_gen(7), dtype=dtype), q)
    along = q @ torch.randn(m, 6, generator=_gen(8), dtype=dtype)
    w0 = torch.cat([fresh[:, :3] + 0.1 * along[:, :3], 1e-4 * fresh[:, 3:] + along[:, 3:]], 1)
    w, gram = _once_projected(q, w0)
    eps = torch.finfo(dtype).eps
    widths = []
    real = orth._second_pass

    def counting(x, *args, **kwargs):
        widths.append(x.shape[1])
        return real(x, *args, **kwargs)

    monkeypatch.setattr(orth, "_second_pass", counting)
    one = orthonormalize(w, q, passes=0, removed_gram=gram, reduce=reduce)
    two = orthonormalize(w, q, passes=0, reduce=reduce)  # second pass on every direction
    assert widths == [3, 6]  # only the lossy directions got the second pass
    for out in (one, two):
        x = out.block
        assert x.shape == (n, 6)
        assert (x.mT @ x - torch.eye(6, dtype=dtype)).abs().max() < 50 * eps
        assert (q.mT @ x).abs().max() < 50 * eps
        # the coupling is block^T w, though w itself was not kept
        torch.testing.assert_close(out.coupling, x.double().mT @ w.double(),
                                   atol=50 * eps * float(w.norm()), rtol=0)
    # the block spans the projected input either way
    pw = w.double() - q.double() @ (q.double().mT @ w.double())
    xd = one.block.double()
    assert torch.linalg.matrix_norm(pw - xd @ (xd.mT @ pw)) < 100 * eps * float(pw.norm())


def test_selective_pass_is_needed_for_the_lossy_columns():
    # The same lossy columns without the second pass would sit eps * 1e6 off the basis: the
    # check above is not vacuous.
    n, m = 600, 50
    q = _basis(n, m, dtype=torch.float32)
    fresh = project_out(torch.randn(n, 2, generator=_gen(7), dtype=torch.float32), q)
    w0 = 1e-6 * fresh + q @ torch.randn(m, 2, generator=_gen(8), dtype=torch.float32)
    w, gram = _once_projected(q, w0)
    eps = torch.finfo(torch.float32).eps
    once = w / torch.linalg.vector_norm(w, dim=0)
    assert (q.mT @ once).abs().max() > 1e3 * eps
    x = orthonormalize(w, q, passes=0, removed_gram=gram).block
    assert (q.mT @ x).abs().max() < 50 * eps


@pytest.mark.parametrize("reduce", [None, identity_reduce])
def test_ill_conditioned_block_norms_match_the_svd(reduce):
    # Singular values from 1 down to 1e-17: a Gram matrix alone resolves only ~1e-8 of the
    # largest; the factorization must measure each to about eps of the largest, like an SVD.
    n = 400
    u = _basis(n, 6, seed=4)
    v = _basis(6, 6, seed=5)
    sv = torch.tensor([1.0, 1e-3, 1e-7, 1e-11, 1e-14, 1e-17], dtype=F64)
    w = (u * sv) @ v.mT
    out = orthonormalize(w, None, drop_tol=1e-12, reduce=reduce)
    ref = torch.linalg.svdvals(w)
    torch.testing.assert_close(out.norms, ref, atol=1e-15, rtol=0)
    assert out.block.shape[1] == 4
    assert out.dropped_norm == pytest.approx(math.hypot(1e-14, 1e-17), rel=1e-3, abs=2e-16)
    x = out.block
    assert (x.mT @ x - torch.eye(4, dtype=F64)).abs().max() < 1e-14
    # the kept block spans the four largest directions, each to eps / sigma (as an SVD):
    # 2e-5 for the one at 1e-11
    err = torch.linalg.vector_norm(u[:, :4] - x @ (x.mT @ u[:, :4]), dim=0)
    assert (err < 1e2 * torch.finfo(F64).eps / sv[:4]).all(), err
