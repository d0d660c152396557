"""Plots build from real exact results and mark threshold, gap and predicted index."""

import pytest

pytest.importorskip("matplotlib")

from scalable_hrank import plots  # noqa: E402
from scalable_hrank.data.digits import gaussian  # noqa: E402
from scalable_hrank.exact import exact_ranks  # noqa: E402
from scalable_hrank.models.mlp import mlp  # noqa: E402
from scalable_hrank.theory import predict_rank  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    x, y = gaussian(20, 6, 3, loss="mse", seed=0)
    model = mlp([6, 4, 4, 3], seed=0)
    res = exact_ranks(model, "mse", (x, y))
    pred = predict_rank(model, loss="mse", data=(x, y))
    assert res["loss"].rank == pred.loss  # the figure marks a real match
    return res, pred


def _gids(ax):
    return [a.get_gid() for a in ax.get_children() if a.get_gid()]


def test_spectrum_marks_threshold_gap_and_predicted_index(tiny, tmp_path):
    res, pred = tiny
    fig = plots.plot_spectrum(res["loss"], predicted_index=pred.loss)
    ax = fig.axes[0]
    gids = _gids(ax)
    for gid in ("spectrum:0", "threshold", "gap", "predicted index", "predicted zero region"):
        assert gid in gids
    assert ax.get_yscale() == "log"
    (line,) = [a for a in ax.lines if a.get_gid() == "spectrum:0"]
    ys = line.get_ydata()
    assert len(ys) == res["loss"].n and all(ys[:-1] >= ys[1:])  # sorted descending
    (vline,) = [a for a in ax.lines if a.get_gid() == "predicted index"]
    assert vline.get_xdata()[0] == pytest.approx(pred.loss + 0.5)
    (hline,) = [a for a in ax.lines if a.get_gid() == "threshold"]
    assert hline.get_ydata()[0] == pytest.approx(res["loss"].tol)
    # the predicted index sits inside the gap: everything left of it is above the threshold
    assert (ys[: pred.loss] > res["loss"].tol).all() and (ys[pred.loss:] <= res["loss"].tol).all()
    assert plots.save_figure(fig, tmp_path / "s.png").stat().st_size > 0


def test_spectrum_several_series_and_raw_eigenvalues(tiny):
    res, pred = tiny
    fig = plots.plot_spectrum({"H_L": res["loss"], "H_O": list(res["outer"].eigenvalues)},
                              predicted_index=[pred.loss, pred.outer])
    gids = _gids(fig.axes[0])
    assert {"spectrum:0", "spectrum:1"} <= set(gids)
    assert gids.count("predicted index") == 2
    plots.pyplot().close(fig)


def test_spectrum_without_eigenvalues_raises(tiny):
    import dataclasses

    res, _ = tiny
    with pytest.raises(ValueError, match="no eigenvalues"):
        plots.plot_spectrum(dataclasses.replace(res["loss"], eigenvalues=None))


def test_rank_curve_marks_threshold_and_prediction(tiny):
    res, pred = tiny
    fig = plots.plot_rank_curve([res[k] for k in ("loss", "outer", "functional")],
                                predicted=[pred.loss, pred.outer, pred.functional])
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert _gids(ax).count("predicted") == 3
    # one threshold line per distinct threshold (the three kinds share the H_L-relative one)
    assert _gids(ax).count("threshold") == len({res[k].tol for k in ("loss", "outer",
                                                                       "functional")})
    (curve,) = [a for a in ax.lines if a.get_gid() == "curve:loss"]
    assert pred.loss in set(curve.get_ydata())  # the plateau at the predicted rank
    plots.pyplot().close(fig)


def test_density_and_sweep(tiny):
    res, pred = tiny
    fig = plots.plot_density([-1.0, 0.0, 1.0], [0.1, 2.0, 0.0], tol=0.05, label="kpm")
    assert "density" in _gids(fig.axes[0]) and "threshold" in _gids(fig.axes[0])
    plots.pyplot().close(fig)
    with pytest.raises(ValueError, match="same length"):
        plots.plot_density([0.0], [1.0, 2.0])
    rows = [{"N": "10", "rank_loss": "5", "pred_loss": "5"},
            {"N": "20", "rank_loss": "7", "pred_loss": ""}]
    fig = plots.plot_sweep(rows, x="N", kinds=("loss",))
    gids = _gids(fig.axes[0])
    assert "measured:loss" in gids and "predicted:loss" in gids
    plots.pyplot().close(fig)
    with pytest.raises(ValueError, match="x must be a column"):
        plots.plot_sweep(rows, x="width")


