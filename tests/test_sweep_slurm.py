"""A block sweep as one real Slurm job array: `hrank submit sweep`, then `hrank collect`.

Skips without a Slurm controller (fails instead with ``HRANK_REQUIRE_SLURM=1``), like
tests/test_slurm.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scalable_hrank.distributed import slurm  # noqa: E402
from slurm_utils import hrank, require_slurm, submit  # noqa: E402

pytestmark = pytest.mark.slurm
CPU = ["--gpus", "0", "--cpus-per-task", "1", "--time", "00:05:00"]


@pytest.fixture(scope="module", autouse=True)
def _need_slurm():
    require_slurm()


def test_block_sweep_array_collects_one_row_per_block_and_kind(tmp_path):
    import scalable_hrank as hr
    from scalable_hrank.models.problem import build_problem

    spec = {"model": "mlp:3,4,2:tanh:bias", "data": "gaussian", "samples": 5, "loss": "mse"}
    cfg = tmp_path / "blocks.toml"
    cfg.write_text("[sweep]\nname = \"ci-blocks\"\n"
                   + "".join(f"{k} = {json.dumps(v)}\n" for k, v in spec.items())
                   + 'blocks = ["*"]\nkind = "all"\nmethod = "sketch"\n')
    out = tmp_path / "out"
    job = submit("sweep", str(cfg), "--out", str(out), *CPU)
    recs = slurm.wait(job, timeout=150)
    states = [(r.get("JobState"), r.get("ExitCode")) for r in recs]
    assert states == [("COMPLETED", "0:0")] * 2, states  # blocks "0" and "2" (Tanh has none)
    proc = hrank("collect", out)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert sorted((r["block"], r["kind"]) for r in rows) == sorted(
        (b, k) for b in ("0", "2") for k in ("loss", "outer", "functional"))
    problem = build_problem(spec)
    for row in rows:
        exact = hr.exact_rank(problem.model, "mse", problem.data, row["kind"],
                              params=[row["block"]])
        assert row["status"] == "ok" and row["guarantee"] == "certified"
        assert row["rank"] == exact.rank and row["rank"] <= row["bound"]
