"""The transfer-law families' model, tested directly: the NumPyro model's prior respects the
parameterisation of each family, its likelihood equals one written out here with SciPy, a
hand-made grid becomes the arrays worked out by hand, identification warnings fire where
they should, and the vectorised prediction from draws equals the single-draw law.

No NUTS here: prior draws (numpyro Predictive) supply parameter sets, which is all these
checks need, so the file runs in seconds."""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np
import pytest
import scipy.stats
from numpyro.infer import Predictive, log_likelihood

from bayescale.data.grid import make_grid
from bayescale.laws import power
from bayescale.laws.transfer import (
    LawDraws,
    add_observation_noise,
    identification_warnings,
    loss_draws,
    model_data,
    reference_allocations,
    transfer_law_model,
)

nan = np.nan

# Sources and targets in different orders, and a target ("x") that is no source, so a
# target's own source is not the diagonal: the mask must be found by name.
SOURCES = ["a", "b", "c"]
TARGETS = ["b", "a", "x"]
DATA = [[8, 0, 0], [0, 4, 0], [0, 0, 2], [4, 2, 1], [16, 8, 0], [3, 3, 3]]
LOSS = [[3.0, 2.0, 4.0], [2.5, 3.5, nan], [3.2, 3.3, 3.0], [2.2, 2.1, 2.9], [1.9, 1.5, 2.6], [0.1, 0.1, 0.1]]
LOSS_SE = [[0.03, nan, 0.04], [0.05, 0.02, nan], [nan, nan, nan], [0.01, 0.01, 0.01], [0.02, 0.03, nan], [0, 0, 0]]
SPLIT = ["fit"] * 5 + ["holdout"]
# The own-source mask by hand: source a is target a (column 1), b is target b (column 0).
OWN = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=float)


@pytest.fixture(scope="module")
def hand_grid():
    return make_grid(["r1", "r2", "r3", "r4", "r5", "h1"], SOURCES, TARGETS, DATA, LOSS, loss_se=LOSS_SE, split=SPLIT)


@pytest.fixture(scope="module")
def hand_data(hand_grid):
    return model_data(hand_grid, "hand.nc")


@functools.cache
def _prior_of_hand_grid(law, likelihood):
    grid = make_grid(["r1", "r2", "r3", "r4", "r5", "h1"], SOURCES, TARGETS, DATA, LOSS, loss_se=LOSS_SE, split=SPLIT)
    data, _ = model_data(grid, "hand.nc")
    prior_data = dataclasses.replace(data, log_loss=None)
    draws = Predictive(transfer_law_model, num_samples=400)(jax.random.PRNGKey(0), prior_data, law=law, likelihood=likelihood)
    out = {k: np.asarray(v) for k, v in draws.items()}
    for v in out.values():
        v.flags.writeable = False  # shared between tests
    return out


def prior(data, law="transfer", likelihood="normal"):
    """400 prior draws of every site of the model on the hand grid (one Predictive call per law
    and likelihood, shared by the tests: tracing the model is what costs time here)."""
    assert data.obs_run.size == 14  # the hand grid's model data
    return _prior_of_hand_grid(law, likelihood)


# ---------------------------------------------------------------------------
# model_data


