"""The law's error past its data (bayescale.inference.extrapolation) against independent
computations: the scale's posterior against scipy's multivariate normal and a quadrature of
its definition, its recovery of a known scale, and the term every prediction adds."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import scipy.stats
import xarray as xr

from bayescale.errors import InputError
from bayescale.evaluate.predict import predict
from bayescale.inference import extrapolation
from bayescale.inference.fit import calibrate_extrapolation
from bayescale.inference.posterior import law_draws, load_posterior, save_posterior, validate_posterior
from bayescale.laws.noise import add_observation_noise, extrapolation_distance, with_extrapolation_error


def test_scale_posterior_is_the_rank_one_normal_times_the_half_normal_prior():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 0.1, (5, 3))
    z[1, 2] = np.nan  # an unobserved cell drops out of its target's density
    v = rng.uniform(0.002, 0.01, (5, 3))
    t = np.array([0.2, 0.5, 0.7, 1.0, 1.4])
    weights = extrapolation.scale_posterior(z, v, t)
    assert weights.sum() == pytest.approx(1.0)
    log_post = []
    for s in extrapolation.SCALE_GRID:
        total = scipy.stats.halfnorm.logpdf(s, scale=extrapolation.PRIOR_SCALE)
        for j in range(3):
            ok = np.isfinite(z[:, j])
            cov = np.diag(v[ok, j]) + s**2 * np.outer(t[ok], t[ok])
            total += scipy.stats.multivariate_normal.logpdf(z[ok, j], cov=cov)
        log_post.append(total)
    expected = np.exp(np.array(log_post) - max(log_post))
    np.testing.assert_allclose(weights, expected / expected.sum(), rtol=1e-8, atol=1e-14)


@pytest.mark.parametrize("truth", [0.0, 0.08])
def test_a_known_slope_error_is_recovered(truth):
    """Misses drawn from the model itself (200 targets x 3 runs): the posterior mean lands within
    three posterior standard deviations of the scale they were drawn with."""
    rng = np.random.default_rng(3)
    targets, t = 200, np.array([0.3, 0.7, 1.2])
    v = np.full((3, targets), 0.02**2)
    eps = rng.normal(0, truth, targets) if truth else np.zeros(targets)
    z = eps[None, :] * t[:, None] + rng.normal(0, 0.02, (3, targets))
    weights = extrapolation.scale_posterior(z, v, t)
    mean = np.sum(weights * extrapolation.SCALE_GRID)
    sd = np.sqrt(np.sum(weights * (extrapolation.SCALE_GRID - mean) ** 2))
    assert abs(mean - truth) < 3 * sd + 1e-3
    assert sd < 0.01  # 200 targets pin it down


def test_slope_errors_follow_the_scale_posterior():
    weights = np.zeros_like(extrapolation.SCALE_GRID)
    weights[np.searchsorted(extrapolation.SCALE_GRID, 0.05)] = 1.0  # a point mass at s = 0.05
    eps, scale = extrapolation.slope_errors(weights, (2, 2000), 3, seed=0)
    assert eps.shape == (2, 2000, 3) and np.all(scale == pytest.approx(0.05))
    # 12000 normal draws: their sd is within 4 standard errors (sd / sqrt(2n)) of 0.05
    assert abs(eps.std() - 0.05) < 4 * 0.05 / np.sqrt(2 * eps.size)


def test_the_term_is_nothing_inside_the_fitted_budgets_and_grows_with_log_distance(small_draws):
    reach = 40.0
    slope = np.random.default_rng(0).normal(0, 0.1, (small_draws.n_draws, len(small_draws.targets)))
    draws = dataclasses.replace(small_draws, slope_error=slope, reach=reach)
    amounts = np.array([[10.0, 10.0, 10.0, 10.0], [20.0, 20.0, 20.0, 20.0], [40.0, 40.0, 0.0, 0.0]])  # totals 40, 80, 80
    np.testing.assert_allclose(extrapolation_distance(amounts, reach), [0.0, np.log(2.0), np.log(2.0)])
    base = np.zeros((small_draws.n_draws, 3, len(small_draws.targets)))
    out = with_extrapolation_error(base, draws, amounts)
    np.testing.assert_array_equal(out[:, 0], 0.0)
    np.testing.assert_allclose(out[:, 1], slope * np.log(2.0))
    np.testing.assert_allclose(out[:, 2], out[:, 1])  # a curve-level error: shared by the runs of one draw
    # the predictive adds it to the noise (same stream: the difference is the term alone)
    # (the same amounts on both sides: they also set each run's noise sd, noise_slope)
    plain = add_observation_noise(base, dataclasses.replace(small_draws, slope_error=None), np.random.default_rng(1), amounts)
    widened = add_observation_noise(base, draws, np.random.default_rng(1), amounts)
    np.testing.assert_allclose(widened - plain, out)
    # and predict widens past the reach, not inside it
    inside = predict(draws, {s: 10.0 for s in draws.sources})["targets"]
    same = predict(small_draws, {s: 10.0 for s in draws.sources})["targets"]
    outside = predict(draws, {s: 200.0 for s in draws.sources})["targets"]
    outside_plain = predict(small_draws, {s: 200.0 for s in draws.sources})["targets"]
    for target in draws.targets:
        assert inside[target] == same[target]
        assert outside[target]["hi"] / outside[target]["lo"] > outside_plain[target]["hi"] / outside_plain[target]["lo"]


def test_a_fit_carries_its_calibration_and_the_file_keeps_it(small_fit, tmp_path):
    record = json.loads(small_fit.attrs["extrapolation"])
    assert record["kind"] == "leave-future-out" and record["scored_cells"] > 0
    assert record["scale_q05"] <= record["scale_median"] <= record["scale_q95"]
    path = tmp_path / "fit.nc"
    save_posterior(small_fit, path)
    again = load_posterior(path)
    draws = law_draws(again)
    assert draws.slope_error.shape == (draws.n_draws, len(draws.targets))
    broken = again.copy()
    post = broken["posterior"].to_dataset()
    del post.attrs["extrapolation_reach"]
    broken["posterior"] = xr.DataTree(post)
    with pytest.raises(InputError, match="extrapolation_reach"):
        validate_posterior(broken, "fit.nc")


def test_the_fit_reach_is_the_largest_fitted_total(small_grid, small_draws):
    fit_runs = small_grid.isel(run=np.flatnonzero(small_grid["split"].values == "fit"))
    assert extrapolation.fit_reach(small_grid) == pytest.approx(float(fit_runs["data"].sum("source").max()))
    assert small_draws.reach == pytest.approx(extrapolation.fit_reach(small_grid))


def test_a_grid_of_one_budget_gets_no_slope_error_and_says_why(small_fit, small_grid):
    one_budget = small_grid.isel(run=np.flatnonzero(small_grid["data"].sum("source").values
                                                    == small_grid["data"].sum("source").values[0]))

    def never(_):
        raise AssertionError("no future to leave out: nothing should be fitted")

    plain = small_fit.copy()
    post = plain["posterior"].to_dataset().drop_vars("slope_error")
    plain["posterior"] = xr.DataTree(post)
    out = calibrate_extrapolation(one_budget, plain, never)
    assert "slope_error" not in out["posterior"].data_vars
    assert json.loads(out.attrs["extrapolation"])["kind"].startswith("none")
