"""Runs interrupted several times at random points resume, through checkpoint files, to the
answer of an uninterrupted run (sketch: bit-identical Ritz values; density: same estimate)."""

from __future__ import annotations

import random

import pytest

import scalable_hrank as hr
from scalable_hrank.checkpoint import load_checkpoint, save_checkpoint
from scalable_hrank.data.digits import gaussian
from scalable_hrank.models.mlp import mlp


class Interrupted(Exception):
    """Stands in for a pre-emption signal."""


@pytest.mark.parametrize(("method", "kind"), [("sketch", "loss"), ("lanczos", "outer"),
                                              ("density", "functional")])
def test_interrupted_several_times_resumes_to_the_same_answer(tmp_path, method, kind) -> None:
    model, data = mlp((8, 6, 6, 3), seed=1), gaussian(12, 8, 3, seed=2)
    kw = {"method": method, "seed": 5, "density": {"num_probes": 2}}
    blocks = [0]
    full = hr.estimate_rank(model, "mse", data, kind, **kw,
                            on_block=lambda s: blocks.__setitem__(0, blocks[0] + 1))
    rng = random.Random(7)
    path, state, interruptions = tmp_path / "run.ckpt", None, 0
    res = None
    for _ in range(50):
        # stop at random points spread over the run (at most a quarter of it between stops)
        stop_at, calls = rng.randint(1, max(3, blocks[0] // 4)), [0]

        def on_block(s, stop_at=stop_at, calls=calls):
            calls[0] += 1
            if calls[0] == stop_at:
                save_checkpoint(path, s.snapshot(), fingerprint="resume-test")
                raise Interrupted

        try:
            res = hr.estimate_rank(model, "mse", data, kind, **kw, on_block=on_block,
                                   resume_state=state)
            break
        except Interrupted:
            interruptions += 1
            state = load_checkpoint(path, fingerprint="resume-test")
    assert res is not None and interruptions >= 3
    assert res.rank == full.rank and res.certified == full.certified
    if method == "density":
        assert res.extra["estimate"] == full.extra["estimate"]
        assert (res.rank_low, res.rank_high) == (full.rank_low, full.rank_high)
    else:
        assert res.eigenvalues == full.eigenvalues