def test_cli_plot_from_result_json_and_csv(tiny, tmp_path):
    from scalable_hrank.cli import main

    res, pred = tiny
    res["loss"].to_json(tmp_path / "r.json")
    out = tmp_path / "fig.png"
    assert main(["plot", str(tmp_path / "r.json"), "--out", str(out),
                 "--predicted-index", str(pred.loss)]) == 0
    assert out.stat().st_size > 0
    assert main(["plot", str(tmp_path / "r.json"), "--type", "curve",
                 "--out", str(tmp_path / "c.png")]) == 0
    (tmp_path / "s.csv").write_text("N,rank_loss,pred_loss\n10,5,5\n20,7,7\n")
    assert main(["plot", str(tmp_path / "s.csv"), "--x", "N", "--kinds", "loss",
                 "--out", str(tmp_path / "w.png")]) == 0
    assert (tmp_path / "w.png").stat().st_size > 0
    assert main(["plot", str(tmp_path / "missing.json"), "--out", str(out)]) == 2
    (tmp_path / "bad.json").write_text("{\"a\": 1}")
    assert main(["plot", str(tmp_path / "bad.json"), "--out", str(out)]) == 2


# ---- everything the command line writes -----------------------------------------------------

COLLECTED_HEADER = ["task", "status", "block", "kind", "n", "rank", "rank_low", "rank_high",
                    "guarantee", "certified", "confidence", "method", "matvecs", "seconds",
                    "bound"]


def _row(task, kind, n, rank, *, block="", status="ok", guarantee="certified", low=None,
         high=None, bound="", **settings):
    return {"task": task, "status": status, "block": block, "kind": kind, "n": n,
            "rank": rank if status == "ok" else "", "rank_low": rank if low is None else low,
            "rank_high": rank if high is None else high, "guarantee": guarantee,
            "certified": guarantee in ("exact", "certified"), "confidence": 1.0,
            "method": "sketch", "matvecs": 10, "seconds": 0.1, "bound": bound, **settings}


def _write_csv(path, rows):
    import csv

    cols = list(rows[0])
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    return path


