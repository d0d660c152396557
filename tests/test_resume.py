"""Runs interrupted several times at random points resume, through checkpoint files, to the
answer of an uninterrupted run (sketch: bit-identical Ritz values; density: same estimate)."""

from __future__ import annotations

import hashlib
import io
import json
import random

import pytest
import torch

import scalable_hrank as hr
from scalable_hrank.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
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


@pytest.mark.parametrize("method", ["sketch", "density"])
def test_auto_resumes_the_method_that_saved_the_state(method) -> None:
    """auto would take the dense reference here (n = 102); a saved state keeps its method."""
    model, data = mlp((8, 6, 6, 3), seed=1), gaussian(12, 8, 3, seed=2)
    kw = {"seed": 5, "density": {"num_probes": 2}, "max_matvecs": 600}
    full = hr.estimate_rank(model, "mse", data, "functional", method=method, **kw)
    saved = []

    def stop_at_second_block(state):
        if len(saved) == 1:
            raise Interrupted
        saved.append(state.snapshot())

    with pytest.raises(Interrupted):
        hr.estimate_rank(model, "mse", data, "functional", method=method, **kw,
                         on_block=stop_at_second_block)
    res = hr.estimate_rank(model, "mse", data, "functional", method="auto", **kw,
                           resume_state=saved[0])
    assert res.method == method
    assert any("resuming the saved" in note for note in res.notes)
    assert (res.rank, res.rank_low, res.rank_high) == (full.rank, full.rank_low, full.rank_high)
    assert res.eigenvalues == full.eigenvalues


def _renamed(obj, old: str, new: str):
    """The plain payload of a checkpoint with the dataclass tag ``new`` written as ``old``."""
    if isinstance(obj, dict):
        return {k: (old if v == new else _renamed(v, old, new)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_renamed(v, old, new) for v in obj)
    return obj


def test_a_checkpoint_of_another_version_is_refused_clearly(tmp_path) -> None:
    """A state whose class no longer exists (0.1 kept it in linalg._block) names the problem."""
    model, data = mlp((8, 6, 6, 3), seed=1), gaussian(12, 8, 3, seed=2)
    path = tmp_path / "run.ckpt"

    def stop(s):
        save_checkpoint(path, s.snapshot(), fingerprint="f")
        raise Interrupted

    with pytest.raises(Interrupted):
        hr.estimate_rank(model, "mse", data, "loss", method="sketch", seed=5, on_block=stop)
    magic, header, payload = path.read_bytes().split(b"\n", 2)
    plain = torch.load(io.BytesIO(payload), weights_only=True)
    buf = io.BytesIO()
    torch.save(_renamed(plain, "scalable_hrank.linalg._block:KrylovState",
                        "scalable_hrank.linalg.decomp.block:KrylovState"), buf)
    payload = buf.getvalue()
    meta = json.loads(header)
    meta.update(size=len(payload), sha256=hashlib.sha256(payload).hexdigest())
    path.write_bytes(magic + b"\n" + json.dumps(meta).encode() + b"\n" + payload)
    with pytest.raises(CheckpointError, match="another version of scalable_hrank"):
        load_checkpoint(path, fingerprint="f")
