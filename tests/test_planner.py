"""Tests of scalable_hrank.planner: memory estimates, method choice, refusals, precision."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from scalable_hrank.density import DEFAULT_DENSITY_MATVECS, DEFAULT_PROBES
from scalable_hrank.estimators.density import density_vectors
from scalable_hrank.exact import DENSE_COPIES
from scalable_hrank.linalg.krylov_rank import memory_bytes
from scalable_hrank.planner import (
    PlanError,
    available_memory,
    format_bytes,
    measure_activation_bytes,
    plan,
    product_dtype,
    tf32_disabled,
)

MiB = 2**20
GiB = 2**30


def mlp(dtype=torch.float32):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5)).to(dtype)


def batch(dtype=torch.float32):
    return torch.randn(4, 10, dtype=dtype), torch.randint(5, (4,))


def test_measure_activation_bytes_counts_saved_tensors_once():
    # addmm saves the input (4x10) for the weight gradient; ReLU saves its output (4x20),
    # which the second addmm saves again (same storage): 4 * (10 + 20) floats.
    assert measure_activation_bytes(mlp(), batch()) == 4 * 4 * (10 + 20)


def test_auto_picks_exact_for_small_n():
    p = plan(mlp(), 325, batch(), "auto", torch.float64, "cpu", memory_bytes=64 * MiB)
    assert p.method == "exact" and p.storage_bytes == DENSE_COPIES * 8 * 325**2
    assert p.total_bytes <= p.available_bytes and p.expected_products == 325
    assert "auto chose exact" in p.notes
    assert p.to_dict()["method"] == "exact" and "exact" in p.summary()


def test_auto_picks_sketch_then_density():
    n = 10**6
    p = plan(mlp(), n, batch(), "auto", torch.float32, "cpu", memory_bytes=320 * MiB,
             activation_bytes=MiB)
    # Room: 320 MiB - activations - model -> about 82 float32 vectors of 1e6. The sketch's
    # peak (krylov_rank.memory_bytes, measured within 20% of the real one) holds the basis in
    # panels plus a few workspace blocks: at block 8 the workspace leaves room for only a
    # small basis, at block 1 for the most. Nothing holds every rank, so the planner takes the
    # width whose basis holds the most. Density (5 vectors per probe even without deflation,
    # 80 in all, plus the quadrature's workspace) does not fit.
    assert p.method == "sketch" and p.block_size == 1

    def cap(block: int) -> int:
        room = 320 * MiB - p.model_bytes - p.activation_bytes * (2 + block)
        return max(r for r in range(1, 200) if memory_bytes(n, r, block, 4) <= room)

    assert p.max_rank == cap(1) == max(cap(b) for b in (8, 4, 2, 1)) > cap(8)
    assert p.storage_bytes == memory_bytes(n, p.max_rank, 1, 4)
    assert any("block size lowered to 1" in note for note in p.notes)
    assert any("density does not fit either" in note for note in p.notes)
    # with room for a density count, auto never takes a capped sketch (only a bound)
    p = plan(mlp(), n, batch(), "auto", torch.float32, "cpu", memory_bytes=GiB,
             activation_bytes=MiB)
    # 1 GiB holds about 250 float32 vectors of 1e6: deflating 8 pairs (a basis of 128 in panels,
    # 1.25 * 128 + 16 + 3 * 8 + 8 = 208 vectors) fits, 16 (1.25 * 192 + 16 + 24 + 16 = 296) not
    assert p.method == "density" and p.deflation == 8
    quadrature = 8 * (DEFAULT_DENSITY_MATVECS // DEFAULT_PROBES) ** 2
    assert p.storage_bytes == density_vectors(n, DEFAULT_PROBES, 8) * n * 4 + quadrature
    assert any("deflation lowered from 32 to 8" in note for note in p.notes)
    p = plan(mlp(), n, batch(), "auto", torch.float32, "cpu", memory_bytes=GiB,
             activation_bytes=MiB, expected_rank=500)
    assert p.method == "density"


def test_density_plan_counts_deflation_basis_probes_and_quadrature():
    n = 1740
    p = plan(mlp(), n, batch(), "density", torch.float64, "cpu", memory_bytes=GiB,
             activation_bytes=MiB, probes=12, deflation=32, density_matvecs=16000)
    # the deflation's block Lanczos basis dominates: m = min(n, 8 d + 64), held in
    # panels (at most 1.25 m + 16 allocated), plus 3 blocks of 8 and the d kept vectors
    d = min(32, n // 10)
    assert density_vectors(n, 12, d) == max(math.ceil(1.25 * (8 * d + 64)) + 16 + 24 + d,
                                            d + 8 * 12)
    assert p.storage_bytes == density_vectors(n, 12, 32) * n * 8 + 8 * (16000 // 12) ** 2
    assert p.activation_bytes == MiB and p.product_bytes == MiB * (2 + 12)


def test_block_size_lowered_to_fit():
    n = 10**6
    p = plan(mlp(), n, batch(), "sketch", torch.float32, "cpu", memory_bytes=100 * MiB,
             activation_bytes=MiB, expected_rank=8, block_size=8)
    assert p.block_size < 8 and any("lowered" in s for s in p.notes)
    assert p.total_bytes <= 100 * MiB


def test_refuses_with_numbers_and_fixes():
    with pytest.raises(PlanError) as info:
        plan(mlp(), 10**7, batch(), "exact", torch.float64, "cpu", memory_bytes=MiB)
    msg = str(info.value)
    assert "does not fit in 1.00 MiB" in msg and "n = 10,000,000" in msg
    assert "--params" in msg and "density" in msg
    assert isinstance(info.value, ValueError) and info.value.available == MiB
    assert info.value.needed > MiB


def test_bad_arguments():
    with pytest.raises(ValueError, match="method"):
        plan(mlp(), 10, batch(), "svd")
    with pytest.raises(ValueError, match=">= 1"):
        plan(mlp(), 0, batch())


def test_low_precision_upcast_and_budget():
    m = mlp(torch.bfloat16)
    p = plan(m, 325, batch(torch.bfloat16), "auto", None, "cpu", memory_bytes=64 * MiB)
    assert p.dtype == "torch.float32" and not p.low_precision
    assert any("upcast" in s for s in p.notes)
    p = plan(m, 325, batch(torch.bfloat16), "auto", None, "cpu", memory_bytes=64 * MiB,
             allow_low_precision=True)
    assert p.dtype == "torch.bfloat16" and p.low_precision
    assert p.error_budget == pytest.approx(10 * torch.finfo(torch.bfloat16).eps)
    with pytest.raises(ValueError, match="allow_low_precision"):
        product_dtype(torch.float32, torch.float16)
    assert product_dtype(torch.float64)[0] == torch.float64


def test_tf32_disabled_restores():
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with tf32_disabled():
            assert not torch.backends.cuda.matmul.allow_tf32
            assert not torch.backends.cudnn.allow_tf32
            assert torch.get_float32_matmul_precision() == "highest"
        assert torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False


def test_available_memory_and_format():
    assert available_memory("cpu") > 0
    assert format_bytes(3 * 2**30) == "3.00 GiB" and format_bytes(12) == "12 B"
