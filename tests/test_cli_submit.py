"""hrank submit: the exact script, the device a job computes on, `--` required, templates."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from scalable_hrank.cli import main
from scalable_hrank.distributed import slurm

ROOT = Path(__file__).resolve().parents[1]


def _script(capsys, *argv: str) -> tuple[str, str]:
    assert main(["submit", *argv]) == 0
    out = capsys.readouterr()
    return out.out, out.err


def test_dry_run_prints_exactly_the_script_that_would_be_submitted(capsys, tmp_path) -> None:
    script, err = _script(capsys, "rank", "--dry-run", "--", "--model", "mlp:8,4,3")
    assert script.startswith("#!/bin/bash\n")  # nothing before the shebang
    assert "would run: sbatch --parsable" in err
    path = tmp_path / "job.sbatch"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)], check=False).returncode == 0


@pytest.mark.parametrize(("gpus", "device"), [(None, "cuda"), ("1", "cuda"), ("2", "cuda"),
                                              ("0", "cpu")])
def test_rank_jobs_carry_the_device_of_their_allocation(capsys, gpus, device) -> None:
    extra = [] if gpus is None else ["--gpus", gpus]
    script, _ = _script(capsys, "rank", *extra, "--dry-run", "--", "--model", "hf:minilm")
    assert f"export HRANK_DEVICE={device}" in script.splitlines()
    assert ("#SBATCH --gres=gpu:" in script) == (device == "cuda")
    dist, _ = _script(capsys, "rank", "--nodes", "2", *extra, "--dry-run", "--", "--out", "r")
    assert f"export HRANK_DEVICE={device}" in dist.splitlines()


def test_device_of_the_job_can_be_overridden(capsys) -> None:
    script, _ = _script(capsys, "rank", "--gpus", "1", "--env", "HRANK_DEVICE=cuda:0",
                        "--dry-run", "--", "--model", "mlp:8,4,3")
    lines = script.splitlines()
    assert "export HRANK_DEVICE=cuda:0" in lines and "export HRANK_DEVICE=cuda" not in lines


def test_job_arguments_need_the_double_dash(capsys) -> None:
    assert main(["submit", "rank", "--dry-run", "mlp:8,4,3"]) == 2
    assert "hrank submit rank [sbatch options] -- mlp:8,4,3" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:  # --out is not an abbreviation of --output
        main(["submit", "rank", "--dry-run", "--out", "r.json"])
    assert info.value.code == 2
    assert "-- --out r.json" in capsys.readouterr().err


def test_templates_have_one_source_the_top_level_slurm_folder(monkeypatch) -> None:
    monkeypatch.delenv("HRANK_SLURM_TEMPLATES", raising=False)
    assert slurm.template_dir() == ROOT / "slurm"
    assert sorted(p.name for p in (ROOT / "slurm").glob("*.sbatch")) == sorted(
        slurm.TEMPLATES.values())
    assert not list((ROOT / "src").rglob("*.sbatch"))  # no second copy in the package tree
    for name in ("rank", "distributed"):
        assert 'export HRANK_DEVICE="${HRANK_DEVICE:-cuda}"' in slurm.template_path(
            name).read_text()
    assert 'export HRANK_DEVICE="${HRANK_DEVICE:-auto}"' in slurm.template_path(
        "sweep").read_text()
    setup = (ROOT / "setup.py").read_text()
    assert 'glob("slurm/*.sbatch")' in setup and "distributed" in setup
    assert "check_wheel.sh" in (ROOT / ".ci" / "run").read_text()


def test_sbatch_failure_is_exit_2_with_its_message(monkeypatch, capsys) -> None:
    def refuse(script, *, args=(), cwd=None):
        raise slurm.SlurmError("sbatch failed (1): Invalid generic resource (gres) specification")

    monkeypatch.setattr(slurm, "sbatch", refuse)
    assert main(["submit", "rank", "--gpus", "1", "--", "--model", "mlp:8,4,3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hrank: error: sbatch failed (1): Invalid generic resource")
    assert "Traceback" not in err
