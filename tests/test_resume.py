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



def _renamed(obj, old: str, new: str):
    """The plain payload of a checkpoint with the dataclass tag ``new`` written as ``old``."""
    if isinstance(obj, dict):
        return {k: (old if v == new else _renamed(v, old, new)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_renamed(v, old, new) for v in obj)
    return obj


@pytest.mark.parametrize(("method", "kind", "old"), [
    ("sketch", "loss", "scalable_hrank.linalg.block_krylov:KrylovState"),
    ("density", "functional", "scalable_hrank.linalg.probe_lanczos:ProbeLanczos")])
def test_checkpoints_naming_the_old_engine_modules_still_resume(tmp_path, method, kind,
                                                                old) -> None:
    """States saved before the engines moved into linalg/decomp/ load and resume."""
    model, data = mlp((8, 6, 6, 3), seed=1), gaussian(12, 8, 3, seed=2)
    kw = {"method": method, "seed": 5, "density": {"num_probes": 2}}
    full = hr.estimate_rank(model, "mse", data, kind, **kw)
    path = tmp_path / "run.ckpt"

    def stop(s):
        save_checkpoint(path, s.snapshot(), fingerprint="f")
        raise Interrupted

    with pytest.raises(Interrupted):
        hr.estimate_rank(model, "mse", data, kind, **kw, on_block=stop)
    raw = path.read_bytes()
    magic, header, payload = raw.split(b"\n", 2)
    plain = torch.load(io.BytesIO(payload), weights_only=True)
    new = old.replace("block_krylov", "decomp.block").replace("probe_lanczos", "decomp.lockstep")
    buf = io.BytesIO()
    torch.save(_renamed(plain, old, new), buf)
    payload = buf.getvalue()
    assert old.encode() in payload
    meta = json.loads(header)
    meta.update(size=len(payload), sha256=hashlib.sha256(payload).hexdigest())
    path.write_bytes(magic + b"\n" + json.dumps(meta).encode() + b"\n" + payload)
    state = load_checkpoint(path, fingerprint="f")
    res = hr.estimate_rank(model, "mse", data, kind, **kw, resume_state=state)
    assert res.rank == full.rank and (res.rank_low, res.rank_high) == (full.rank_low,
                                                                      full.rank_high)
