"""The Huber point fit and its bootstrap (the non-Bayesian baseline of benchmarks/bench_fit.py).

Tolerances were measured on the shared small world (draw_world(4, seed=11)): alpha within
0.045 of the truth, E within 0.11, log T within 0.09 where T >= 0.1, held-out r 0.998 and
median relative error 1.3 %; each bound below leaves a margin of about 2x.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bayescale.inference import bootstrap as bs
from bayescale.laws import power as laws
from bayescale.evaluate.check import check_holdout
from bayescale.errors import InputError
from bayescale.data.grid import select_split
from bayescale.evaluate.predict import predict
from bayescale.data.simulate import true_params

RESAMPLES = 50


@pytest.fixture(scope="module")
def point(small_grid):
    return bs.point_fit(small_grid)


@pytest.fixture(scope="module")
def boot(small_grid, point):
    return bs.bootstrap_fit(small_grid, resamples=RESAMPLES, point=point, seed=3)


def test_huber_is_quadratic_inside_delta_and_linear_beyond():
    r = jnp.array([-0.01, -1e-3, 0.0, 5e-4, 0.02])
    expected = [1e-3 * (0.01 - 5e-4), 0.5e-6, 0.0, 0.5 * 25e-8, 1e-3 * (0.02 - 5e-4)]
    np.testing.assert_allclose(bs.huber(r, 1e-3), expected, rtol=1e-6)


@pytest.mark.parametrize("law", ["transfer", "linear", "independent"])
def test_fast_objective_and_gradient_match_the_law_and_autodiff(small_grid, law):
    problem = bs.fit_problem(small_grid)
    rng = np.random.default_rng(0)
    theta = bs.initial_params(problem, law)[3, 1] + 0.3 * rng.standard_normal(4 + 2 * len(problem.sources))
    w = problem.observed[:, 1] * rng.integers(0, 3, problem.d.shape[0])
    with jax.enable_x64(True):
        d = jnp.asarray(problem.d)
        has_d = d > 0
        log_d = jnp.log(jnp.where(has_d, d, 1.0))
        col = jnp.asarray(problem.self_mask[:, 1])
        y, w = jnp.asarray(problem.log_loss[:, 1]), jnp.asarray(w)
        reference = functools.partial(bs.huber_objective, d=d, y=y, w=w, floor=problem.floor[1], scale=problem.scale[1], self_col=col, law=law, delta=bs.DELTA)
        value, grad = bs.huber_value_and_grad(jnp.asarray(theta), y, w, log_d, has_d, d, col, problem.floor[1], problem.scale[1], law, bs.DELTA)
        np.testing.assert_allclose(value, reference(jnp.asarray(theta)), rtol=1e-12)
        np.testing.assert_allclose(grad, jax.grad(reference)(jnp.asarray(theta)), rtol=1e-9, atol=1e-12)


def test_huber_objective_decreases_from_the_initialisation(point):
    assert np.all(np.isfinite(point.objective))
    assert np.all(point.objective < 0.5 * point.initial_objective)
    assert np.all(point.iterations >= 1)


def test_point_fit_recovers_the_true_law(small_grid, point):
    draws = point.draws
    truth = true_params(small_grid, draws.data_scale)
    assert draws.n_draws == 1
    np.testing.assert_allclose(draws.alpha[0], truth["alpha"].values, atol=0.1)
    np.testing.assert_allclose(draws.E[0], truth["E"].values, atol=0.2)
    big = (draws.self_mask == 0) & (truth["T"].values >= 0.1)
    assert big.sum() >= 4
    assert np.abs(np.log(draws.T[0] / truth["T"].values))[big].max() < 0.2
    # The residual noise is the simulator's sigma (1-2.5 % of the loss) to within a factor 1.5.
    assert np.all(np.abs(np.log(draws.sigma[0] / truth["sigma"].values)) < np.log(1.5))
    scores = check_holdout(draws, small_grid)
    assert scores["pearson_r"] >= 0.99 and scores["median_abs_rel_error"] < 0.03


def test_bootstrap_returns_one_finite_draw_per_replicate(small_grid, boot):
    k = small_grid.sizes["source"]
    assert boot.n_draws == RESAMPLES
    assert boot.T.shape == boot.beta.shape == (RESAMPLES, k, k)
    for name in ("E", "A", "alpha", "x0", "sigma", "T", "beta"):
        assert np.all(np.isfinite(getattr(boot, name))), name
    assert np.all(boot.T[:, boot.self_mask == 1] == 1) and np.all(boot.beta[:, boot.self_mask == 1] == 1)
    assert np.all((boot.beta > 0) & (boot.beta <= 1)) and np.all(boot.sigma > 0)
    assert np.all(boot.alpha.std(axis=0) > 0)  # the replicates differ


def test_bootstrap_draws_work_with_check_and_predict(small_grid, boot):
    scores = check_holdout(boot, small_grid)
    assert scores["pearson_r"] >= 0.99
    assert 0.6 <= scores["coverage_90"] <= 1.0
    out = predict(boot, {s: 40.0 for s in boot.sources})
    assert set(out["targets"]) == set(boot.targets)
    assert all(t["lo"] < t["median"] < t["hi"] for t in out["targets"].values())


def test_resample_weights_keep_the_size_of_the_data():
    observed = np.ones((6, 2))
    observed[0, 1] = 0.0
    rng = np.random.default_rng(0)
    runs = bs.resample_weights(observed, 20, "runs", rng)
    assert runs.shape == (20, 2, 6)
    assert np.all(runs[:, 0].sum(axis=1) == 6) and np.all(runs[:, 1, 0] == 0)
    np.testing.assert_array_equal(runs[:, 0, 1:], runs[:, 1, 1:])  # a run's cells move together
    cells = bs.resample_weights(observed, 20, "cells", rng)
    assert np.all(cells[:, 0].sum(axis=1) == 6) and np.all(cells[:, 1].sum(axis=1) == 5) and np.all(cells[:, 1, 0] == 0)


def test_bootstrap_by_cells_also_runs(small_grid, point):
    draws = bs.bootstrap_fit(small_grid, resamples=4, resample="cells", point=point)
    assert draws.n_draws == 4 and np.all(np.isfinite(draws.T))


@pytest.mark.parametrize("resamples", [0, -3, 2.5, True])
def test_bad_resample_count_is_refused(small_grid, point, resamples):
    with pytest.raises(InputError, match="^resamples must be an integer >= 1"):
        bs.bootstrap_fit(small_grid, resamples=resamples, point=point)


def test_bad_options_are_refused(small_grid, point):
    with pytest.raises(InputError, match="^resample must be one of"):
        bs.bootstrap_fit(small_grid, resamples=2, resample="targets", point=point)
    with pytest.raises(InputError, match="^delta must be a positive number"):
        bs.point_fit(small_grid, delta=0.0)
    with pytest.raises(InputError, match="unknown law"):
        bs.point_fit(small_grid, law="cubic")
    with pytest.raises(InputError, match="another grid or with another law"):
        bs.bootstrap_fit(small_grid, resamples=2, law="linear", point=point)


def test_empty_grid_is_refused(small_grid):
    with pytest.raises(InputError, match="no runs"):
        bs.point_fit(small_grid.isel(run=slice(0, 0)))
    with pytest.raises(InputError, match="no runs with split == 'fit'"):
        bs.bootstrap_fit(select_split(small_grid, "holdout"), resamples=2)
