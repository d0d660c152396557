"""End-to-end Slurm tests: the project's templates and CLI under a real Slurm.

Start one with ``scripts/ci/start_slurm.sh`` (root; see docs/cluster.md). Without a controller
these tests skip, unless ``HRANK_REQUIRE_SLURM=1`` (CI), where they fail instead.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scalable_hrank.distributed import slurm  # noqa: E402
from slurm_utils import (  # noqa: E402
    hrank,
    preemptible_loop,
    require_slurm,
    signal_until,
    submit,
    wait_for_text,
)

pytestmark = pytest.mark.slurm
WORKER = Path(__file__).resolve().parent / "slurm_utils.py"
CPU = ["--gpus", "0", "--cpus-per-task", "1", "--time", "00:05:00"]
RANK_ARGS = ["--model", "mlp:3,2,2", "--data", "gaussian", "--samples", "5", "--loss", "mse",
             "--kind", "loss", "--method", "sketch"]


@pytest.fixture(scope="module", autouse=True)
def _need_slurm():
    require_slurm()


def _state(recs):
    return [(r.get("JobState"), r.get("ExitCode")) for r in recs]


def _sweep_file(path: Path, **extra) -> Path:
    lines = ['[sweep]', 'name = "ci"', "input_dim = 3", "output_dim = 2", "num_samples = 5",
             "width = [2, 3]", "depth = 1", 'activation = ["linear", "tanh"]',
             *(f"{k} = {json.dumps(v)}" for k, v in extra.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def _exact_rank(settings) -> int:
    import scalable_hrank as hr
    from scalable_hrank.sweep import build_problem

    model, data = build_problem(settings)
    return hr.exact_rank(model, settings["loss"], data, settings["kind"]).rank


def test_array_sweep_of_4_tasks_matches_exact_ranks(tmp_path):
    cfg = _sweep_file(tmp_path / "sweep.toml", method="sketch", compare_exact=True)
    out = tmp_path / "out"
    t0 = time.monotonic()
    job = submit("sweep", str(cfg), "--out", str(out), *CPU)
    recs = slurm.wait(job, timeout=150)
    elapsed = time.monotonic() - t0
    assert len(recs) == 4 and _state(recs) == [("COMPLETED", "0:0")] * 4, _state(recs)
    proc = hrank("collect", out)
    assert proc.returncode == 0, proc.stderr
    table = json.loads((out / "results.json").read_text())
    from scalable_hrank.sweep import load_config

    config = load_config(cfg)
    for row in table["rows"]:
        assert row["status"] == "ok"
        assert row["rank"] == row["exact_rank"] == _exact_rank(config.task(row["task"]))
    assert (out / "sweep.json").exists() and json.loads((out / "sweep.json").read_text())[
        "job_id"] == job
    assert len(list((out / "logs").glob("*.out"))) == 4
    print(f"4-task array: {elapsed:.1f}s from submit to all done")


def test_rank_jobs_single_gpu_and_srun_two_tasks_match_exact(tmp_path):
    """`hrank submit rank` twice, side by side, against the dense exact rank.

    One process with a (fake) GPU through the rank.sbatch template, and srun -n 2
    `hrank rank --distributed` through distributed.sbatch.
    """
    pytest.importorskip("scalable_hrank.cli.rank", reason="`hrank rank` not available yet")
    helptext = hrank("rank", "--help").stdout
    unknown = [a for a in RANK_ARGS if a.startswith("--") and a not in helptext]
    assert not unknown, f"update RANK_ARGS in tests/test_slurm.py: {unknown} not in hrank rank"
    single, dist = tmp_path / "single", tmp_path / "dist"
    # the CI's GPUs are fake (no CUDA): the job's default device, cuda, would stop it (see
    # test_gpu_job_without_cuda_stops_with_exit_2); auto falls back to the CPU
    gpu = ["--gpus", "1", *CPU[2:], "--env", "HRANK_DEVICE=auto"]
    job_s = submit("rank", *gpu, "--output", f"{single}.out", "--chdir", str(tmp_path),
                   "--", *RANK_ARGS, "--out", f"{single}.json")
    job_d = submit("rank", "--nodes", "1", "--ntasks-per-node", "2", *CPU,
                   "--output", f"{dist}.out", "--chdir", str(tmp_path),
                   "--env", "HRANK_DIST_TIMEOUT=60", "--", *RANK_ARGS, "--out", f"{dist}.json")
    ref = tmp_path / "exact.json"
    proc = hrank("rank", *[a if a != "sketch" else "exact" for a in RANK_ARGS], "--out", str(ref))
    assert proc.returncode == 0, proc.stderr
    exact = json.loads(ref.read_text())["rank"]
    for job, base in ((job_s, single), (job_d, dist)):
        recs = slurm.wait(job, timeout=120)
        text = Path(f"{base}.out").read_text()
        assert _state(recs) == [("COMPLETED", "0:0")], text
        assert json.loads(Path(f"{base}.json").read_text())["rank"] == exact, text
    assert "gpu:1" in slurm.job_records(job_s)[0].get("TresPerNode", "")  # a (fake) GPU
    text = Path(f"{dist}.out").read_text()
    assert "srun --kill-on-bad-exit=1" in text and "--distributed" in text
    settings = json.loads(Path(f"{dist}.json").read_text())["provenance"]["settings"]
    assert settings["distributed"] is True


def test_distributed_job_with_two_tasks(tmp_path):
    """distributed.sbatch: srun -n 2, rendezvous from the Slurm variables."""
    report = tmp_path / "report.json"
    log = tmp_path / "job.out"
    job = submit("command", "--nodes", "1", "--ntasks-per-node", "2", *CPU,
                 "--output", str(log), "--chdir", str(tmp_path), "--env", "HRANK_DIST_TIMEOUT=60",
                 "--", sys.executable, "-m", "scalable_hrank.distributed.selfcheck",
                 "--out", str(report))
    recs = slurm.wait(job, timeout=120)
    assert _state(recs) == [("COMPLETED", "0:0")], log.read_text()
    r = json.loads(report.read_text())
    assert r["world"] == 2 and r["backend"] == "gloo" and r["ok"], r
    assert r["all_reduce"] == 3.0 and r["gram_error"] < 1e-10 and r["matmat_error"] < 1e-10
    assert r["slurm_job_id"] == job


def test_preemption_requeue_resume_and_scancel(tmp_path):
    """Three jobs at once (the requeue delay dominates; run them side by side).

    A: the worker (tests/slurm_utils.py) gets USR1, checkpoints, exits 3, is requeued and
       resumes to the bit-identical result of an uninterrupted run.
    B: a sweep task running estimate_rank (throttled blocks) is pre-empted the same way and
       resumes to the same RankResult.
    C: the worker is scancel'ed: it saves its checkpoint but is not requeued.
    """
    from scalable_hrank.sweep import load_config, run_task

    cfg_path = _sweep_file(tmp_path / "sweep.toml", method="sketch", block_size=2,
                           throttle_seconds=0.6)
    ref_b = run_task({**load_config(cfg_path).task(3), "throttle_seconds": 0.0}, tmp_path / "ref")
    ref_a = tmp_path / "ref.json"
    assert preemptible_loop(ref_a, tmp_path / "ref.ckpt", steps=60, delay=0) == 0

    def worker(name: str, steps: int, hold_at: int) -> tuple[str, Path]:
        log = tmp_path / f"{name}.out"
        job = submit("command", *CPU, "--output", str(log), "--chdir", str(tmp_path), "--",
                     sys.executable, str(WORKER), "--out", str(tmp_path / f"{name}.json"),
                     "--checkpoint", str(tmp_path / f"{name}.ckpt"), "--steps", str(steps),
                     "--delay", "0.3", "--hold-at", str(hold_at))
        return job, log

    job_a, log_a = worker("a", 60, hold_at=8)
    job_c, log_c = worker("c", 40, hold_at=6)
    out_b = tmp_path / "out"
    job_b = submit("sweep", str(cfg_path), "--out", str(out_b), "--tasks", "3", *CPU)
    log_b = out_b / "logs" / f"hrank-ci-{job_b}_3.out"

    t_a = wait_for_text(log_a, "worker: step 3", timeout=60)
    t0 = time.monotonic()
    t_signal = signal_until(job_a, log_a, "caught SIGUSR1", timeout=90)
    wait_for_text(log_b, "task 3: started", timeout=60)
    signal_until(f"{job_b}_3", log_b, "caught SIGUSR1", timeout=90)
    wait_for_text(log_c, "worker: step 2", timeout=60)
    os.system(f"scancel {job_c}")  # noqa: S605
    wait_for_text(log_a, "requeueing job", timeout=90)
    t_requeue = time.monotonic() - t0
    wait_for_text(log_a, "restart 1 on", timeout=90)
    t_restart = time.monotonic() - t0
    recs = {j: slurm.wait(j, timeout=120) for j in (job_a, job_b, job_c)}
    t_done = time.monotonic() - t0

    # A: requeued once, resumed, identical to the uninterrupted run
    text = log_a.read_text()
    assert _state(recs[job_a]) == [("COMPLETED", "0:0")], text
    assert recs[job_a][0]["Restarts"] == "1"
    assert "caught SIGUSR1" in text and "command exited with 3" in text
    result, expected = (json.loads(p.read_text()) for p in (tmp_path / "a.json", ref_a))
    # resumed mid-run: the signal lands between step 3 and the held step 8, whatever the load
    assert result["restart_count"] == 1 and 3 <= result["resumed_at"] <= 8  # held at 8
    assert result["x"] == expected["x"]  # bit-identical to the uninterrupted run

    # B: the real solver, resumed from its checkpoint to the same result
    text = log_b.read_text()
    assert _state(recs[job_b]) == [("COMPLETED", "0:0")], text
    assert "requeueing job" in text and recs[job_b][0]["Restarts"] == "1", text
    record = json.loads((out_b / "task-00003.json").read_text())
    assert record["status"] == "ok" and record["resumed"] is True
    keys = ("rank", "n", "tol", "matvecs", "rank_curve", "certified", "gap", "inertia")
    assert {k: record["result"][k] for k in keys} == {k: ref_b["result"][k] for k in keys}
    assert not (out_b / "task-00003.ckpt").exists()  # removed after the result was written

    # C: scancel -> checkpoint saved, job stays cancelled
    wait_for_text(log_c, "command exited with 3", timeout=60)
    time.sleep(1.0)
    text = log_c.read_text()
    assert recs[job_c][0]["JobState"] == "CANCELLED" and recs[job_c][0]["Restarts"] == "0", text
    assert "requeueing" not in text and (tmp_path / "c.ckpt").exists()
    assert slurm.job_records(job_c)[0]["JobState"] == "CANCELLED"
    print(f"pre-emption: step 3 after {t_a:.1f}s; USR1 reached the script after "
          f"{t_signal:.1f}s, requeued {t_requeue:.1f}s after scancel, "
          f"restarted after {t_restart:.1f}s, all done after {t_done:.1f}s")


def test_kind_all_preempted_in_its_third_kind_and_a_raised_budget(tmp_path):
    """Two `hrank rank` jobs side by side, and a GPU job that sees no CUDA.

    A: ``--kind all`` (the real CLI, paused after each block) gets USR1 in its third kind,
       checkpoints, exits 3, is requeued, reads the two finished kinds from their files,
       resumes the third and ends with the result of an uninterrupted run.
    B: a run with too small a budget ends with a bound (exit 1) and keeps its checkpoint; the
       same job with a larger budget resumes from it and ends with the certified result of an
       uninterrupted run, and removes the checkpoint.
    C: ``--gpus 1`` on a node whose GPUs CUDA cannot see: exit 2, one line naming the fix.
    """
    args = ["--model", "mlp:6,4,3", "--data", "gaussian", "--samples", "8", "--loss", "mse",
            "--method", "sketch", "--block-size", "2", "--checkpoint-every", "1e9"]
    ref = tmp_path / "ref.json"
    assert hrank("rank", *args, "--kind", "all", "--out", ref).returncode == 0
    want = json.loads(ref.read_text())["results"]
    keys = ("rank", "certified", "matvecs", "eigenvalues", "tol")

    log_a, out_a = tmp_path / "a.out", tmp_path / "a.json"
    job_a = submit("command", *CPU, "--output", str(log_a), "--chdir", str(tmp_path), "--",
                   sys.executable, str(WORKER), "slow-rank", "0.4", "functional:2", "--", *args,
                   "--kind", "all", "--out", str(out_a), "--checkpoint", str(tmp_path / "a.ckpt"))
    log_b, out_b = tmp_path / "b.out", tmp_path / "b.json"
    small = submit("rank", *CPU, "--output", str(log_b), "--chdir", str(tmp_path), "--", *args,
                   "--kind", "loss", "--max-matvecs", "12", "--out", str(out_b))
    log_c = tmp_path / "c.out"
    job_c = submit("rank", "--gpus", "1", *CPU[2:], "--output", str(log_c), "--chdir",
                   str(tmp_path), "--", *args, "--kind", "loss")

    wait_for_text(log_a, "worker: functional block 2", timeout=90)
    signal_until(job_a, log_a, "caught SIGUSR1", timeout=90)
    rec_b = slurm.wait(small, timeout=90)
    assert _state(rec_b) == [("FAILED", "1:0")], log_b.read_text()
    assert not json.loads(out_b.read_text())["certified"]
    assert Path(f"{out_b}.ckpt").exists()  # kept: a larger budget continues from it
    raised = submit("rank", *CPU, "--output", str(log_b), "--chdir", str(tmp_path), "--", *args,
                    "--kind", "loss", "--max-matvecs", "5000", "--out", str(out_b))
    recs = {j: slurm.wait(j, timeout=150) for j in (job_a, raised, job_c)}

    text = log_a.read_text()
    assert _state(recs[job_a]) == [("COMPLETED", "0:0")], text
    assert recs[job_a][0]["Restarts"] == "1" and "command exited with 3" in text
    assert "loss: finished earlier" in text and "outer: finished earlier" in text
    assert "resuming from" in text and "a.ckpt.functional" in text
    resumed = text[text.index("restart 1 on"):]
    assert "worker: loss block" not in resumed and "worker: outer block" not in resumed
    got = json.loads(out_a.read_text())["results"]
    for kind in ("loss", "outer", "functional"):
        assert {k: got[kind][k] for k in keys} == {k: want[kind][k] for k in keys}, kind
    assert not list(tmp_path.glob("a.ckpt*"))

    text = log_b.read_text()
    assert _state(recs[raised]) == [("COMPLETED", "0:0")], text
    assert "resuming from" in text and "products done)" in text
    result = json.loads(out_b.read_text())
    assert {k: result[k] for k in keys} == {k: want["loss"][k] for k in keys}
    assert not Path(f"{out_b}.ckpt").exists()

    text = log_c.read_text()
    assert _state(recs[job_c]) == [("FAILED", "2:0")], text
    assert "hrank: error: --device cuda but CUDA is not available" in text
    assert "Traceback" not in text