def _block_table():
    rows = []
    for t, (block, n) in enumerate((("layernorm", 768), ("attn_value_bias", 384),
                                    ("mlp_bias", 1536))):
        rows.append(_row(t, "loss", n, n - 2, block=block))
        rows.append(_row(t, "outer", n, n // 2, block=block, bound=n // 2 + 1))
        rows.append(_row(t, "functional", n, 300, block=block, guarantee="bound", low=300,
                         high=n))
    rows[-1] = _row(2, "functional", 1536, "", block="mlp_bias", status="missing")
    return rows


def _axes_table():
    rows, task = [], 0
    for width in (2, 8, 32, 128, 512):
        for act in ("linear", "tanh"):
            for kind, frac in (("loss", 0.9), ("outer", 0.3), ("functional", 0.6)):
                n = 10 * width
                guarantee = "estimate" if (width == 512 and kind == "loss") else "certified"
                rank = int(frac * n)
                rows.append(_row(task, kind, n, rank, guarantee=guarantee,
                                 low=rank - 3 if guarantee == "estimate" else None,
                                 high=rank + 3 if guarantee == "estimate" else None,
                                 bound=int(frac * n) + 1 if act == "linear" else "",
                                 width=width, activation=act, samples=50))
            task += 1
    return rows


def test_rank_map_of_a_collected_table_with_blocks(tmp_path):
    from scalable_hrank.cli import main

    csv_path = _write_csv(tmp_path / "results.csv", _block_table())
    out = tmp_path / "map.png"
    assert main(["plot", str(csv_path), "--out", str(out)]) == 0
    fig = plots.plot_rank_map(_block_table())
    ax = fig.axes[0]
    texts = {t.get_text(): t.get_gid() for t in ax.texts}
    assert texts["766"] == "cell:certified"
    assert texts["192\n<= 193 (formula)"] == "cell:certified"  # formula bound under the rank
    assert texts[">=300"] == "cell:bound"  # a bound is marked differently
    assert texts["missing"] == "cell:missing"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["H_L", "H_O", "H_F"]
    assert ax.get_yticklabels()[0].get_text() == "layernorm (n=768)"
    image = ax.images[0].get_array()
    assert image[0, 0] == pytest.approx(766 / 768) and image[1, 1] == pytest.approx(0.5)
    assert all(t.get_fontsize() >= 9 for t in ax.texts)
    plots.pyplot().close(fig)


def test_collected_table_without_blocks_is_rank_against_the_axes(tmp_path):
    import json

    from scalable_hrank.cli import main

    rows = _axes_table()
    doc = {"num_tasks": 10, "rows": rows, "missing": [], "failed": []}
    (tmp_path / "results.json").write_text(json.dumps(doc))
    assert main(["plot", str(tmp_path / "results.json"), "--out",
                 str(tmp_path / "axes.png")]) == 0
    fig = plots.plot_collected(rows)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "width" and ax.get_xscale() == "log"  # 2..512: decades
    assert ax.get_yscale() == "log"
    gids = _gids(ax)
    assert gids.count("rank:loss") == 2  # one line per activation
    assert "bound:outer" in gids and "marker:bound" in gids and "marker:sound" in gids
    (line,) = [a for a in ax.lines if a.get_gid() == "rank:outer"
               and a.get_label().endswith("linear")]
    assert list(line.get_ydata()) == [6, 24, 96, 384, 1536]
    legend = ax.get_legend()
    assert legend is not None and legend.get_bbox_to_anchor().x0 > ax.bbox.x1 - 1  # outside
    assert "width" in ax.get_title() and "activation" in ax.get_title()
    plots.pyplot().close(fig)
    fig = plots.plot_collected(rows, x="width", kinds=["outer"])
    assert {a.get_gid() for a in fig.axes[0].lines} >= {"rank:outer"}
    plots.pyplot().close(fig)


def test_collected_table_with_nothing_finished_is_an_error(tmp_path, capsys):
    from scalable_hrank.cli import main

    rows = [_row(0, "loss", 10, "", status="missing"), _row(1, "loss", 10, "", status="failed")]
    assert main(["plot", str(_write_csv(tmp_path / "r.csv", rows)), "--out",
                 str(tmp_path / "f.png")]) == 2
    assert "no finished task" in capsys.readouterr().err
    (tmp_path / "empty.csv").write_text(",".join(COLLECTED_HEADER) + "\n")
    assert main(["plot", str(tmp_path / "empty.csv"), "--out", str(tmp_path / "f.png")]) == 2


def test_multi_kind_and_overlaid_results_each_with_their_threshold(tmp_path, capsys):
    import json

    from scalable_hrank.cli import main

    def rank(out, *extra):
        assert main(["rank", "--model", "mlp:8,5,3:tanh", "--data", "gaussian", "--samples",
                     "12", "--loss", "mse", "--method", "exact", "--out", str(out),
                     *extra]) == 0

    rank(tmp_path / "all.json", "--kind", "all")
    rank(tmp_path / "loose.json", "--kind", "loss", "--rtol", "1e-6")
    capsys.readouterr()
    out = tmp_path / "all.png"
    assert main(["plot", str(tmp_path / "all.json"), "--out", str(out)]) == 0
    assert out.stat().st_size > 5000
    doc = json.loads((tmp_path / "all.json").read_text())
    from scalable_hrank.result import RankResult

    results = [RankResult.from_dict(r) for r in doc["results"].values()]
    loose = RankResult.from_dict(json.loads((tmp_path / "loose.json").read_text()))
    fig = plots.plot_spectrum([*results, loose])
    ax = fig.axes[0]
    thresholds = sorted({round(a.get_ydata()[0], 20) for a in ax.lines
                         if a.get_gid() == "threshold"})
    assert len(thresholds) == 2  # the default one (shared by the three kinds) and 1e-6
    assert loose.tol == pytest.approx(max(thresholds))
    colors = [a.get_color() for a in ax.lines if str(a.get_gid()).startswith("spectrum:")]
    assert len(set(map(str, colors))) == 4  # distinct colours
    plots.pyplot().close(fig)
    assert main(["plot", str(tmp_path / "all.json"), str(tmp_path / "loose.json"),
                 "--type", "curve", "--out", str(tmp_path / "curves.png")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["plot", str(tmp_path / "all.json"), "--type", "map",
                 "--out", str(tmp_path / "x.png")]) == 2


def test_fonts_are_at_least_9pt_and_legends_outside(tiny):
    res, pred = tiny
    for fig in (plots.plot_spectrum(res["loss"], predicted_index=pred.loss),
                plots.plot_rank_curve([res[k] for k in ("loss", "outer", "functional")])):
        ax = fig.axes[0]
        texts = [*ax.get_xticklabels(), *ax.get_yticklabels(), ax.xaxis.label, ax.yaxis.label,
                 ax.title, *ax.get_legend().get_texts()]
        assert min(t.get_fontsize() for t in texts) >= 9
        assert ax.get_legend().get_bbox_to_anchor().x0 >= ax.bbox.x1 - 1
        assert ax.get_title()
        plots.pyplot().close(fig)


def test_density_legend_says_how_the_count_was_made():
    import scalable_hrank as hr

    x, y = gaussian(6, 5, 2, loss="mse", seed=0)
    model = mlp([5, 4, 2], seed=0)  # P = 28 > M = 12 outputs: H_O counted on its Gram matrix
    res = hr.estimate_rank(model, "mse", (x, y), "outer", method="density")
    assert res.extra["space"] == "outputs-dense" and res.certified
    fig = plots.plot_result_density(res)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("exact eigenvalues of the output-space Gram matrix" in t for t in labels)
    assert not any("SLQ" in t for t in labels) and "SLQ" not in ax.get_title()
    plots.pyplot().close(fig)
    res = hr.estimate_rank(model, "mse", (x, y), "functional", method="density",
                           density={"num_probes": 2})
    fig = plots.plot_result_density(res)
    assert "SLQ in parameter space" in fig.axes[0].get_title()
    plots.pyplot().close(fig)