def test_model_data_turns_a_hand_made_grid_into_the_arrays_worked_out_by_hand(hand_data):
    data, coords = hand_data
    # D0: the median of the non-zero amounts of the five fit runs (the holdout run h1 is left
    # out): 8, 4, 2, 4, 2, 1, 16, 8 -> sorted 1 2 2 4 | 4 8 8 16 -> 4.
    assert coords["data_scale"] == 4.0
    expected_d = np.array(DATA[:5], dtype=float) / 4.0
    np.testing.assert_array_equal(data.d, expected_d)
    # Observed cells in (run, target) order, skipping NaN losses (r2 on x); the holdout run is out.
    cells = [(r, t) for r in range(5) for t in range(3) if not np.isnan(LOSS[r][t])]
    assert len(cells) == 14
    np.testing.assert_array_equal(data.obs_run, [r for r, _ in cells])
    np.testing.assert_array_equal(data.obs_target, [t for _, t in cells])
    np.testing.assert_allclose(data.log_loss, [np.log(LOSS[r][t]) for r, t in cells], rtol=1e-15)
    # The relative standard error; 0 where the grid gives none (NaN).
    log_se = [0.0 if np.isnan(LOSS_SE[r][t]) else LOSS_SE[r][t] / LOSS[r][t] for r, t in cells]
    np.testing.assert_allclose(data.log_se, log_se, rtol=1e-15)
    assert data.log_se[1] == 0.0 and data.log_se[0] == pytest.approx(0.01)
    # The bootstrap's cap on E: the smallest observed fit loss per target (h1's 0.1 is holdout, not counted).
    np.testing.assert_array_equal(data.loss_floor, [1.9, 1.5, 2.6])
    np.testing.assert_array_equal(data.loss_scale, [2.5, 2.1, 2.95])  # medians of the observed fit losses
    # Every target's reference is r5, the fit run with the most data (24 / 4 = 6 law units).
    np.testing.assert_array_equal(data.reference_d, np.tile(expected_d[4], (3, 1)))
    np.testing.assert_array_equal(data.self_mask, OWN)
    # Each fit run's total data over the largest's (r5: 24): where its misfit sd is read.
    np.testing.assert_allclose(data.log_budget, np.log([8 / 24, 4 / 24, 2 / 24, 7 / 24, 1.0]), rtol=1e-15)
    assert (coords["noise_reach"], coords["noise_low"]) == (24.0, 2.0)
    assert coords["source"] == SOURCES and coords["target"] == TARGETS
    assert list(coords["obs_run"][1]) == [f"r{r + 1}" for r, _ in cells]
    assert list(coords["obs_target"][1]) == [TARGETS[t] for _, t in cells]


