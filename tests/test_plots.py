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
    assert _gids(ax).count("predicted") == 3 and _gids(ax).count("threshold") == 3
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
