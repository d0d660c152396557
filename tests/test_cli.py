"""hrank demo and hrank rank end to end (through cli.main), against exact ranks."""

from __future__ import annotations

import json

import pytest

import scalable_hrank as hr
from scalable_hrank.cli import build_parser, main
from scalable_hrank.cli import demo as demo_cli
from scalable_hrank.data.digits import digits
from scalable_hrank.models.mlp import mlp


def test_every_subcommand_has_help(capsys) -> None:
    parser = build_parser()
    names = parser._subparsers._group_actions[0].choices  # noqa: SLF001
    assert {"demo", "rank", "predict", "plot"} <= set(names)
    for name in names:
        with pytest.raises(SystemExit) as info:
            main([name, "--help"])
        assert info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: hrank" in out
    assert "``" not in out and ":func:" not in out and ":class:" not in out  # no markup
    assert "PAPER" + ".md" not in out and "shared" + "/" not in out  # names spelled in pieces


def test_demo_table_and_json(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(demo_cli, "DEMO_MODELS", (
        ((64, 3, 3, 10), "linear", False, "cross_entropy"),
        ((64, 3, 10), "tanh", False, "mse"),
    ))
    out = tmp_path / "demo.json"
    assert main(["demo", "--samples", "40", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "linear 64-3-3-10" in text and "functional" in text
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 6
    x, y = digits(40, loss="cross_entropy")
    exact = hr.exact_ranks(mlp((64, 3, 3, 10)), "cross_entropy", (x, y))
    for row in rows[:3]:
        assert row["exact_rank"] == exact[row["kind"]].rank
        assert row["predicted_rank"] == row["exact_rank"] and row["prediction"] == "exact"
        assert row["certified"] and row["matfree_rank"] == row["exact_rank"]
    assert rows[3]["prediction"] == "estimate"


def test_rank_command_writes_result_with_provenance(tmp_path, capsys) -> None:
    out = tmp_path / "r.json"
    code = main(["rank", "--model", "mlp:64,4,10:tanh:bias", "--samples", "30",
                 "--loss", "mse", "--kind", "outer", "--method", "sketch", "--out", str(out)])
    assert code == 0
    doc = json.loads(out.read_text())
    for key in ("n", "rank", "certified", "matvecs", "seconds", "tol", "kind", "method"):
        assert key in doc
    x, y = digits(30, loss="mse")
    model = mlp((64, 4, 10), activation="tanh", bias=True)
    assert doc["rank"] == hr.exact_rank(model, "mse", (x, y), "outer").rank
    prov = doc["provenance"]
    assert prov["torch"] and prov["settings"]["seed"] == 0 and prov["machine"]["platform"]
    assert "selected parameters" in capsys.readouterr().err


def test_rank_config_file_and_params(tmp_path) -> None:
    cfg = tmp_path / "run.toml"
    cfg.write_text('model = "mlp:64,5,10"\nsamples = 25\nkind = "all"\nmethod = "lanczos"\n'
                   'params = "2.*"\n')
    out = tmp_path / "r.json"
    assert main(["rank", "--config", str(cfg), "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert set(doc["results"]) == {"loss", "outer", "functional"}
    assert doc["n"] == 5 * 10  # only the last layer's weight (no bias)
    for res in doc["results"].values():
        assert res["certified"] and res["n"] == 50


def test_rank_budget_exhausted_exits_1(tmp_path) -> None:
    out = tmp_path / "r.json"
    code = main(["rank", "--model", "mlp:64,6,6,10", "--samples", "40", "--method", "sketch",
                 "--max-matvecs", "30", "--out", str(out)])
    assert code == 1
    doc = json.loads(out.read_text())
    assert not doc["certified"] and doc["rank_low"] <= doc["rank_high"]


@pytest.mark.parametrize("argv", [
    ["rank", "--model", "mlp:64,4,10", "--rtol", "-1"],
    ["rank", "--model", "mlp:64,4,10", "--params", "nothing.*"],
    ["rank", "--model", "mlp:30,4,10"],
    ["rank", "--model", "nonsense"],
])
def test_rank_bad_input_exits_2(argv: list[str], capsys) -> None:
    assert main(argv) == 2
    assert "error:" in capsys.readouterr().err


def test_rank_density_parts_bound_flag(tmp_path, capsys) -> None:
    # too small a budget for H_L: exit 1 (a bound), with the parts counted for an upper end
    out = tmp_path / "r.json"
    argv = ["rank", "--model", "mlp:10,12,12,4", "--data", "gaussian", "--samples", "20",
            "--kind", "loss", "--method", "density", "--max-matvecs", "600", "--probes", "4",
            "--parts-bound", "--out", str(out)]
    assert main(argv) == 1
    res = json.loads(out.read_text())["results"]["loss"]
    assert set(res["extra"]["parts_bound"]) == {"outer", "functional"}
    assert res["rank_low"] > res["extra"]["deflated_count"]
    assert "bound: at " in capsys.readouterr().out


@pytest.mark.parametrize("method", ["sketch", "density"])
def test_rank_with_checkpoint_every_block(tmp_path, method: str) -> None:
    out, ckpt = tmp_path / "r.json", tmp_path / "run.ckpt"
    argv = ["rank", "--model", "mlp:64,6,10", "--samples", "40", "--kind", "outer",
            "--method", method, "--checkpoint", str(ckpt), "--checkpoint-every", "0",
            "--probes", "2", "--out", str(out)]
    assert main(argv) in (0, 1)
    doc = json.loads(out.read_text())
    assert doc["method"] == method and not ckpt.exists()  # removed after the result is safe
