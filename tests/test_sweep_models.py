"""Sweeps over any `hrank rank` setting: block expansion, per-(task, kind) tables, bounds,
bad settings. Every rank is checked against the dense exact rank of the same block."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import scalable_hrank as hr
from scalable_hrank.cli import main
from scalable_hrank.errors import InputError
from scalable_hrank.models.blocks import expand_blocks
from scalable_hrank.sweep import expand, load_config, result_path, run_task

BUILDER = textwrap.dedent('''
    import torch
    from torch import nn

    class Layer(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.value = nn.Linear(width, width)
            self.norm = nn.LayerNorm(width)

        def forward(self, h):
            return self.norm(h + torch.tanh(self.value(h)))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(3, 4)
            self.layers = nn.ModuleList([Layer(4), Layer(4)])
            self.head = nn.Linear(4, 3)
            self.spare = nn.Linear(2, 2)   # never used: frozen by the loader

        def forward(self, x):               # x: (N, T, 3)
            h = self.embed(x)
            for layer in self.layers:
                h = layer(h)
            return {"logits": self.head(h.mean(dim=1))}

    def build():
        torch.manual_seed(0)
        net = Net().double()
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.3 * torch.randn_like(p))
        g = torch.Generator().manual_seed(1)
        x = torch.randn(3, 2, 3, generator=g, dtype=torch.float64)
        return net, (x, torch.randint(0, 3, (3,), generator=g))
''')


@pytest.fixture
def builder(tmp_path) -> str:
    path = tmp_path / "blocknet.py"
    path.write_text(BUILDER)
    return f"{path}:build"


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("[sweep]\n" + "\n".join(lines) + "\n")
    return path


def _model(builder: str) -> tuple[nn.Module, tuple]:
    from scalable_hrank.models.problem import build_problem

    p = build_problem({"model": builder})
    return p.model, p.data


def test_block_patterns_expand_per_module_and_parameter(builder):
    model, _ = _model(builder)
    assert expand_blocks(model, "type:LayerNorm").names == ("layers.0.norm", "layers.1.norm")
    assert expand_blocks(model, "layers.*").names == ("layers.0", "layers.1")  # not below
    blocks = expand_blocks(model, ["layers.*.value.bias", "embed"])
    assert blocks.names == ("embed", "layers.0.value.bias", "layers.1.value.bias")
    assert blocks.sizes == (3 * 4 + 4, 4, 4)
    assert expand_blocks(model, ["*"]).skipped == ("spare",)  # frozen: nothing to rank
    with pytest.raises(InputError, match=r"'layer\.\*' matches no module or parameter"):
        expand_blocks(model, "layer.*")


def test_block_sweep_local_and_collect_match_exact_ranks(builder, tmp_path, capsys):
    cfg = _write(tmp_path / "blocks.toml", [
        f'model = "{builder}"', 'blocks = ["type:LayerNorm", "layers.*.value.bias"]',
        'kind = "all"', 'method = ["exact", "sketch"]'])
    config = load_config(cfg)
    assert config.num_tasks == 4 * 2 and [k for k, _ in config.axes] == ["block", "method"]
    out = tmp_path / "out"
    assert main(["sweep", str(cfg), "--local", "--out", str(out)]) == 0
    assert main(["collect", str(out)]) == 0
    table = json.loads((out / "results.json").read_text())
    assert table["num_tasks"] == 8 and not table["missing"] and not table["failed"]
    rows = table["rows"]
    assert len(rows) == 8 * 3  # one row per (task, kind)
    model, data = _model(builder)
    for row in rows:
        exact = hr.exact_rank(model, "cross_entropy", data, row["kind"], params=[row["block"]])
        assert row["rank"] == exact.rank and row["n"] == exact.n, row
        assert row["guarantee"] == ("exact" if row["setting_method"] == "exact" else "certified")
        assert row["bound"] is not None and row["rank"] <= row["bound"]
    norm = [r for r in rows if r["block"] == "layers.1.norm" and r["kind"] == "loss"]
    assert norm[0]["bound"] == 8  # n = 8 < 3 samples x 2 tokens x 4 outputs
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert header[:15] == ["task", "status", "block", "kind", "n", "rank", "rank_low",
                           "rank_high", "guarantee", "certified", "confidence", "method",
                           "matvecs", "seconds", "bound"]
    # a lost record: its three kinds are reported missing (tasks.json has its settings)
    result_path(out, 3).unlink()
    assert main(["collect", str(out)]) == 1
    table = json.loads((out / "results.json").read_text())
    assert table["missing"] == [3]
    assert [r["kind"] for r in table["rows"] if r["task"] == 3] == ["loss", "outer",
                                                                     "functional"]


def test_rank_settings_are_axes(builder, tmp_path):
    cfg = expand({"model": builder, "params": "head.*", "kind": "outer",
                  "method": "sketch", "rtol": [1e-12, 1e-6], "dtype": "float64",
                  "budget": [4, 200], "seed": 3})
    assert cfg.num_tasks == 4 and {k for k, _ in cfg.axes} == {"rtol", "max_matvecs"}
    model, data = _model(builder)
    for i in range(4):
        s = cfg.task(i)
        rec = run_task(s, tmp_path / "o")
        assert rec["status"] == "ok", rec.get("error")
        res = rec["result"]
        exact = hr.exact_rank(model, "cross_entropy", data, "outer", params=["head.*"],
                              rtol=s["rtol"]).rank
        if s["max_matvecs"] == 4:  # budget too small: an honest lower bound, not certified
            assert not res["certified"] and res["rank"] <= exact
        else:
            assert res["certified"] and res["rank"] == exact


@pytest.mark.parametrize(("grid", "match"), [
    ({"model": "mlp:3,2,2", "width": 4}, r"\['width'\] belong to the MLP grid"),
    ({"model": "mlp:3,2,2", "task": "classification"}, "model_task"),
    ({"model": "mlp:3,2,2", "blocks": "*", "params": "0.*"}, "either blocks"),
    ({"blocks": "*"}, "one fixed model"),
    ({"model": ["mlp:3,2,2", "mlp:3,3,2"], "blocks": "*"}, "one fixed model"),
    ({"model": "mlp:3,2,2", "data": "gaussian", "blocks": "nothing.*"}, "matches no module"),
    ({"model": "mlp:3,2,2", "rtol": []}, "grid axis 'rtol' is empty"),
])
def test_bad_sweep_settings(grid, match):
    with pytest.raises(InputError, match=match):
        expand(grid)


def test_unwritable_output_refused_before_any_product(tmp_path, capsys):
    cfg = _write(tmp_path / "s.toml", ['model = "mlp:3,2,2"', 'data = "gaussian"',
                                       "samples = 4", 'method = "exact"'])
    (tmp_path / "file").write_text("not a folder")
    assert main(["sweep", str(cfg), "--local", "--out", str(tmp_path / "file" / "o")]) == 2
    assert "is not writable" in capsys.readouterr().err


def test_mlp_model_spec_sweep_with_failures_recorded(tmp_path):
    cfg = expand({"model": ["mlp:3,2,2", "mlp:3,x,2"], "data": "gaussian", "samples": 4,
                  "loss": "mse", "method": "exact"})
    ok, bad = (run_task(cfg.task(i), tmp_path) for i in range(2))
    assert ok["status"] == "ok" and bad["status"] == "failed" and "widths" in bad["error"]
    from scalable_hrank.models.problem import build_problem

    p = build_problem({"model": "mlp:3,2,2", "data": "gaussian", "samples": 4, "loss": "mse"})
    assert ok["result"]["rank"] == hr.exact_rank(p.model, "mse", p.data).rank
    assert torch.is_tensor(p.data[0])
