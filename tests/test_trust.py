"""What a result promises: its guarantee, the one threshold rule, the noise floor, bad data."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import scalable_hrank as hr
from scalable_hrank.errors import InputError, NonFiniteError, NumericalWarning
from scalable_hrank.linalg import krylov_rank
from scalable_hrank.result import GUARANTEES, RankResult
from scalable_hrank.threshold import NOISE_MARGIN, default_rtol, noise_floor, noise_limited
from tests.dense_reference import gaussian_data, linear_mlp
from tests.linalg.planted import gapped_spectrum, planted


def small_case(n_samples: int = 20):
    model = linear_mlp([8, 6, 6, 3], seed=1)
    return model, "mse", gaussian_data(n_samples, 8, 3, "mse", seed=2)


def test_guarantee_of_each_method_and_its_meaning() -> None:
    model, loss, data = small_case()
    exact = hr.exact_rank(model, loss, data, "loss")
    assert exact.guarantee == "exact" and exact.rank_low == exact.rank == exact.rank_high
    sk = hr.estimate_rank(model, loss, data, "loss", method="sketch")
    assert sk.guarantee == "certified" and sk.certified and sk.rank == exact.rank
    # a budget far too small: only a bound, and rank is its lower end
    low = hr.estimate_rank(model, loss, data, "loss", method="sketch", max_matvecs=20)
    assert low.guarantee == "bound" and not low.certified
    assert low.rank == low.rank_low <= exact.rank <= low.rank_high
    assert not low.reliable and sk.reliable and exact.reliable


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_guarantee_round_trips_through_json(guarantee: str) -> None:
    res = RankResult(rank=3, n=10, kind="loss", method="density", tol=1e-3, scale=1.0,
                     matvecs=5, seconds=0.1, certified=guarantee in ("exact", "certified"),
                     rank_low=2, rank_high=4, confidence=0.95, guarantee=guarantee)
    back = RankResult.from_json(res.to_json())
    assert back.guarantee == guarantee and back == res


@pytest.mark.parametrize(("fields", "expected"), [
    (dict(method="exact", certified=True), "exact"),
    (dict(method="sketch", certified=True), "certified"),
    (dict(method="sketch", certified=False), "bound"),
    (dict(method="density", certified=False, confidence=0.95, extra={"feasible": True}),
     "estimate"),
    (dict(method="density", certified=False, confidence=0.95, extra={"feasible": False}),
     "bound"),
])
def test_guarantee_derived_for_old_json(fields: dict, expected: str) -> None:
    old = dict(rank=3, n=10, kind="loss", tol=1e-3, scale=1.0, matvecs=5, seconds=0.1,
               rank_low=3, rank_high=3, **fields)
    assert "guarantee" not in old
    assert RankResult.from_json(json.dumps(old)).guarantee == expected


def test_unknown_guarantee_is_refused() -> None:
    with pytest.raises(ValueError, match="guarantee"):
        RankResult(rank=1, n=2, kind="loss", method="exact", tol=0.1, scale=1.0, matvecs=0,
                   seconds=0.0, certified=True, rank_low=1, rank_high=1, guarantee="sure")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n", [3, 50, 10_000, 10**9])
def test_krylov_default_threshold_is_the_one_rule(n: int, dtype: torch.dtype) -> None:
    p = planted(gapped_spectrum(60, 12, seed=0))
    res = krylov_rank(p.matmat(dtype), 60, generator=torch.Generator().manual_seed(0),
                      dtype=dtype)
    assert res.tol == pytest.approx(default_rtol(60, dtype) * res.sigma_max_estimate)
    eps = torch.finfo(dtype).eps
    rule = default_rtol(n, dtype)
    assert rule >= NOISE_MARGIN * eps  # a decade above round-off
    assert rule == min(max(n, NOISE_MARGIN) * eps, eps ** 0.5)


def test_all_methods_share_the_threshold_and_h_l_scale() -> None:
    model, loss, data = small_case()
    for kind in ("loss", "outer", "functional"):
        ex = hr.exact_rank(model, loss, data, kind)
        for method in ("sketch", "lanczos", "density"):
            res = hr.estimate_rank(model, loss, data, kind, method=method)
            # the same rule at the same scale: sigma_max(H_L) estimated to a few percent
            assert res.tol == pytest.approx(ex.tol, rel=0.05), (kind, method)


def test_float32_below_round_off_is_unreliable_not_a_lower_bound() -> None:
    # the reproduction: float32 products, rtol = 1e-9 (far below eps32)
    model = linear_mlp([12, 10, 10, 4], seed=3)
    data = gaussian_data(30, 12, 4, "mse", seed=4)
    truth = hr.exact_rank(model, "mse", data, "loss", rtol=1e-9).rank
    with pytest.warns(NumericalWarning, match="float64"):
        res = hr.estimate_rank(model, "mse", data, "loss", method="sketch",
                               dtype=torch.float32, rtol=1e-9)
    assert res.guarantee == "unreliable" and not res.certified and not res.reliable
    assert res.rank_low == 0 <= truth <= res.rank_high == res.n
    assert res.noise_floor >= torch.finfo(torch.float32).eps * res.scale
    assert any("rtol" in note and "float64" in note for note in res.notes)
    # the same run in float64 is certified at that threshold
    with warnings.catch_warnings():
        warnings.simplefilter("error", NumericalWarning)
        ok = hr.estimate_rank(model, "mse", data, "loss", method="sketch", rtol=1e-9)
    assert ok.guarantee == "certified" and ok.rank == truth


def test_density_at_the_noise_floor_is_unreliable() -> None:
    model, loss, data = small_case()
    with pytest.warns(NumericalWarning):
        res = hr.estimate_rank(model, loss, data, "functional", method="density",
                               dtype=torch.float32, rtol=1e-8,
                               density={"output_space": False})
    assert res.guarantee == "unreliable" and res.rank_low == 0 and res.rank_high == res.n


def test_default_threshold_is_never_at_the_noise_floor() -> None:
    for n in (1, 5, 10, 11, 1000):
        for dtype in (torch.float32, torch.float64):
            scale = 3.3
            tol = default_rtol(n, dtype) * scale
            assert not noise_limited(tol, noise_floor(scale, dtype))
    assert noise_limited(9.9 * 2.0**-52, noise_floor(1.0, torch.float64))


def test_noise_floor_is_round_off_times_scale_or_measured() -> None:
    assert noise_floor(2.0, torch.float32) == 2.0 * torch.finfo(torch.float32).eps
    assert noise_floor(2.0, torch.float64, measured=1e-9) == 1e-9
    assert noise_floor(2.0, torch.float64, measured=float("nan")) == 2.0 * 2.0 ** -52


@pytest.mark.parametrize("where", ["inputs", "targets"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_data_is_named_with_batch_and_tensor(where: str, value: float) -> None:
    model, loss, (x, y) = small_case()
    x, y = x.clone(), y.clone()
    (x if where == "inputs" else y)[7, 1] = value
    batches = [(x[:10], y[:10]), (x[10:], y[10:])]
    with pytest.raises(InputError, match=rf"batch 0 .*non-finite.*{where}") as info:
        hr.estimate_rank(model, loss, batches, "loss", method="sketch")
    assert "deterministic" not in str(info.value)
    assert isinstance(info.value, NonFiniteError) and info.value.batch == 0


def test_non_finite_in_a_mapping_input_names_the_key() -> None:
    from scalable_hrank.operators.batches import BatchSource

    x = {"ids": torch.ones(4, 3), "mask": torch.tensor([[1.0, float("nan"), 0.0]] * 4)}
    with pytest.raises(InputError, match=r"batch 1 .*inputs\['mask'\]"):
        BatchSource([({"ids": torch.ones(4, 3), "mask": torch.ones(4, 3)}, torch.zeros(4)),
                     (x, torch.zeros(4))], torch.float64, torch.device("cpu"))
