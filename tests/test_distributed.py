"""torch.distributed helpers (scalable_hrank.distributed), with 2 gloo processes on CPU."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from scalable_hrank.distributed import (
    ShardedMatMat,
    World,
    all_reduce_sum,
    env_from_slurm,
    init_from_env,
    is_distributed,
    shard,
    sharded_reduce,
    split_sizes,
    world,
)
from tests.processes import finish

SRC = Path(__file__).resolve().parents[1] / "src"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp_path: Path, extra_args=(), *, slurm_vars: bool = False, size: int = 2):
    """Start ``size`` selfcheck processes on 127.0.0.1; return the Popen objects."""
    port = _free_port()
    procs = []
    for r in range(size):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_"))}
        env.update(OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   PYTHONPATH=os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]))
        if slurm_vars:
            env.update(SLURM_PROCID=str(r), SLURM_STEP_NUM_TASKS=str(size), SLURM_STEP_ID="0",
                       SLURM_NTASKS=str(size), SLURM_LOCALID=str(r), SLURM_JOB_ID="1")
        else:
            env.update(RANK=str(r), WORLD_SIZE=str(size), LOCAL_RANK=str(r))
        cmd = [sys.executable, "-m", "scalable_hrank.distributed.selfcheck",
               "--out", str(tmp_path / "report.json"), *extra_args]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    return procs


@pytest.mark.parametrize("slurm_vars", [False, True], ids=["torchrun-env", "slurm-env"])
def test_two_processes_all_reduce_gram_and_sharded_matmat(tmp_path, slurm_vars):
    results = finish(_launch(tmp_path, slurm_vars=slurm_vars), timeout=90)
    assert [rc for rc, _ in results] == [0, 0], results
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["world"] == 2 and report["backend"] == "gloo"
    assert report["all_reduce"] == 3.0  # 1 + 2
    assert report["gram_error"] < 1e-10  # sharded inner products == unsharded
    assert report["matmat_error"] < 1e-10  # ShardedMatMat == full product
    assert report["local_rows"] == 19  # 37 rows: 19 + 18
    # linalg.krylov_rank with the basis sharded by rows (ShardedMatMat + sharded_reduce)
    assert report["krylov_rank"] == report["krylov_rank_expected"] == 9
    # the production path: data split by shard(), estimate_rank with both basis layouts,
    # against the formula ranks of a linear network (H_L 39, H_O 24, H_F 24 of P = 44)
    prod = report["production"]
    assert set(prod) == {f"{k}/{lay}" for k in ("loss", "outer", "functional")
                         for lay in ("replicated", "sharded")}
    assert [prod[f"{k}/sharded"]["expected"] for k in ("loss", "outer", "functional")] == [
        39, 24, 24]
    assert all(r["ok"] and r["rank"] == r["expected"] for r in prod.values()), prod
    assert prod["loss/sharded"]["rows"] == 22 and prod["loss/replicated"]["rows"] == 44


def test_dead_peer_makes_survivor_fail_fast(tmp_path):
    t0 = time.monotonic()
    results = finish(_launch(tmp_path, ["--timeout", "5", "--die-rank", "1"]), timeout=60)
    elapsed = time.monotonic() - t0
    assert results[1][0] == 0  # the peer that vanished
    assert results[0][0] != 0 and "failed after" in results[0][1], results[0][1]
    assert elapsed < 40
    assert not (tmp_path / "report.json").exists()


def test_hung_peer_makes_survivor_fail_within_timeout(tmp_path):
    procs = _launch(tmp_path, ["--timeout", "2", "--hang-rank", "1"])
    try:
        t0 = time.monotonic()
        text, _ = procs[0].communicate(timeout=60)
        elapsed = time.monotonic() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()
    assert procs[0].returncode != 0
    assert "Timed out" in text or "timeout" in text.lower(), text
    assert elapsed < 40


def test_single_process_defaults(monkeypatch):
    for key in list(os.environ):
        if key.startswith(("SLURM_", "RANK", "WORLD_SIZE")):
            monkeypatch.delenv(key)
    assert not is_distributed() and world() == World()
    assert init_from_env() == World(0, 1, 0, None, "cpu")
    t = torch.ones(3)
    assert all_reduce_sum(t) is t
    assert sharded_reduce() is None
    a = torch.randn(5, 5, generator=torch.Generator().manual_seed(0))
    op = ShardedMatMat(lambda v: a @ v, 5)
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(1))
    assert op.n_local == 5 and torch.equal(op(x), a @ x)


def test_split_sizes_and_slices():
    assert split_sizes(10, 3) == [4, 3, 3]
    assert split_sizes(2, 4) == [1, 1, 0, 0]
    ops = [ShardedMatMat(lambda v: v, 10, rank=r, world=3) for r in range(3)]
    assert [(o.offset, o.n_local) for o in ops] == [(0, 4), (4, 3), (7, 3)]
    full = torch.arange(10.0)
    assert torch.equal(torch.cat([o.local(full) for o in ops]), full)


def test_shard_samples_and_batches_cover_data_once():
    x = torch.arange(14.0).reshape(7, 2)
    y = torch.arange(7)
    parts = [shard((x, y), r, 3) for r in range(3)]  # a pair: split samples
    assert [len(p) for p in parts] == [1, 1, 1]
    assert torch.equal(torch.cat([p[0][1] for p in parts]), y)
    assert [p[0][0].shape[0] for p in parts] == [3, 2, 2]
    # mapping inputs are split too
    mparts = [shard(({"a": x}, y), r, 2, by="sample") for r in range(2)]
    assert torch.equal(torch.cat([p[0][0]["a"] for p in mparts]), x)
    # an iterable of batches: round-robin, deterministic
    batches = [(x[i:i + 1], y[i:i + 1]) for i in range(7)]
    got = [shard(batches, r, 3) for r in range(3)]
    assert [[int(b[1]) for b in g] for g in got] == [[0, 3, 6], [1, 4], [2, 5]]
    assert [[int(b[1]) for b in g] for g in got] == [[int(b[1]) for b in shard(batches, r, 3)]
                                                     for r in range(3)]
    # fewer batches than processes: auto falls back to splitting samples
    two = [(x[:4], y[:4]), (x[4:], y[4:])]
    got = [shard(two, r, 3) for r in range(3)]
    assert sum(int(b[1].numel()) for g in got for b in g) == 7
    with pytest.raises(ValueError, match="rank must be"):
        shard(two, 3, 3)
    with pytest.raises(ValueError, match="by must be"):
        shard(two, 0, 3, by="rows")


def test_env_from_slurm_expands_nodelist(tmp_path, monkeypatch):
    fake = tmp_path / "scontrol"
    fake.write_text("#!/bin/sh\n[ \"$1 $2\" = 'show hostnames' ] && printf 'gpu07\\ngpu08\\n'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    env = {"SLURM_PROCID": "3", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "8",
           "SLURM_NTASKS": "16", "SLURM_LOCALID": "1",
           "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "123456"}
    assert env_from_slurm(env) == {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1",
                                   "MASTER_ADDR": "gpu07",
                                   "MASTER_PORT": str(15000 + 123456 % 20000)}
    env["MASTER_ADDR"], env["MASTER_PORT"] = "head", "29400"
    assert env_from_slurm(env)["MASTER_ADDR"] == "head"
    assert env_from_slurm({}) == {}
    # the batch script of a 2-task job is one process (srun starts the tasks)
    assert env_from_slurm({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"})["WORLD_SIZE"] == "1"
    assert env_from_slurm({"SLURM_PROCID": "0"}) == {"RANK": "0", "WORLD_SIZE": "1",
                                                     "LOCAL_RANK": "0"}
