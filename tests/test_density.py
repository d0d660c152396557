"""method="density" on real models: accuracy, coverage over seeds, infeasibility, plots."""

from __future__ import annotations

import pytest
import torch

import scalable_hrank as hr
from scalable_hrank.cli import main
from scalable_hrank.data.digits import gaussian
from scalable_hrank.models.mlp import mlp

RTOL = 1e-3


@pytest.fixture(scope="module")
def problem():
    model = mlp((20, 30, 30, 8))  # n = 1740, linear: H_O has rank 160, H_F 896
    data = gaussian(40, 20, 8)
    exact = hr.exact_ranks(model, "mse", data, kinds=("loss", "outer", "functional"))
    # at rtol = 1e-3 a density count can resolve the threshold (the default P eps cannot)
    coarse = hr.exact_ranks(model, "mse", data, kinds=("loss", "outer", "functional"),
                            rtol=RTOL)
    assert all(coarse[k].rank == exact[k].rank for k in ("outer", "functional"))
    return model, data, exact


def test_interval_covers_dense_rank_over_20_seeds(problem) -> None:
    model, data, exact = problem
    covered, errors = 0, []
    for seed in range(20):
        res = hr.estimate_rank(model, "mse", data, "outer", method="density", seed=seed,
                               rtol=RTOL, density={"num_probes": 4, "output_space": False})
        assert res.method == "density" and not res.certified and res.extra["converged"]
        assert res.guarantee == "estimate" and res.rank_low <= res.rank <= res.rank_high
        assert res.confidence == 0.95 and res.extra["space"] == "parameters"
        covered += res.rank_low <= exact["outer"].rank <= res.rank_high
        errors.append(abs(res.extra["estimate"] - exact["outer"].rank) / exact["outer"].rank)
    assert covered >= 18, covered
    assert sum(errors) / len(errors) < 0.05


def test_outer_counted_exactly_from_the_output_gram(problem) -> None:
    model, data, exact = problem
    res = hr.estimate_rank(model, "mse", data, "outer", method="density", seed=0)
    assert res.extra["space"] == "outputs-dense" and res.extra["counted_size"] == 40 * 8
    assert res.certified and res.rank == res.rank_low == res.rank_high == exact["outer"].rank
    top = torch.tensor(exact["outer"].eigenvalues[:160])
    assert torch.allclose(torch.tensor(res.eigenvalues[:160]), top, rtol=1e-9)
    assert res.matvecs <= 40 * 8 + 3 + 10  # M products, the symmetry probe, the H_L scale
    weights = torch.tensor(res.extra["weights"], dtype=torch.float64)
    assert weights.shape == (1, 40 * 8 + 1) and abs(float(weights.sum()) - 1.0) < 1e-12
    assert abs(float(weights[0, -1]) - (1740 - 320) / 1740) < 1e-12  # the P - M zeros


def test_outer_slq_in_the_output_space(problem, monkeypatch) -> None:
    from scalable_hrank import density

    monkeypatch.setattr(density, "DENSE_OUTPUT_MAX", 0)
    model, data, exact = problem
    res = hr.estimate_rank(model, "mse", data, "outer", method="density", seed=0,
                           rtol=RTOL, density={"num_probes": 4})
    truth = exact["outer"].rank
    assert res.extra["space"] == "outputs" and res.extra["converged"] and not res.certified
    assert abs(res.extra["estimate"] - truth) <= 0.02 * truth
    assert res.rank_low <= truth <= res.rank_high <= 40 * 8
    weights = torch.tensor(res.extra["weights"], dtype=torch.float64)
    assert torch.allclose(weights.sum(1), torch.ones(4, dtype=torch.float64))


def test_functional_within_5_percent(problem) -> None:
    model, data, exact = problem
    res = hr.estimate_rank(model, "mse", data, "functional", method="density", seed=0,
                           rtol=RTOL)
    truth = exact["functional"].rank
    assert res.extra["converged"] and res.guarantee == "estimate"
    assert abs(res.extra["estimate"] - truth) <= 0.05 * truth
    assert res.rank_low <= truth <= res.rank_high


def test_default_threshold_below_what_slq_resolves_is_only_a_bound(problem) -> None:
    # tau = P eps sigma_max: null-space Ritz values cannot be told from eigenvalues that
    # small, so the count at tau is not reported; the count of what the depth resolves is
    model, data, exact = problem
    res = hr.estimate_rank(model, "mse", data, "functional", method="density", seed=0,
                           max_matvecs=6000)
    truth = exact["functional"].rank
    assert res.guarantee == "bound" and not res.extra["feasible"]
    assert res.rank == res.rank_low <= truth <= res.rank_high == res.n
    assert res.rank_low >= 0.9 * truth


