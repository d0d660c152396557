"""Two processes of `hrank rank --distributed`: a signal seen by one stops both at the same block.

srun forwards SIGUSR1 to every task, but not at the same instant; here only rank 1 gets it.
Both save the same checkpoint and exit 3; rerun, both resume and end with the ranks of a
single-process run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.processes import finish

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--model", "mlp:6,4,3", "--data", "gaussian", "--samples", "10", "--loss", "mse",
        "--method", "sketch", "--block-size", "2", "--kind", "all", "--device", "cpu",
        "--checkpoint-every", "1e9"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(tmp_path: Path, delay: float) -> list[subprocess.Popen]:
    port, procs = _port(), []
    for r in range(2):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_"))}
        env.update(OMP_NUM_THREADS="1", RANK=str(r), WORLD_SIZE="2", LOCAL_RANK=str(r),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), HRANK_DIST_TIMEOUT="60",
                   PYTHONPATH=os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]))
        cmd = [sys.executable, str(ROOT / "tests" / "slurm_utils.py"), "slow-rank", str(delay),
               "--", *ARGS, "--distributed", "--out", str(tmp_path / "r.json"),
               "--checkpoint", str(tmp_path / "run.ckpt")]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    return procs


def test_signal_to_one_process_stops_both_then_both_resume(tmp_path) -> None:
    from scalable_hrank.cli import main

    assert main(["rank", *ARGS, "--out", str(tmp_path / "single.json")]) == 0
    procs = _start(tmp_path, delay=0.3)
    lines: list[str] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # rank 1's output, until it is inside the second kind
        line = procs[1].stdout.readline()
        lines.append(line)
        if "worker: outer block 2" in line:
            break
    procs[1].send_signal(signal.SIGUSR1)
    first = finish(procs, timeout=120)
    assert [rc for rc, _ in first] == [3, 3], (lines, first)
    assert "pre-empted by SIGUSR1" in first[0][1]  # rank 0 never got the signal itself
    assert (tmp_path / "run.ckpt.loss").exists() and (tmp_path / "run.ckpt.outer").exists()
    second = finish(_start(tmp_path, delay=0.0), timeout=120)
    assert [rc for rc, _ in second] == [0, 0], second
    assert "loss: finished earlier" in second[0][1] and "resuming from" in second[0][1]
    got = json.loads((tmp_path / "r.json").read_text())["results"]
    want = json.loads((tmp_path / "single.json").read_text())["results"]
    for kind in ("loss", "outer", "functional"):
        assert (got[kind]["rank"], got[kind]["certified"]) == (want[kind]["rank"], True)
    assert not list(tmp_path.glob("run.ckpt*"))
