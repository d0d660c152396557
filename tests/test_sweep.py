"""Sweep files, tasks, `hrank sweep/collect/submit --dry-run` and template rendering."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

import scalable_hrank as hr
from scalable_hrank.checkpoint import Preempted, PreemptionHandler
from scalable_hrank.cli import main
from scalable_hrank.distributed import slurm
from scalable_hrank.sweep import build_problem, expand, load_config, result_path, run_task

TOML = """
[sweep]
name = "grid"
d = 3
K = 2
N = [4, 6]
width = [2, 3]
depth = 1
activation = ["linear", "tanh"]
bias = [false, true]
kind = ["loss", "outer"]
method = "exact"

[slurm]
time = "00:10:00"
gpus = 0
max_parallel = 3
"""


@pytest.fixture
def cfg_path(tmp_path) -> Path:
    path = tmp_path / "grid.toml"
    path.write_text(TOML)
    return path


def test_grid_expands_deterministically_in_axis_order(cfg_path, tmp_path):
    cfg = load_config(cfg_path)
    assert cfg.name == "grid" and cfg.num_tasks == 2 * 2 * 2 * 2 * 2
    assert [k for k, _ in cfg.axes] == ["width", "num_samples", "activation", "bias", "kind"]
    tasks = cfg.tasks()
    assert tasks[0]["width"] == 2 and tasks[0]["num_samples"] == 4 and tasks[0]["kind"] == "loss"
    assert tasks[1]["kind"] == "outer" and tasks[1]["bias"] is False  # last axis fastest
    assert tasks[-1] == {**tasks[-1], "width": 3, "num_samples": 6, "activation": "tanh",
                         "bias": True, "kind": "outer", "task": 31}
    assert all(t["input_dim"] == 3 and t["output_dim"] == 2 for t in tasks)
    assert len({json.dumps(t, sort_keys=True) for t in tasks}) == 32
    # JSON gives the same tasks
    j = tmp_path / "grid.json"
    j.write_text(json.dumps({"sweep": {"name": "grid", "d": 3, "K": 2, "N": [4, 6],
                                       "width": [2, 3], "activation": ["linear", "tanh"],
                                       "bias": [False, True], "kind": ["loss", "outer"]}}))
    assert load_config(j).tasks() == tasks
    with pytest.raises(ValueError, match="task must be in"):
        cfg.task(32)


@pytest.mark.parametrize(("grid", "match"), [
    ({"widht": [2]}, "unknown setting 'widht'"),
    ({"width": []}, "grid axis 'width' is empty"),
    ({"N": 3, "num_samples": 4}, "given twice"),
])
def test_bad_grids_are_refused(grid, match):
    with pytest.raises(ValueError, match=match):
        expand(grid)


def test_bad_files_are_refused(tmp_path):
    (tmp_path / "a.toml").write_text("[sweep\n")
    with pytest.raises(ValueError, match="cannot parse"):
        load_config(tmp_path / "a.toml")
    (tmp_path / "b.toml").write_text("[sweeps]\nwidth=1\n")
    with pytest.raises(ValueError, match="unknown tables"):
        load_config(tmp_path / "b.toml")
    (tmp_path / "c.toml").write_text("[sweep]\n[slurm]\nwalltime='1:00'\n")
    with pytest.raises(ValueError, match="unknown option 'walltime'"):
        load_config(tmp_path / "c.toml")


def test_run_task_records_exact_rank(cfg_path, tmp_path):
    settings = load_config(cfg_path).task(5)
    record = run_task(settings, tmp_path / "out")
    model, data = build_problem(settings)
    expected = hr.exact_rank(model, settings["loss"], data, settings["kind"])
    saved = json.loads(result_path(tmp_path / "out", 5).read_text())
    assert saved["status"] == record["status"] == "ok"
    assert saved["result"]["rank"] == saved["exact_rank"] == expected.rank
    assert saved["settings"] == settings


def test_failed_task_is_recorded(tmp_path):
    settings = expand({"activation": "softsign"}).task(0)  # unknown activation
    record = run_task(settings, tmp_path)
    assert record["status"] == "failed" and "activation" in record["error"]
    assert json.loads(result_path(tmp_path, 0).read_text())["status"] == "failed"


class _Flag(PreemptionHandler):
    """A handler whose signal 'arrives' at the n-th poll (no real signal)."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.polls, self.after = 0, after

    @property
    def signalled(self) -> bool:
        self.polls += 1
        if self.polls >= self.after:
            self.signum = signal.SIGUSR1
        return self.signum is not None


def test_preempted_task_saves_and_resumes_to_the_same_result(tmp_path, capsys):
    settings = expand({"width": 6, "depth": 2, "activation": "tanh", "method": "sketch",
                       "block_size": 2, "num_samples": 8}).task(0)
    ref = run_task(settings, tmp_path / "ref")
    with pytest.raises(Preempted) as info:
        run_task(settings, tmp_path / "run", handler=_Flag(after=3))
    assert info.value.path.exists() and not result_path(tmp_path / "run", 0).exists()
    resumed = run_task(settings, tmp_path / "run")
    assert resumed["resumed"] is True and ref["resumed"] is False
    assert "hrank sweep: resuming from" in capsys.readouterr().out
    for record in (resumed, ref):  # wall time and the machine's free memory may differ
        del record["result"]["seconds"], record["result"]["extra"]["plan"]["available_bytes"]
    assert resumed["result"] == ref["result"]
    assert not info.value.path.exists()  # checkpoint removed once the record is written