def test_a_targets_reference_is_the_run_observing_it_with_the_most_data_then_the_most_of_its_own():
    d = np.array([[4.0, 0.0], [0.0, 4.0], [1.0, 3.0], [9.0, 9.0], [0.0, 1.0]])
    own = np.eye(2)
    # run 3 (the most data) is not observed on either target; on target 0 runs 0-2 tie at 4 and
    # run 0 has the most of target 0's own data; target 1 sees runs 1, 2 and 4: run 1 (4 of its own).
    obs_run = np.array([0, 1, 2, 1, 2, 4])
    obs_target = np.array([0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(reference_allocations(d, obs_run, obs_target, own), [[4.0, 0.0], [0.0, 4.0]])
    # a target no source feeds (no own data) takes the run of the most data it observes
    np.testing.assert_array_equal(reference_allocations(d, np.array([4, 2]), np.array([0, 0]), np.zeros((2, 1))), [[1.0, 3.0]])


def test_a_shared_validation_error_is_not_cell_noise_and_the_bend_prior_sits_at_the_largest_fit_budget(hand_grid):
    shared = hand_grid.assign_attrs(loss_se_kind="shared")
    data, _ = model_data(shared, "hand.nc")
    # one offset per target shared by every run on the same validation set: no cell noise
    assert np.all(data.log_se == 0.0)
    independent, _ = model_data(hand_grid, "hand.nc")
    assert np.any(independent.log_se > 0)
    # fit-run budgets in law units (D0 = 4): the largest is max over r1..r5 of the row sums / 4
    assert float(data.break_centre) == pytest.approx(np.log(max(sum(row) for row in DATA[:5]) / 4.0))


def test_a_loss_se_of_unknown_kind_is_a_one_line_error(hand_grid):
    from bayescale.errors import InputError

    bad = hand_grid.assign_attrs(loss_se_kind="bootstrap")
    with pytest.raises(InputError, match=r"^hand.nc: attr loss_se_kind must be one of per_run, shared, got 'bootstrap'$"):
        model_data(bad, "hand.nc")


# ---------------------------------------------------------------------------
# the prior respects the parameterisation


def _check_common(draws, data):
    own = data.self_mask.astype(bool)
    E, level = draws["E"], draws["level"]
    # level ~ N(log median loss, 1) per target: a prior draw's mean within 4 sd of a mean of n draws.
    n = level.shape[0]
    assert np.all(np.abs(level.mean(axis=0) - np.log(data.loss_scale)) < 4 * 1.0 / np.sqrt(n))
    # E = L_ref sigmoid(e), e ~ N(mu_e, tau_e), mu_e ~ N(0, 1.5), tau_e ~ HN(1): below the law's loss
    # at the reference, half of it in the median. The draws' mean logit share: within 4 sd of a mean of
    # n draws (targets of one draw share mu_e, so n counts draws; marginal sd sqrt(1.5^2 + 1)).
    L_ref = np.exp(level)
    assert np.all(E > 0) and np.all(E < L_ref)
    np.testing.assert_allclose(E, L_ref / (1 + np.exp(-(draws["mu_e"][:, None] + draws["tau_e"][:, None] * draws["z_e"]))),
                               rtol=1e-5)
    logit_share = np.log(E / (L_ref - E))
    assert abs(np.mean(logit_share)) < 4 * np.sqrt(1.5**2 + 1.0) / np.sqrt(n)
    assert abs(np.median(E / L_ref) - 0.5) < 0.1
    for name in ("A", "alpha", "x0", "sigma"):
        assert np.all(draws[name] > 0) and np.all(np.isfinite(draws[name])), name
    # A follows: the law written out by hand at each target's reference allocation gives L_ref.
    for k in range(0, n, 40):
        at_reference = law_log_loss_by_hand(data.reference_d, E[k], draws["A"][k], draws["alpha"][k], draws["x0"][k],
                                            draws["T"][k], draws["beta"][k], own)
        np.testing.assert_allclose(np.diagonal(at_reference), level[k], rtol=0, atol=2e-5)
    T, beta = draws["T"], draws["beta"]
    assert T.shape == beta.shape == (E.shape[0],) + data.self_mask.shape
    assert np.all(T[:, own] == 1.0) and np.all(beta[:, own] == 1.0)
    sim = draws["log_loss"]
    assert sim.shape == (E.shape[0], data.obs_run.size) and np.all(np.isfinite(sim))
    return own, T, beta


@pytest.mark.parametrize("likelihood", ["normal", "student_t"])
def test_transfer_prior_keeps_E_below_the_floor_T_positive_and_beta_in_0_1(hand_data, likelihood):
    data, _ = hand_data
    draws = prior(data, "transfer", likelihood)
    own, T, beta = _check_common(draws, data)
    assert np.all(T[:, ~own] > 0) and np.all(np.isfinite(T))
    assert np.all(beta[:, ~own] > 0) and np.all(beta[:, ~own] <= 1.0)
    assert np.all(np.std(beta[:, ~own], axis=0) > 0) and np.all(np.std(T[:, ~own], axis=0) > 0)  # free, not fixed
    # Column x (a target that is no source) has every T entry free.
    assert np.all(T[:, :, 2] != 1.0)
    assert ("nu" in draws) == (likelihood == "student_t")
    if likelihood == "student_t":
        assert np.all(draws["nu"] > 0)


def test_linear_prior_fixes_beta_at_one_everywhere(hand_data):
    data, _ = hand_data
    draws = prior(data, "linear")
    own, T, beta = _check_common(draws, data)
    assert np.all(beta == 1.0)
    assert np.all(T[:, ~own] > 0) and np.all(np.std(T[:, ~own], axis=0) > 0)
    assert "b" not in draws and "mu_beta" not in draws


def test_independent_prior_fixes_T_at_zero_off_the_own_source(hand_data):
    data, _ = hand_data
    draws = prior(data, "independent")
    own, T, beta = _check_common(draws, data)
    assert np.all(T[:, ~own] == 0.0)
    assert np.all(beta == 1.0)
    assert "u" not in draws and "mu_T" not in draws


# ---------------------------------------------------------------------------
# the likelihood, written out independently


#: Each fit run's total data over the largest fit run's (r5: 24), from DATA by hand.
BUDGET_RATIO = np.array([8, 4, 2, 7, 24]) / 24


def misfit_sd_by_hand(sigma, noise_slope, obs_run, obs_target, ratio=BUDGET_RATIO):
    """A cell's misfit sd: its target's sigma times (B_run / B_max)^-noise_slope."""
    return sigma[obs_target] * ratio[obs_run] ** -noise_slope


def law_log_loss_by_hand(d, E, A, alpha, x0, T, beta, own):
    """log L_j(d) of one parameter set, in float64 NumPy, straight from DESIGN.md 'The law':
    x_j = x0_j + d_j (own source, if any) + sum over other sources i of T_ij d_i^beta_ij."""
    n, sources = d.shape
    targets = E.shape[0]
    out = np.empty((n, targets))
    for r in range(n):
        for j in range(targets):
            x = x0[j]
            for i in range(sources):
                if own[i, j]:
                    x += d[r, i]
                elif d[r, i] > 0:
                    x += T[i, j] * d[r, i] ** beta[i, j]
            out[r, j] = np.log(E[j] + A[j] * x ** (-alpha[j]))
    return out


@pytest.mark.parametrize(("law", "likelihood"),
                         [("transfer", "normal"), ("linear", "normal"), ("independent", "normal"), ("transfer", "student_t")])
def test_log_likelihood_equals_scipy_written_out(hand_data, law, likelihood):
    data, _ = hand_data
    draws = {k: v[:50] for k, v in prior(data, law, likelihood).items() if k != "log_loss"}
    ll = np.asarray(log_likelihood(transfer_law_model, draws, data, law=law, likelihood=likelihood)["log_loss"])
    assert ll.shape == (50, data.obs_run.size)
    params = {k: np.asarray(draws[k], dtype=np.float64) for k in ("E", "A", "alpha", "x0", "sigma", "T", "beta")}
    for s in range(50):
        mean = law_log_loss_by_hand(np.asarray(data.d), *(params[k][s] for k in ("E", "A", "alpha", "x0", "T", "beta")), OWN)
        # plus the run effect shared by every target of a run
        loc = mean[data.obs_run, data.obs_target]
        if data.run_effect:
            # at the run's total data, as the misfit: sigma_run (B_run / B_max)^-noise_slope
            run_sd = float(draws["sigma_run"][s]) * BUDGET_RATIO ** -float(draws["noise_slope"][s])
            loc = loc + (run_sd * np.asarray(draws["z_run"][s]))[data.obs_run]
        misfit = misfit_sd_by_hand(params["sigma"][s], float(draws["noise_slope"][s]), data.obs_run, data.obs_target)
        scale = np.sqrt(misfit ** 2 + data.log_se ** 2)
        if likelihood == "student_t":
            expected = scipy.stats.t.logpdf(data.log_loss, df=float(draws["nu"][s]), loc=loc, scale=scale)
        else:
            expected = scipy.stats.norm.logpdf(data.log_loss, loc=loc, scale=scale)
        # The model runs in float32: loc carries a relative error of a few ulps (~1e-7 x |loc|),
        # which moves z = (y - loc) / scale by dz and the log density -z^2 / 2 by ~z dz: tiny
        # relative to the density where prior draws sit far from the data (|z| up to ~2000 here,
        # rtol 1e-4) and ~1e-5 absolute where z is O(1) (atol 1e-3). Measured worst over 400
        # prior draws: 5 % of this tolerance; an error in the formula (a missing se term, the
        # wrong sigma, a wrong mask) moves the value by whole units.
        np.testing.assert_allclose(ll[s], expected, rtol=1e-4, atol=1e-3, err_msg=f"draw {s}")


def test_log_likelihood_uses_the_standard_error_and_each_targets_own_sigma(hand_data):
    """A sharper check on one hand-picked parameter set with a small spread of z: the scale is
    sqrt(sigma_j^2 + se^2), with sigma of the cell's target (not its run, not the first target)."""
    data, _ = hand_data
    draws = {k: v[5:6] for k, v in prior(data, "transfer").items() if k != "log_loss"}
    params = {k: np.asarray(v[0], dtype=np.float64) for k, v in draws.items()}
    mean = law_log_loss_by_hand(np.asarray(data.d), *(params[k] for k in ("E", "A", "alpha", "x0", "T", "beta")), OWN)
    run_sd = params["sigma_run"] * BUDGET_RATIO ** -params["noise_slope"] if data.run_effect else 0.0
    loc = mean[data.obs_run, data.obs_target] + ((run_sd * params["z_run"])[data.obs_run] if data.run_effect else 0.0)
    # Data near the law: z is O(1), so float32 rounding of loc moves the log density by ~1e-6.
    observed = loc + 0.5 * params["sigma"][data.obs_target]
    near = dataclasses.replace(data, log_loss=observed)
    ll = np.asarray(log_likelihood(transfer_law_model, draws, near)["log_loss"])[0]
    misfit = misfit_sd_by_hand(params["sigma"], float(params["noise_slope"]), data.obs_run, data.obs_target)
    scale = np.sqrt(misfit ** 2 + data.log_se ** 2)
    np.testing.assert_allclose(ll, scipy.stats.norm.logpdf(observed, loc=loc, scale=scale), rtol=1e-5, atol=1e-4)
    wrong = scipy.stats.norm.logpdf(observed, loc=loc, scale=misfit)
    assert np.max(np.abs(ll - wrong)) > 1e-3  # the se term is visible at this precision
    constant = scipy.stats.norm.logpdf(observed, loc=loc, scale=np.sqrt(params["sigma"][data.obs_target] ** 2 + data.log_se ** 2))
    assert float(params["noise_slope"]) > 0.05 and np.max(np.abs(ll - constant)) > 1e-3  # so is the misfit's fall with data


# ---------------------------------------------------------------------------
# identification warnings


def test_identification_warnings_flag_one_budget_and_a_source_without_data():
    grid = make_grid(["r1", "r2", "r3", "r4"], ["a", "b", "c"], ["a", "b"],
                     data=[[4, 0, 0], [0, 4, 0], [2, 2, 0], [3, 1, 0]],
                     loss=[[2.0, 3.0], [3.0, 2.0], [2.4, 2.4], [2.2, 2.7]])
    data, coords = model_data(grid, "flat.nc")
    warnings = identification_warnings(data, coords, "transfer", unit="tokens")
    assert any("every fit run has the same budget (4 tokens)" in w for w in warnings), warnings
    assert any("source(s) c have no data in any fit run" in w for w in warnings), warnings
    assert all("\n" not in w for w in warnings)


def test_identification_warnings_are_silent_on_a_good_grid(small_grid, hand_grid):
    for grid in (small_grid, hand_grid):
        data, coords = model_data(grid)
        for law in ("transfer", "linear", "independent"):
            assert identification_warnings(data, coords, law) == [], law


# ---------------------------------------------------------------------------
# prediction from draws


def law_draws_from_prior(data, coords, n=64):
    draws = {k: v[-n:] for k, v in prior(data, "transfer").items()}
    return LawDraws(sources=tuple(coords["source"]), targets=tuple(coords["target"]), self_mask=data.self_mask,
                    data_scale=float(coords["data_scale"]),
                    **{k: np.asarray(draws[k], dtype=np.float64) for k in ("E", "A", "alpha", "x0", "sigma", "T", "beta")})


def test_loss_draws_agrees_with_the_single_draw_law_draw_by_draw(hand_data):
    data, coords = hand_data
    draws = law_draws_from_prior(data, coords)
    # Raw amounts (grid units, rescaled inside by D0 = 4), with zeros, single sources and mixes;
    # 300 rows: more than one chunk of 256, so the padding of the last chunk is exercised.
    rng = np.random.default_rng(0)
    amounts = rng.uniform(0, 40, (300, 3)) * (rng.uniform(size=(300, 3)) < 0.7)
    amounts[:3] = [[8, 0, 0], [0, 0, 0], [0, 0, 5]]
    vectorised = loss_draws(draws, amounts)
    logged = loss_draws(draws, amounts, log=True)
    assert vectorised.shape == logged.shape == (64, 300, 3) and vectorised.dtype == np.float32
    d = amounts / 4.0
    law = jax.jit(power.loss)  # one compilation for the 64 draws
    for s in range(draws.n_draws):
        single = np.asarray(law(d, draws.E[s], draws.A[s], draws.alpha[s], draws.x0[s], draws.T[s], draws.beta[s],
                                       data.self_mask))
        # Both float32; they sum over sources in another order and take x^-alpha as
        # exp(-alpha log x) vs a power: a few ulps each, amplified by alpha |log x| <~ 10,
        # so ~1e-6 relative; 2e-5 leaves margin and is far below any formula error.
        np.testing.assert_allclose(vectorised[s], single, rtol=2e-5, err_msg=f"draw {s}")
        np.testing.assert_allclose(logged[s], np.log(single), rtol=2e-5, atol=2e-6, err_msg=f"draw {s}")
    # And against the float64 law written out here, for a few draws (an independent formula).
    for s in (0, 31, 63):
        by_hand = np.exp(law_log_loss_by_hand(d, draws.E[s], draws.A[s], draws.alpha[s], draws.x0[s], draws.T[s],
                                              draws.beta[s], OWN))
        np.testing.assert_allclose(vectorised[s], by_hand, rtol=2e-5)
    # A single allocation gives (S, J); XLA compiles a (1, I) call differently from a chunk of
    # 256 rows, so the two may differ in the last float32 bit (rtol 1e-6 is ~8 ulps).
    np.testing.assert_allclose(loss_draws(draws, amounts[0]), vectorised[:, 0, :], rtol=1e-6)


def test_add_observation_noise_adds_each_targets_sigma(hand_data):
    data, coords = hand_data
    draws = law_draws_from_prior(data, coords, n=8)
    base = np.zeros((8, 20000, 3))
    noisy = add_observation_noise(base, draws, np.random.default_rng(1))
    z = noisy / draws.sigma[:, None, :]
    # 20000 standard normals per (draw, target): the sample sd has sd 1/sqrt(2 * 20000) = 0.005,
    # the mean 1/sqrt(20000) = 0.007; 0.03 is > 4 of either.
    assert np.all(np.abs(z.std(axis=1) - 1) < 0.03) and np.all(np.abs(z.mean(axis=1)) < 0.03)


def test_replicated_runs_bring_a_run_effect_shared_by_a_runs_targets():
    """Two runs of the same data (seeds): the model adds sigma_run (B / B_max)^-noise_slope * z_run to every cell of a run,
    and the log likelihood is scipy's normal around that shifted location."""
    runs = ["r1", "r2", "r3", "r4", "r5", "r5b"]
    grid = make_grid(runs, SOURCES, TARGETS, DATA[:5] + [DATA[4]], LOSS[:5] + [LOSS[4]], seed=[0, 0, 0, 0, 0, 1])
    data, coords = model_data(grid, "seeds.nc")
    assert data.run_effect and coords["run_effect"]
    unreplicated, _ = model_data(grid.isel(run=slice(0, 5)), "one-seed.nc")
    assert not unreplicated.run_effect
    draws = Predictive(transfer_law_model, num_samples=20)(jax.random.PRNGKey(3), dataclasses.replace(data, log_loss=None))
    draws = {k: np.asarray(v) for k, v in draws.items() if k != "log_loss"}
    assert draws["z_run"].shape == (20, 6) and np.all(draws["sigma_run"] > 0)
    ll = np.asarray(log_likelihood(transfer_law_model, draws, data)["log_loss"])
    for s in range(20):
        p = {k: np.asarray(draws[k][s], dtype=np.float64) for k in ("E", "A", "alpha", "x0", "T", "beta")}
        mean = law_log_loss_by_hand(np.asarray(data.d), *(p[k] for k in ("E", "A", "alpha", "x0", "T", "beta")), OWN)
        ratio = np.array([8, 4, 2, 7, 24, 24]) / 24  # each run's total over the largest
        # the run effect falls with a run's data as the misfit does
        run_sd = draws["sigma_run"][s] * ratio ** -float(draws["noise_slope"][s])
        loc = mean[data.obs_run, data.obs_target] + (run_sd * draws["z_run"][s])[data.obs_run]
        misfit = misfit_sd_by_hand(draws["sigma"][s], float(draws["noise_slope"][s]), data.obs_run, data.obs_target, ratio=ratio)
        scale = np.sqrt(misfit ** 2 + data.log_se**2)
        np.testing.assert_allclose(ll[s], scipy.stats.norm.logpdf(data.log_loss, loc=loc, scale=scale), rtol=1e-4, atol=1e-3)


def test_a_new_runs_noise_sd_is_the_draws_misfit_at_its_total_data(hand_data):
    """With noise_slope, a new run's noise sd is sigma (B / noise_reach)^-gamma, B its total raw
    data clipped below at noise_low; without amounts it is sigma (the largest fit run's)."""
    data, coords = hand_data
    draws = dataclasses.replace(law_draws_from_prior(data, coords, n=8), noise_slope=np.linspace(0.0, 1.4, 8),
                                noise_reach=24.0, noise_low=2.0)
    # Totals 48 (past the fit runs), 24 (the largest), 6, and 0 (clipped to the smallest fit run's 2).
    amounts = np.array([[32.0, 16.0, 0.0], [8.0, 8.0, 8.0], [0.0, 6.0, 0.0], [0.0, 0.0, 0.0]])
    ratio = np.array([48.0, 24.0, 6.0, 2.0]) / 24.0
    base = np.zeros((8, 20000, 4, 3))
    noisy = add_observation_noise(base, draws, np.random.default_rng(2), np.broadcast_to(amounts, (20000, 4, 3)))
    expected_sd = draws.sigma[:, None, None, :] * ratio[None, None, :, None] ** -draws.noise_slope[:, None, None, None]
    z = noisy / expected_sd
    # 20000 standard normals per (draw, run, target): the sample sd has sd 0.005; 0.03 is 6 of them.
    assert np.all(np.abs(z.std(axis=1) - 1) < 0.03) and np.all(np.abs(z.mean(axis=1)) < 0.03)
    # At gamma = 1.4 the sd at twice the largest budget is 2^-1.4 = 0.38 of sigma: a broken factor shows.
    assert expected_sd[-1, 0, 0, 0] == pytest.approx(draws.sigma[-1, 0] * 2 ** -1.4)
    plain = add_observation_noise(np.zeros((8, 20000, 3)), draws, np.random.default_rng(2))
    assert np.all(np.abs((plain / draws.sigma[:, None, :]).std(axis=1) - 1) < 0.03)


@pytest.mark.parametrize("falls", [True, False])
def test_a_new_runs_run_effect_falls_with_its_data_where_the_posterior_says_so(hand_data, falls):
    """The run effect is shared by a run's targets: the covariance of two targets of one new run is
    (sigma_run (B / noise_reach)^-gamma)^2 where it falls with data (posteriors since 2026-12-07),
    sigma_run^2 where it does not (older posteriors)."""
    data, coords = hand_data
    draws = dataclasses.replace(law_draws_from_prior(data, coords, n=4), noise_slope=np.full(4, 0.8), noise_reach=24.0,
                                noise_low=2.0, sigma_run=np.full(4, 0.2), run_effect_falls=falls)
    amounts = np.array([[32.0, 16.0, 0.0], [0.0, 6.0, 0.0]])  # totals 48 and 6: factors 2^-0.8 and 4^0.8
    n = 40000
    noisy = add_observation_noise(np.zeros((4, n, 2, 3)), draws, np.random.default_rng(5), np.broadcast_to(amounts, (n, 2, 3)))
    cov = np.mean(noisy[..., 0] * noisy[..., 1], axis=1)  # (S, runs)
    factor = np.array([2.0 ** -0.8, 4.0 ** 0.8]) if falls else np.ones(2)
    expected = (0.2 * factor) ** 2
    # sd of a sample covariance of n pairs ~ sd_a sd_b / sqrt(n); 5 of it
    sd = np.sqrt((draws.sigma[:, None, :2] * np.array([2.0 ** -0.8, 4.0 ** 0.8])[None, :, None]) ** 2 + expected[None, :, None])
    np.testing.assert_array_less(np.abs(cov - expected[None]), 5 * sd[..., 0] * sd[..., 1] / np.sqrt(n))
    # the two cases differ by far more than that tolerance at the smaller run (0.2^2 (4^1.6 - 1) = 0.36)
