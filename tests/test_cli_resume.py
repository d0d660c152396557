"""hrank rank with --checkpoint: pre-emption, --kind all, a raised budget, the fingerprint."""

from __future__ import annotations

import json
import os
import signal
import stat

import pytest

from scalable_hrank.cli import main
from scalable_hrank.cli import rank as rank_cli
from scalable_hrank.cli.resume import problem_fingerprint
from scalable_hrank.data.digits import gaussian
from scalable_hrank.models.mlp import mlp

ARGS = ["rank", "--model", "mlp:8,6,6,3", "--data", "gaussian", "--samples", "12",
        "--loss", "mse", "--method", "sketch", "--block-size", "2", "--seed", "3"]
REAL_ESTIMATE = rank_cli.estimate_rank
KEYS = ("rank", "certified", "matvecs", "eigenvalues", "tol", "rank_low", "rank_high")


def _same(a: dict, b: dict) -> None:
    assert {k: a[k] for k in KEYS} == {k: b[k] for k in KEYS}


def _spy(monkeypatch, preempt_kind: str | None = None, after_blocks: int = 2) -> list[str]:
    """Record which kinds estimate_rank computes; SIGUSR1 during ``preempt_kind``."""
    calls: list[str] = []
    real = REAL_ESTIMATE

    def spy(model, loss, data, kind, **kw):
        calls.append(kind)
        if kind == preempt_kind:
            inner, seen = kw["on_block"], [0]

            def on_block(state):
                seen[0] += 1
                if seen[0] == after_blocks:
                    os.kill(os.getpid(), signal.SIGUSR1)
                inner(state)

            kw["on_block"] = on_block
        return real(model, loss, data, kind, **kw)

    monkeypatch.setattr(rank_cli, "estimate_rank", spy)
    return calls


def test_kind_all_preempted_in_third_kind_keeps_the_first_two(tmp_path, monkeypatch,
                                                              capsys) -> None:
    ref = tmp_path / "ref.json"
    assert main([*ARGS, "--kind", "all", "--out", str(ref)]) == 0
    out, ckpt = tmp_path / "r.json", tmp_path / "run.ckpt"
    argv = [*ARGS, "--kind", "all", "--out", str(out), "--checkpoint", str(ckpt),
            "--checkpoint-every", "1e9"]
    calls = _spy(monkeypatch, preempt_kind="functional")
    assert main(argv) == 3
    assert calls == ["loss", "outer", "functional"] and not out.exists()
    assert "pre-empted by SIGUSR1" in capsys.readouterr().err
    for kind in ("loss", "outer", "functional"):
        assert (tmp_path / f"run.ckpt.{kind}").exists()
    calls = _spy(monkeypatch)
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert calls == ["functional"]  # the finished kinds were read, not recomputed
    assert "loss: finished earlier" in err and "outer: finished earlier" in err
    assert f"resuming from {ckpt}.functional (" in err and "products done)" in err
    got, want = json.loads(out.read_text()), json.loads(ref.read_text())
    for kind in ("loss", "outer", "functional"):
        _same(got["results"][kind], want["results"][kind])
    assert not list(tmp_path.glob("run.ckpt*"))  # removed once the result is written


def test_raised_budget_continues_to_the_uninterrupted_answer(tmp_path, capsys) -> None:
    full = tmp_path / "full.json"
    assert main([*ARGS, "--kind", "loss", "--out", str(full)]) == 0
    out, ckpt = tmp_path / "r.json", tmp_path / "run.ckpt"
    argv = [*ARGS, "--kind", "loss", "--out", str(out), "--checkpoint", str(ckpt)]
    assert main([*argv, "--max-matvecs", "30"]) == 1  # only a bound
    bounded = json.loads(out.read_text())
    assert not bounded["certified"] and ckpt.exists()
    assert "rerun with a larger --max-matvecs" in capsys.readouterr().err
    assert main([*argv, "--max-matvecs", "30"]) == 1  # same budget: the same bound again
    _same(json.loads(out.read_text()), bounded)
    assert main([*argv, "--max-matvecs", "5000", "--checkpoint-every", "7"]) == 0
    assert "resuming from" in capsys.readouterr().err
    _same(json.loads(out.read_text()), json.loads(full.read_text()))
    assert not ckpt.exists()