def test_infeasible_spread_is_reported_not_guessed(problem) -> None:
    model, data, exact = problem
    res = hr.estimate_rank(model, "mse", data, "loss", method="density", max_matvecs=400,
                           density={"num_probes": 4})
    assert not res.extra["converged"] and not res.extra["feasible"]
    assert res.guarantee == "bound"
    assert res.extra["matvecs_needed"] > 400
    assert res.rank == res.rank_low <= exact["loss"].rank <= res.rank_high == res.n
    assert any("infeasible within the budget" in note for note in res.notes)
    assert any(note.startswith("bound: at ") for note in res.notes)
    assert any("bound_from_parts" in note for note in res.notes)  # how to close it
    # the lower bound counts what the depth resolves: well above the deflated count, and
    # at most the dense count above that magnitude
    at = res.extra["resolved_threshold"]
    assert at > res.tol and res.confidence == 0.95
    eig = torch.tensor(exact["loss"].eigenvalues, dtype=torch.float64).abs()
    assert res.extra["deflated_count"] < res.rank_low <= int((eig > at).sum())
    assert res.rank_low >= 0.9 * int((eig > 2 * at).sum())


def test_parts_close_an_infeasible_loss_count_from_above(problem) -> None:
    model, data, exact = problem
    # at rtol 3e-3 and 6000 products: H_F at tau / 2 converges in about 3400, H_L would
    # need over 9000
    density, budget, kw = {"num_probes": 4}, 6000, {"rtol": 3e-3, "method": "density"}
    truth = hr.exact_rank(model, "mse", data, "loss", rtol=3e-3).rank
    plain = hr.estimate_rank(model, "mse", data, "loss", max_matvecs=budget, density=density,
                             **kw)
    res = hr.estimate_rank(model, "mse", data, "loss", max_matvecs=budget,
                           density={**density, "bound_from_parts": True}, **kw)
    parts = res.extra["parts_bound"]
    assert parts["outer"]["space"] == "outputs-dense" and parts["functional"]["feasible"]
    # rank(H_L) <= rank(H_O) + rank(H_F), each counted at tau / 2
    assert res.rank_high == parts["outer"]["rank_high"] + parts["functional"]["rank_high"]
    assert res.rank_low == plain.rank_low <= truth <= res.rank_high < res.n
    assert res.rank_low > 0.8 * truth
    assert res.guarantee == "bound" and res.rank == res.rank_low
    assert res.extra["midpoint"] == (res.rank_low + res.rank_high) / 2
    assert res.confidence == pytest.approx(0.925)
    assert res.matvecs == plain.matvecs + parts["outer"]["matvecs"] + parts["functional"][
        "matvecs"]
    assert not res.extra["feasible"]
    assert not any("bound_from_parts" in note for note in res.notes)
    # only for an infeasible H_L count
    conv = hr.estimate_rank(model, "mse", data, "functional", max_matvecs=budget,
                            density={**density, "bound_from_parts": True}, **kw)
    assert conv.extra["feasible"] and "parts_bound" not in conv.extra
    # an infeasible part leaves the interval open and says so
    starved = hr.estimate_rank(model, "mse", data, "loss", max_matvecs=400,
                               density={**density, "bound_from_parts": True}, **kw)
    assert not starved.extra["parts_bound"]["functional"]["feasible"]
    assert starved.rank_high == starved.n and starved.rank == starved.rank_low
    assert any(note.startswith("no upper bound from the parts") for note in starved.notes)


def test_density_plot_from_api_and_cli(problem, tmp_path) -> None:
    pytest.importorskip("matplotlib")
    from scalable_hrank.plots import plot_result_density

    model, data, _ = problem
    res = hr.estimate_rank(model, "mse", data, "outer", method="density", seed=1,
                           rtol=RTOL, density={"num_probes": 2, "output_space": False})
    fig = plot_result_density(res)
    gids = {artist.get_gid() for artist in fig.axes[0].get_children()}
    assert {"density", "threshold"} <= gids
    path = tmp_path / "r.json"
    res.to_json(path)
    assert main(["plot", str(path), "--out", str(tmp_path / "d.png")]) == 0
    assert (tmp_path / "d.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="no SLQ nodes"):
        plot_result_density(hr.exact_rank(model, "mse", data, "outer"))


def test_float32_density_runs_on_float32_products(problem) -> None:
    model, data, exact = problem
    res = hr.estimate_rank(model, "mse", data, "outer", method="density", seed=0,
                           dtype=torch.float32, rtol=RTOL, density={"num_probes": 4})
    assert res.dtype == "torch.float32" and res.guarantee in ("estimate", "certified")
    assert res.rank_low <= exact["outer"].rank <= res.rank_high


def test_density_run_resumes_from_checkpoints_to_the_same_answer(problem, tmp_path) -> None:
    from scalable_hrank.checkpoint import load_checkpoint, save_checkpoint

    model, data, _ = problem
    kw = {"method": "density", "seed": 3, "rtol": RTOL, "density": {"num_probes": 4}}
    states = []
    full = hr.estimate_rank(model, "mse", data, "functional", **kw,
                            on_block=lambda s: states.append(s.snapshot()))
    assert len(states) >= 3
    for i in (0, len(states) // 2, len(states) - 1):  # interrupted at several points
        path = tmp_path / f"slq{i}.ckpt"
        save_checkpoint(path, states[i], fingerprint="test")
        again = hr.estimate_rank(model, "mse", data, "functional", **kw,
                                 resume_state=load_checkpoint(path, fingerprint="test"))
        assert again.extra["estimate"] == full.extra["estimate"]
        assert (again.rank_low, again.rank_high) == (full.rank_low, full.rank_high)
        assert again.extra["num_steps"] == full.extra["num_steps"]
