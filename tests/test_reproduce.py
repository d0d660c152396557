"""Every reproduction script runs with --small and writes a consistent CSV and a PNG."""

import csv
import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts" / "reproduce"
NAMES = ["rank_vs_samples", "rank_vs_width", "rank_vs_depth", "rank_during_training",
         "spectrum_linear_vs_tanh", "rank_vs_channels_cnn"]
KINDS = ("loss", "outer", "functional")


def _load(name):
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(f"reproduce_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_RUNS: dict = {}


def _run_script(name, tmp_path_factory):
    """Run one script with --small once per test session; return (name, out, csv rows)."""
    if name not in _RUNS:
        out = tmp_path_factory.mktemp(name)
        assert _load(name).main(["--small", "--out", str(out)]) == 0
        with open(out / f"{name}.csv", newline="") as fh:
            _RUNS[name] = (name, out, list(csv.DictReader(fh)))
    return _RUNS[name]


@pytest.fixture(scope="module", params=NAMES)
def run(request, tmp_path_factory):
    return _run_script(request.param, tmp_path_factory)


def test_csv_has_measured_columns(run):
    name, _, rows = run
    assert rows
    for kind in KINDS:
        assert f"rank_{kind}" in rows[0]
        assert f"rank_{kind}@1e-06" in rows[0]
    assert all(0 <= int(r["rank_loss"]) <= int(r["p"]) for r in rows)
    if name != "rank_vs_channels_cnn":  # no closed form for CNNs
        assert all(f"pred_{k}" in rows[0] for k in KINDS)


def test_exact_formulas_match_linear_rows(run):
    name, _, rows = run
    linear = [r for r in rows if r.get("activation", "linear") == "linear"]
    exact = [(r, k) for r in linear for k in KINDS if r.get(f"pred_{k}_exact") == "True"]
    if name != "rank_vs_channels_cnn":
        assert exact, "no exact-formula rows to compare"
    for row, kind in exact:
        assert int(row[f"rank_{kind}"]) == int(row[f"pred_{kind}"]), (name, kind, row)


def test_png_written(run):
    name, out, _ = run
    png = out / f"{name}.png"
    assert png.stat().st_size > 5000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_training_formula_bounds_linear_rank(tmp_path_factory):
    _, _, rows = _run_script("rank_during_training", tmp_path_factory)
    linear = [r for r in rows if r["activation"] == "linear"]
    for row in linear:
        for kind in KINDS:
            assert int(row[f"pred_{kind}"]) >= int(row[f"rank_{kind}"]), (kind, row)
        assert int(row["rank_outer"]) == int(row["pred_outer"])  # H_O ignores the residual
    assert int(linear[-1]["s"]) < int(linear[0]["s"])  # the residuals lost rank


def test_samples_rise_then_flat(tmp_path_factory):
    _, _, rows = _run_script("rank_vs_samples", tmp_path_factory)
    sel = [r for r in rows if r["loss"] == "mse" and r["bias"] == "False"]
    outer = [int(r["rank_outer"]) for r in sel]
    functional = {int(r["rank_functional"]) for r in sel}
    assert outer == sorted(outer) and outer[0] < outer[-1]
    assert len(functional) == 1  # H_F does not depend on N