def test_cli_list_local_and_collect(cfg_path, tmp_path, capsys):
    small = tmp_path / "small.json"
    small.write_text(json.dumps({"sweep": {"name": "s", "width": [2, 3], "N": 4, "d": 2,
                                           "K": 2}}))
    assert main(["sweep", str(small), "--list"]) == 0
    listing = capsys.readouterr().out
    assert "    0  width=2" in listing and "# 2 tasks" in listing
    out = tmp_path / "out"
    assert main(["sweep", str(small), "--local", "--out", str(out)]) == 0
    assert main(["collect", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["status"] for r in rows] == ["ok", "ok"]
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert {"task", "status", "width", "rank", "exact_rank", "tol", "matvecs"} <= set(header)
    # a missing and a failed task: exit code 1, both flagged
    result_path(out, 1).unlink()
    (out / "task-00000.json").write_text('{"task": 0, "status": "failed", "error": "boom"}')
    capsys.readouterr()
    assert main(["collect", str(out), "--config", str(small)]) == 1
    err = capsys.readouterr().err
    assert "missing tasks: 1" in err and "failed tasks: 0" in err and "boom" in err


def test_collect_uses_manifest_for_expected_count(tmp_path, capsys):
    (tmp_path / "sweep.json").write_text(json.dumps({"num_tasks": 5}))
    assert main(["collect", str(tmp_path)]) == 1
    assert "missing tasks: 0-4" in capsys.readouterr().err


def test_collect_on_a_folder_without_records_is_exit_2(tmp_path, capsys):
    assert main(["collect", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hrank: error:") and "no sweep task records" in err
    assert not (tmp_path / "results.csv").exists()


def test_render_sets_deletes_and_adds_directives():
    tpl = ("#!/bin/bash\n#SBATCH --time=04:00:00\n#SBATCH --gres=gpu:1\n\nset -u\n"
           "# hrank: command (x)\nCMD=(hrank rank \"$@\")\n")
    out = slurm.render(tpl, command="a 'b c'", directives={"--time": "1:00", "--gres": None,
                                                           "--array": "0-3%2"},
                       environment={"X": "1 2"})
    lines = out.splitlines()
    assert "#SBATCH --time=1:00" in lines and not any("gres" in ln for ln in lines)
    assert lines.index("#SBATCH --array=0-3%2") < lines.index("set -u")
    assert "export X='1 2'" in lines and "CMD=(a 'b c')" in lines
    with pytest.raises(ValueError, match="no '# hrank: command'"):
        slurm.render("#!/bin/bash\n", command="x")


def test_submit_dry_run_sweep_rank_and_distributed(cfg_path, tmp_path, capsys):
    assert main(["submit", "sweep", str(cfg_path), "--out", str(tmp_path / "r"),
                 "--dry-run"]) == 0
    script = capsys.readouterr().out
    assert "#SBATCH --array=0-31%3" in script and "#SBATCH --time=00:10:00" in script
    assert "#SBATCH --signal=B:USR1@120" in script and "#SBATCH --open-mode=append" in script
    assert f"--out {tmp_path / 'r'} --task \"${{SLURM_ARRAY_TASK_ID:?}}\")" in script
    assert not (tmp_path / "r").exists()  # dry run writes nothing

    assert main(["submit", "rank", "--time", "1:00:00", "--dry-run", "--",
                 "--config", "c.toml", "--out", "res.json"]) == 0
    script = capsys.readouterr().out
    assert "rank --config c.toml --out res.json --checkpoint res.json.ckpt)" in script
    assert "#SBATCH --gres=gpu:1" in script and "LAUNCH=()" in script

    assert main(["submit", "rank", "--nodes", "2", "--gpus", "4", "--dry-run", "--",
                 "--out", "r.json"]) == 0
    script = capsys.readouterr().out
    assert "LAUNCH=(srun --kill-on-bad-exit=1)" in script
    assert "rank --out r.json --checkpoint r.json.ckpt --distributed)" in script
    assert "#SBATCH --nodes=2" in script and "#SBATCH --ntasks-per-node=4" in script
    assert "#SBATCH --gres=gpu:4" in script and "MASTER_ADDR=" in script


def test_templates_are_valid_bash_and_preemptible():
    import subprocess

    for name in slurm.TEMPLATES:
        path = slurm.template_path(name)
        text = path.read_text()
        assert subprocess.run(["bash", "-n", str(path)], check=False).returncode == 0
        for needle in ("#SBATCH --signal=B:USR1@120", "#SBATCH --open-mode=append",
                       "#SBATCH --requeue", "trap 'forward USR1' USR1", "scontrol requeue",
                       "HRANK_PREEMPTED_RC=3"):
            assert needle in text, (name, needle)
