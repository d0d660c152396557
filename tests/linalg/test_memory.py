"""The sketch's peak memory against the estimate the planner uses (fresh subprocess)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import PEAK_MEMORY_ENV

CHILD = r'''
import json, os, sys
import torch
torch.set_num_threads(1)
from scalable_hrank.linalg.krylov_rank import krylov_rank, memory_bytes

r, reps = int(sys.argv[1]), int(sys.argv[2])
n = r * reps
g = torch.Generator().manual_seed(0)
q, _ = torch.linalg.qr(torch.randn(r, r, generator=g, dtype=torch.float64))
m = (q * torch.logspace(0, -3, r, dtype=torch.float64)) @ q.T
u = torch.randn(reps, generator=g, dtype=torch.float64)
u /= u.norm()
buf = torch.empty(64, n, dtype=torch.float64)  # the operator's output, allocated up front

def mm(x):  # kron(M, u u^T): rank r; no n-sized temporaries, so the peak is the solver's
    k = x.shape[1]
    rows = x.mT if x.mT.is_contiguous() else x.mT.contiguous()
    t = torch.einsum("kia,a->ki", rows.reshape(k, r, reps), u)
    out = buf[:k]
    torch.mul((t @ m.T)[:, :, None], u, out=out.view(k, r, reps))
    return out.mT  # column-major (n, k), as the solver's blocks

def hwm():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))

buf.zero_()
mm(torch.randn(8, n, dtype=torch.float64).mT)
# every code path once on a small problem first: the library pages a first call touches
# (LAPACK kernels, about 8 MB here) belong to the process, not to the solve, and do not grow
# with n
qs, _ = torch.linalg.qr(torch.randn(300, 20, generator=g, dtype=torch.float64))
krylov_rank(lambda x: qs @ (qs.T @ x), 300, rtol=1e-8, block_size=8,
            generator=torch.Generator().manual_seed(2))
with open("/proc/self/statm") as f:
    before = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
with open("/proc/self/clear_refs", "w") as f:  # reset the peak to the current resident set
    f.write("5")
res = krylov_rank(mm, n, rtol=1e-8, block_size=8, generator=torch.Generator().manual_seed(1))
peak = hwm()
print(json.dumps({"rank": res.rank, "certified": res.certified, "basis": res.basis_size,
                  "peak": peak - before, "predicted": memory_bytes(n, r, 8, 8)}))
'''


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize(("r", "reps", "block"), [
    # n = 120,000: a basis of about 170 vectors, 160 MB, blocks of 8; the basis is beyond
    # the caches, so the certificate batches its runs (its largest workspace)
    (150, 800, 8),
    (300, 334, 40),  # n = 100,200: about 350 vectors, 280 MB, blocks widened to 40
])
def test_peak_memory_matches_the_planner_estimate(r, reps, block):
    env = {**os.environ, **PEAK_MEMORY_ENV}
    out = subprocess.run([sys.executable, "-c", CHILD, str(r), str(reps)], env=env,
                         capture_output=True, text=True, check=True, timeout=300)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["certified"] and got["rank"] == r
    n = r * reps
    basis = got["basis"] * n * 8
    assert got["peak"] >= basis  # the measurement sees at least the basis
    assert abs(got["peak"] - got["predicted"]) <= 0.2 * got["predicted"], got
    # at most 1.2x the basis plus one block of the widest width (measured: 1.22x the basis
    # against 1.25 allowed with blocks of 8, 1.12x against 1.31 widened)
    assert got["peak"] <= 1.2 * basis + block * n * 8, (got["peak"] / basis, got)
