"""Data-parallel estimate_rank / eigenvalues with 2 gloo processes equal the single process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("loss", "outer", "functional")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(out: Path, mode: str, size: int) -> None:
    port = _port()
    procs = []
    for r in range(size):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_"))}
        env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
        if mode != "single":
            env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(r),
                       WORLD_SIZE=str(size), LOCAL_RANK=str(r))
        procs.append(subprocess.Popen([sys.executable, str(ROOT / "tests/dist_rank_worker.py"),
                                       str(out), mode], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    try:
        outputs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0] * size, outputs


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("single")
    _run(out, "single", 1)
    return json.loads((out / "single.json").read_text())


@pytest.mark.parametrize("mode", ["replicated", "sharded", "user"])
def test_two_processes_equal_single_process(tmp_path, single, mode) -> None:
    _run(tmp_path, mode, 2)
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in range(2)]
    for kind in KINDS:
        ref = single[kind]
        assert ref["certified"]
        ref_product = torch.tensor(ref["product"])
        for doc in ranks:
            got = doc[kind]
            err = (torch.tensor(got["product"]) - ref_product).norm() / ref_product.norm()
            assert err < 1e-12, (kind, float(err))
            assert got["rank"] == ref["rank"] and got["certified"], kind
            assert torch.allclose(torch.tensor(got["eigenvalues"]),
                                  torch.tensor(ref["eigenvalues"]), rtol=1e-10)
            if mode == "sharded":  # each process holds only its rows of the basis
                assert 0 < got["sharded_basis"]["rows"] < got["n"]
            else:
                assert got["sharded_basis"] is None
        # every process returns the very same result
        assert ranks[0][kind]["ritz"] == ranks[1][kind]["ritz"]
        assert ranks[0][kind]["matvecs"] == ranks[1][kind]["matvecs"]