def test_fingerprint_is_the_problem_not_the_run() -> None:
    model, data = mlp((4, 3, 2), seed=0), gaussian(6, 4, 2, seed=1)
    base = {"loss": "mse", "params": None, "method": "sketch", "rtol": None, "atol": None,
            "seed": 0, "dtype": "float64", "block_size": 8, "probes": None,
            "parts_bound": None}
    fp = problem_fingerprint(model, "mse", data, base, "loss")
    run_only = {"checkpoint": "/elsewhere/x.ckpt", "checkpoint_every": 5.0, "device": "cuda:1",
                "max_matvecs": 10, "memory": "1G", "out": "o.json", "progress": True,
                "threads": 7}
    assert problem_fingerprint(model, "mse", data, {**base, **run_only}, "loss") == fp
    for key, value in (("seed", 1), ("method", "lanczos"), ("rtol", 1e-9), ("atol", 1e-3),
                       ("dtype", "float32"), ("params", ["0.*"]), ("block_size", 4),
                       ("probes", 4)):
        assert problem_fingerprint(model, "mse", data, {**base, key: value}, "loss") != fp, key
    assert problem_fingerprint(model, "mse", data, base, "outer") != fp
    assert problem_fingerprint(model, "logcosh", data, base, "loss") != fp
    other = mlp((4, 3, 2), activation="tanh", seed=0)  # same weights, other architecture
    assert problem_fingerprint(other, "mse", data, base, "loss") != fp
    x, y = data
    assert problem_fingerprint(model, "mse", (x, y + 1e-12), base, "loss") != fp


def test_checkpoint_of_another_problem_is_exit_2(tmp_path, capsys) -> None:
    ckpt = tmp_path / "run.ckpt"
    argv = [*ARGS, "--kind", "loss", "--checkpoint", str(ckpt), "--max-matvecs", "20"]
    assert main(argv) == 1 and ckpt.exists()
    capsys.readouterr()
    assert main([*argv[:-2], "--max-matvecs", "20", "--seed", "4"]) == 2
    err = capsys.readouterr().err
    last = err.splitlines()[-1]
    assert last.startswith("hrank: error: checkpoint") and "another problem" in last
    assert "Traceback" not in err


def test_result_and_checkpoint_files_follow_the_umask(tmp_path) -> None:
    old = os.umask(0o027)
    try:
        out, ckpt = tmp_path / "r.json", tmp_path / "run.ckpt"
        assert main([*ARGS, "--kind", "loss", "--out", str(out), "--checkpoint", str(ckpt),
                     "--max-matvecs", "20"]) == 1
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    assert stat.S_IMODE(ckpt.stat().st_mode) == 0o640


@pytest.mark.parametrize("method", ["exact", "sketch", "lanczos", "density"])
def test_progress_bar_reaches_100_percent_with_a_rate(method: str, capsys) -> None:
    argv = [*ARGS, "--kind", "outer", "--progress", "--probes", "2"]
    argv[argv.index("sketch")] = method
    assert main(argv) in (0, 1)
    bars = capsys.readouterr().err.replace("\r", "\n").splitlines()
    last = [line for line in bars if line.startswith(f"outer {method}")][-1]
    assert "100%" in last and "prod/s" in last, last


def test_a_saved_krylov_state_moves_to_the_compute_device(tmp_path) -> None:
    import torch

    import scalable_hrank as hr
    from scalable_hrank.checkpoint import load_checkpoint, save_checkpoint
    from scalable_hrank.cli.resume import state_to_device

    model, data = mlp((4, 3, 2), seed=0), gaussian(6, 4, 2, seed=1)
    saved = []
    hr.estimate_rank(model, "mse", data, "loss", method="sketch", block_size=2,
                     on_block=lambda s: saved.append(s.snapshot()))
    save_checkpoint(tmp_path / "s.ckpt", saved[1], fingerprint="f")
    state = load_checkpoint(tmp_path / "s.ckpt", fingerprint="f")
    meta = torch.device("meta")  # stands in for a GPU: only the placement is checked
    moved = state_to_device(state, meta)
    for name in ("projected", "pending"):
        assert getattr(moved, name).device == meta and getattr(state, name).device.type == "cpu"
    assert state.panels and all(p.device == meta for p in moved.panels)
    assert all(p.device.type == "cpu" for p in state.panels)
    assert moved.generator_state.device.type == "cpu"  # the CPU generator's state stays
    assert moved.num_matvecs == state.num_matvecs and moved.size == state.size
    other = {"result": {"rank": 1}}
    assert state_to_device(other, meta) is other
