"""Helpers for the Slurm tests: find a controller, run hrank, wait for jobs; and a worker.

Run as a script it is a small pre-emptible computation (used by tests/test_slurm.py)::

    python tests/slurm_utils.py --out result.json --checkpoint state.ckpt --steps 12 --delay 0.5

Each step adds a Gaussian draw (from a checkpointed generator) to a vector; on SIGUSR1/SIGTERM it
saves its state and exits 3. A resumed run ends with exactly the vector of an uninterrupted one.

``python tests/slurm_utils.py slow-rank DELAY [KIND:BLOCK] -- <hrank rank arguments>`` runs
``hrank rank`` itself, sleeping DELAY seconds after every solver block and printing
``worker: <kind> block <k>``, so that a test can pre-empt it at a chosen kind. With
KIND:BLOCK it also holds at that block (up to 5 minutes, in the first run of a job only) until
a signal has arrived, so the signal lands there however slowly a loaded slurmd delivers it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from scalable_hrank.checkpoint import fingerprint
from scalable_hrank.preemption import (
    PREEMPTED_EXIT_CODE,
    CheckpointSaver,
    Preempted,
    PreemptionHandler,
)

HRANK = [sys.executable, "-c",
         "import sys; from scalable_hrank.cli import main; sys.exit(main(sys.argv[1:]))"]


def slurm_unavailable_reason() -> str | None:
    """None when a Slurm controller answers and a node is usable, else why not."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "Slurm client tools (sinfo, sbatch) are not installed; run scripts/ci/start_slurm.sh"
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                              timeout=15, check=False)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 15 s (no slurmctld?)"
    states = proc.stdout.split()
    if proc.returncode or not states:
        return f"no Slurm controller answers: {proc.stderr.strip() or 'no nodes'}"
    if not any(s.rstrip("*~#") in ("idle", "mixed", "allocated", "completing") for s in states):
        return f"no usable Slurm node (states {states})"
    return None



def require_slurm() -> None:
    """Skip the calling test without Slurm; fail instead when ``HRANK_REQUIRE_SLURM=1`` (CI)."""
    import pytest

    reason = slurm_unavailable_reason()
    if reason is None:
        return
    if os.environ.get("HRANK_REQUIRE_SLURM") == "1":
        pytest.fail(f"HRANK_REQUIRE_SLURM=1 but {reason}")
    pytest.skip(reason)


def hrank(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the hrank CLI of this checkout in a subprocess."""
    return subprocess.run([*HRANK, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, check=False)


def submit(*args: str, cwd: Path | None = None) -> str:
    """``hrank submit ARGS``; return the job id (fails the test with stderr otherwise)."""
    proc = hrank("submit", *args, cwd=cwd)
    assert proc.returncode == 0, f"hrank submit failed: {proc.stderr}"
    return proc.stdout.strip().splitlines()[-1]


def wait_for_text(path: Path, text: str, *, timeout: float) -> float:
    """Wait until ``text`` appears in ``path``; return the seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if path.exists() and text in path.read_text(errors="replace"):
            return time.monotonic() - t0
        time.sleep(0.1)
    content = path.read_text(errors="replace") if path.exists() else "(no file)"
    msg = f"{text!r} not in {path} after {timeout:.0f}s:\n{content}"
    raise AssertionError(msg)


def signal_until(target: str, path: Path, text: str, *, timeout: float,
                 every: float = 3.0) -> float:
    """Send ``scancel --batch --signal=USR1 target`` until ``text`` appears in ``path``.

    One signal is sent at a time and repeated only if ``text`` has not appeared ``every``
    seconds later: under load slurmd can drop a signal sent while the batch step starts.
    Returns the seconds from the first signal to ``text``.
    """
    t0 = time.monotonic()
    while True:
        subprocess.run(["scancel", "--batch", "--signal=USR1", target], check=False,
                       capture_output=True)
        try:
            wait_for_text(path, text, timeout=every)
            return time.monotonic() - t0
        except AssertionError:
            if time.monotonic() - t0 > timeout:
                raise


def preemptible_loop(out: Path, checkpoint: Path, *, steps: int, delay: float,
                     hold_at: int | None = None) -> int:
    """The worker: see the module docstring. Returns the exit code.

    With ``hold_at``, the first run of a job waits after that step (up to 5 minutes) until a
    signal has arrived, so a test's signal lands mid-run however slowly it is delivered.
    """
    fp = fingerprint([], None, {"steps": steps, "worker": "slurm_utils"})
    with PreemptionHandler() as handler:
        saver = CheckpointSaver(checkpoint, fp, every_seconds=math.inf, handler=handler)
        state = saver.load()
        resumed_at = None if state is None else state["step"]
        if state is None:
            state = {"step": 0, "x": torch.zeros(4, dtype=torch.float64),
                     "gen": torch.Generator().manual_seed(1234)}
        print(f"worker: started at step {state['step']}", flush=True)
        try:
            while state["step"] < steps:
                state["x"] = state["x"] + torch.randn(4, generator=state["gen"],
                                                      dtype=torch.float64)
                state["step"] += 1
                print(f"worker: step {state['step']}", flush=True)
                time.sleep(delay)
                if state["step"] == hold_at and os.environ.get("SLURM_RESTART_COUNT", "0") == "0":
                    _wait_for_signal(handler, timeout=300)
                saver(state)
        except Preempted as exc:
            print(f"worker: {exc}", flush=True)
            return PREEMPTED_EXIT_CODE
    from scalable_hrank._io import atomic_write_text

    atomic_write_text(out, json.dumps({
        "x": state["x"].tolist(), "steps": state["step"], "resumed_at": resumed_at,
        "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0"))}) + "\n")
    print("worker: done", flush=True)
    return 0


def _wait_for_signal(handler: PreemptionHandler | None, timeout: float) -> None:
    """Sleep until ``handler`` (default: the installed SIGUSR1 handler's) has a signal."""
    handler = handler or getattr(signal.getsignal(signal.SIGUSR1), "__self__", None)
    assert handler is not None, "no pre-emption handler installed"
    t0 = time.monotonic()
    while not handler.signalled and time.monotonic() - t0 < timeout:
        time.sleep(0.05)


def slow_rank(delay: float, hold: str | None, argv: list[str]) -> int:
    """``hrank rank ARGV`` with a pause after each solver block (see the module docstring)."""
    from scalable_hrank.cli import main
    from scalable_hrank.cli import rank as rank_cli

    real = rank_cli.estimate_rank

    def slow(model, loss, data, kind, **kw):
        inner, count = kw.get("on_block"), [0]

        def on_block(state):
            count[0] += 1
            print(f"worker: {kind} block {count[0]}", flush=True)
            time.sleep(delay)
            if hold == f"{kind}:{count[0]}" and os.environ.get("SLURM_RESTART_COUNT", "0") == "0":
                _wait_for_signal(None, timeout=300)
            if inner is not None:
                inner(state)

        return real(model, loss, data, kind, **{**kw, "on_block": on_block})

    rank_cli.estimate_rank = slow
    return main(["rank", *argv])


if __name__ == "__main__":
    if sys.argv[1:2] == ["slow-rank"]:
        split = sys.argv.index("--")
        sys.exit(slow_rank(float(sys.argv[2]), (sys.argv[3:split] or [None])[0],
                           sys.argv[split + 1:]))
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--delay", type=float, default=0.5)
    p.add_argument("--hold-at", type=int, default=None)
    a = p.parse_args()
    sys.exit(preemptible_loop(a.out, a.checkpoint, steps=a.steps, delay=a.delay,
                              hold_at=a.hold_at))
