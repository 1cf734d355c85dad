"""Stacking (bayescale.inference.stacking) against independent computations: the weights
against a general-purpose optimiser, a run's density against scipy's multivariate normal,
the split and the draw shares against their definitions."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.optimize
import scipy.stats

from bayescale.data.grid import make_grid
from bayescale.inference import stacking
from bayescale.laws.transfer import loss_draws
from tests.bayescale.optimise.test_allocate import make_draws


def test_weights_maximise_the_log_score_found_by_an_independent_optimiser():
    rng = np.random.default_rng(0)
    lpd = rng.normal(0, 1, (40, 3)) + np.array([0.0, 0.4, -0.3])
    w = stacking.stacking_weights(lpd)
    assert w.min() >= 0 and w.sum() == pytest.approx(1.0)

    def negative(z):  # softmax parameters: an unconstrained, independent route to the same optimum
        v = np.exp(z - z.max())
        v /= v.sum()
        return -np.sum(np.log(np.exp(lpd) @ v))

    best = scipy.optimize.minimize(negative, np.zeros(3), method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000})
    ours = -np.sum(np.log(np.exp(lpd) @ w))
    assert ours <= best.fun + 1e-6
    # a member that is better on every point takes all the weight
    dominated = np.column_stack([lpd[:, 0], lpd[:, 0] - 1.0])
    np.testing.assert_allclose(stacking.stacking_weights(dominated), [1.0, 0.0], atol=1e-6)


@pytest.mark.parametrize("falling", [False, True])
def test_run_density_is_the_multivariate_normal_with_the_run_effect(falling):
    """With a falling misfit (``noise_slope``) each run's sd is sigma (B / noise_reach)^-gamma, B its
    total clipped at noise_low: the leave-future-out score must read it where the fit does."""
    draws = make_draws(S=30, seed=1)
    rng = np.random.default_rng(2)
    draws = dataclasses.replace(draws, sigma=rng.uniform(0.02, 0.08, draws.E.shape), sigma_run=rng.uniform(0.0, 0.05, 30))
    if falling:
        draws = dataclasses.replace(draws, noise_slope=rng.uniform(0.5, 1.5, 30), noise_reach=30.0, noise_low=20.0)
    amounts = rng.uniform(1, 40, (4, len(draws.sources)))
    loss = np.exp(np.log(loss_draws(draws, amounts)[0]) + rng.normal(0, 0.05, (4, len(draws.targets))))
    loss[1, 2] = np.nan  # a cell not evaluated
    runs = make_grid([f"r{i}" for i in range(4)], list(draws.sources), list(draws.targets), amounts, loss)
    got = stacking.run_log_density(draws, runs)
    mean = np.asarray(loss_draws(draws, amounts, log=True), dtype=np.float64)  # as the library reads the law (float32 log)
    for n in range(4):
        ok = np.isfinite(loss[n])
        total = max(float(runs["data"].isel(run=n).sum()), 20.0)  # the grid holds float32
        per_draw = []
        for s in range(draws.n_draws):
            factor = (total / 30.0) ** -draws.noise_slope[s] if falling else 1.0
            cov = np.diag((draws.sigma[s, ok] * factor) ** 2) + draws.sigma_run[s] ** 2
            per_draw.append(scipy.stats.multivariate_normal(mean[s, n, ok], cov).logpdf(np.log(loss[n, ok])))
        expected = scipy.special.logsumexp(per_draw) - np.log(draws.n_draws)
        assert got[n] == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_the_future_split_scores_the_largest_budgets_and_keeps_two_to_fit():
    budgets = [1, 1, 2, 2, 4, 4, 8, 8, 8, 16]
    grid = make_grid([f"r{i}" for i in range(10)] + ["h"], ["a"], ["a"], np.array(budgets + [32.0])[:, None],
                     np.ones((11, 1)), split=["fit"] * 10 + ["holdout"])
    split, how = stacking.future_split(grid)
    assert "h" not in split["run"].values  # the grid's own held-out runs play no part
    scored = split["split"].values == "holdout"
    # at least 20 % of the 10 fit runs: the top budget (16) has 1 run, adding 8 makes 4
    np.testing.assert_array_equal(np.asarray(budgets)[scored], [8, 8, 8, 16])
    assert how["kind"] == "leave-future-out" and how["fitted_up_to_budget"] == 4.0 and how["scored_runs"] == 4
    one_budget = make_grid([f"r{i}" for i in range(10)], ["a", "b"], ["a"], np.column_stack([np.linspace(0, 1, 10), np.linspace(1, 0, 10)]),
                           np.ones((10, 1)))
    split, how = stacking.future_split(one_budget, seed=3)
    assert how["kind"].startswith("random runs") and (split["split"].values == "holdout").sum() == 2
    # shares of 1B tokens sum to totals that differ in the 16th digit: still one budget (RegMix's)
    rng = np.random.default_rng(0)
    shares = rng.dirichlet(np.ones(3), 10)
    tokens = make_grid([f"r{i}" for i in range(10)], ["a", "b", "c"], ["a"], shares * 1e9, np.ones((10, 1)))
    assert np.unique(tokens["data"].sum("source").values).size > 2  # the float noise is there
    split, how = stacking.future_split(tokens, seed=3)
    assert how["kind"].startswith("random runs")


def test_shares_are_whole_numbers_that_sum_to_the_total_and_follow_the_weights():
    n = stacking.shares(np.array([0.5, 0.3, 0.2 - 1e-9, 1e-9]), 1001)
    assert n.sum() == 1001
    assert np.all(np.abs(n - np.array([0.5, 0.3, 0.2, 0.0]) * 1001) < 1)


def test_a_stack_leaves_out_a_member_that_cannot_describe_the_grid():
    """``independent`` sees a target's own data only: where no target is a source (one corpus
    scored on other validation sets, as OpenLM's) it predicts flat curves, and a stack drops it."""
    from bayescale import laws

    corpus = make_grid(["r0", "r1"], ["c4"], ["wiki", "books"], np.array([[1.0], [2.0]]), np.ones((2, 2)))
    shared = make_grid(["r0", "r1"], ["ct", "mri"], ["ct", "mri"], np.ones((2, 2)), np.ones((2, 2)))
    assert "no target is a source" in laws.get("independent").unsuited(corpus)
    assert laws.get("independent").unsuited(shared) is None
    for name in ("transfer", "linear", "bend"):
        assert laws.get(name).unsuited(corpus) is None
