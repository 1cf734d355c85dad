"""Chance constraints on the loss a real run will have (bayescale.optimise.predictive).

The predictive probability of a solution is recomputed here independently: law losses from the
reference loops of ``test_allocate``, and fresh run noise drawn with NumPy from the draws' own
``sigma`` (the transfer law's normal noise on log loss), not from the library's noise.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bayescale.optimise import allocate as al
from bayescale.optimise import predictive as pred
from bayescale.optimise.constraints import InfeasibleError, build_spec
from bayescale.optimise.riskprog import FEAS_TOL, LawEval
from bayescale.render.text import format_allocation
from tests.bayescale.optimise.test_allocate import NAMES, make_draws, ref_losses, vec

FAST = dict(uncertainty=0, baselines=False)
MRI = NAMES.index("mri")  # the island: only its own data lowers its loss
TAU = 1.5


def noisy_draws(sigma: float, S: int = 2000, seed: int = 4):
    draws = make_draws(S=S, seed=seed)
    return dataclasses.replace(draws, sigma=np.full_like(draws.sigma, sigma))


def independent_predictive_probability(draws, D, index, tau, replicates=50, seed=123):
    """P(L_mri(D) * exp(sigma z) <= tau) over the draws ``index`` and fresh noise; the binomial SE
    counts draws only (replicates of one draw are not independent), so it is conservative."""
    L = ref_losses(draws, D)[index, 0, MRI]
    z = np.random.default_rng(seed).standard_normal((index.size, replicates))
    hits = L[:, None] * np.exp(draws.sigma[index, MRI][:, None] * z) <= tau
    p = float(hits.mean())
    return p, float(np.sqrt(p * (1 - p) / index.size))


def test_the_noisy_column_is_the_law_times_one_runs_noise():
    draws = noisy_draws(0.2, S=300)
    spec = build_spec(draws, chance=[f"mri<={TAU}@0.9", "ct<=1.2@0.8"])
    noise = pred.chance_log_noise(draws, spec, seed=7)
    assert noise.shape == (300, 2)
    # One run's noise on log loss: the family's normal noise with each draw's sigma.
    z = noise / 0.2
    assert abs(z.mean()) < 0.15 and 0.85 < z.std() < 1.15
    assert not np.allclose(noise[:, 0], noise[:, 1])  # independent targets, independent noise
    again = pred.chance_log_noise(draws, spec, seed=7)
    np.testing.assert_array_equal(noise, again)  # seeded: a solve is reproducible
    assert not np.allclose(noise, pred.chance_log_noise(draws, spec, seed=7, stream=pred.CHECK_STREAM))
    D = np.array([40.0, 10, 0, 25, 120])
    law = LawEval(draws, ([MRI, NAMES.index("ct")], noise))
    L = law.values(D)
    ref = ref_losses(draws, D)[:, 0, :]
    np.testing.assert_allclose(L[:, :5], ref, rtol=1e-12)
    np.testing.assert_allclose(L[:, 5], ref[:, MRI] * np.exp(noise[:, 0]), rtol=1e-12)
    np.testing.assert_allclose(L[:, 6], ref[:, NAMES.index("ct")] * np.exp(noise[:, 1]), rtol=1e-12)
    # the per-draw threshold form: L * exp(eps) <= tau  <=>  L <= tau * exp(-eps)
    assert np.array_equal(L[:, 5] <= TAU, ref[:, MRI] <= TAU * np.exp(-noise[:, 0]))
    sub = law.subset(np.arange(0, 300, 3))  # subsets keep each draw's own noise
    np.testing.assert_allclose(sub.values(D), L[::3], rtol=1e-12)
    assert pred.chance_log_noise(draws, build_spec(draws, chance=[f"mri<={TAU}@0.9"], chance_on="expected")) is None


def test_predictive_is_stricter_than_expected_on_the_same_posterior():
    draws = noisy_draws(0.25)
    chance = [f"mri<={TAU}@0.9"]
    expected = al.allocate(draws, 300, chance=chance, chance_on="expected", **FAST)
    assert expected["status"] == "optimal" and expected["chance_on"] == "expected"
    # Within the same budget the loss one run will observe cannot be held below tau often enough ...
    with pytest.raises(InfeasibleError, match="for the loss one run will observe") as info:
        al.allocate(draws, 300, chance=chance, **FAST)
    need = float(str(info.value).split("the least budget that meets them is ")[1].split()[0])
    # ... it needs more data of that domain: the least budget is larger, and all of it is mri's.
    least_expected = al.allocate(draws, min_budget=True, chance=chance, chance_on="expected", **FAST)
    least = al.allocate(draws, min_budget=True, chance=chance, **FAST)
    assert least["chance_on"] == "predictive" and least["chance"][0]["loss"] == "predictive"
    assert least["spend"] > 1.5 * least_expected["spend"]
    assert least["spend"] == pytest.approx(need, rel=1e-3)
    assert least["allocation"]["mri"] > least_expected["allocation"]["mri"] * 1.5
    at = al.allocate(draws, 700, chance=chance, **FAST)
    assert at["allocation"]["mri"] > expected["allocation"]["mri"] * 1.5


def test_predictive_probability_holds_on_fresh_noise():
    draws = noisy_draws(0.25)
    chance = [f"mri<={TAU}@0.9"]
    result = al.allocate(draws, 700, chance=chance, holdout=0.25, **FAST)
    assert result["status"] == "optimal", result["solver_notes"]
    opt_idx, held_idx = al.split_draws(draws.n_draws, 2000, 0.25, 0)
    D = vec(result)
    p_held, se = independent_predictive_probability(draws, D, held_idx, TAU)
    assert p_held >= 0.9 - 3 * se, (p_held, se)
    p_opt, se_opt = independent_predictive_probability(draws, D, opt_idx, TAU)
    assert p_opt >= 0.9 - 3 * se_opt, (p_opt, se_opt)
    report = result["chance"][0]
    # The report's own held-out check (fresh noise of its own) agrees with this one within Monte Carlo error.
    assert report["held_out_draws"] == held_idx.size
    assert report["held_out_se"] == pytest.approx(np.sqrt(report["achieved_held_out"] * (1 - report["achieved_held_out"]) / held_idx.size))
    assert abs(report["achieved_held_out"] - p_held) <= 4 * np.hypot(report["held_out_se"], se)
    # The expected-loss solution, judged the same way, gives a real run a smaller chance.
    expected = al.allocate(draws, 700, chance=chance, chance_on="expected", holdout=0.25, **FAST)
    p_exp, _ = independent_predictive_probability(draws, vec(expected), held_idx, TAU)
    assert p_exp < p_held - 0.03
    text = format_allocation(result)
    assert "chance constraints on the loss one run will observe" in text and " ± " in text
    assert "the law's expected loss" in format_allocation(expected)


def test_expected_option_ignores_run_noise_and_matches_predictive_without_noise():
    chance = [f"mri<={TAU}@0.9", "ct<=1.6@0.8"]
    kwargs = dict(objective="cvar:0.8", chance=chance, holdout=0.25, **FAST)
    quiet, loud = noisy_draws(0.0, S=400), noisy_draws(0.4, S=400)
    expected_quiet = al.allocate(quiet, 500, chance_on="expected", **kwargs)
    expected_loud = al.allocate(loud, 500, chance_on="expected", **kwargs)
    assert vec(expected_loud) == pytest.approx(vec(expected_quiet), rel=1e-12)
    # With no noise the loss a run observes is the law's: the predictive program is the expected one.
    predictive_quiet = al.allocate(quiet, 500, **kwargs)
    assert vec(predictive_quiet) == pytest.approx(vec(expected_quiet), rel=1e-6)
    for a, b in zip(predictive_quiet["chance"], expected_quiet["chance"]):
        assert a["achieved_held_out"] == b["achieved_held_out"] and a["loss"] == "predictive" and b["loss"] == "expected"
    # Without chance constraints nothing changes and the result does not mention them.
    plain = al.allocate(loud, 300, **FAST)
    assert "chance_on" not in plain.to_dict() and plain["chance"] == []


def test_a_wrong_chance_on_names_the_parameter():
    draws = make_draws(S=50)
    with pytest.raises(Exception) as info:
        al.allocate(draws, 100, chance=[f"mri<={TAU}@0.9"], chance_on="typical", **FAST)
    assert str(info.value) == "chance_on: must be predictive or expected, got 'typical'"


# ---------------------------------------------------------------------------- past the fit runs' data

REACH = 100.0  # the fit runs' largest total data of the draws below


def past_the_data(S: int = 1000, seed: int = 5, slope_scale: float = 0.15, noise_slope: float | None = None, sigma: float = 0.25):
    """Draws with a slope error past ``REACH`` (as ``fit`` attaches it) and, optionally, a misfit
    that falls with a run's data (``noise_slope`` per draw, from ``noise_low`` = 10 to ``REACH``)."""
    draws = make_draws(S=S, seed=seed)
    rng = np.random.default_rng([seed, 1])
    extra = dict(slope_error=slope_scale * rng.standard_normal(draws.E.shape), reach=REACH)
    if noise_slope is not None:
        extra.update(noise_slope=np.full(S, noise_slope), noise_reach=REACH, noise_low=10.0, sigma=np.full_like(draws.sigma, sigma))
    return dataclasses.replace(draws, **extra)


def law_only(draws, D) -> np.ndarray:
    """(S, J) the law's losses at ``D`` without the error past the data (reference loops)."""
    return ref_losses(dataclasses.replace(draws, slope_error=None, reach=None), D)[:, 0, :]


def with_error_past_the_data(draws, D) -> np.ndarray:
    """(S, J) law losses at ``D`` (reference loops) times exp(slope_error * log(total / reach)): the
    curve past the data as the slope error describes it, computed here with NumPy."""
    distance = max(0.0, np.log(np.sum(D) / draws.reach))
    return law_only(draws, D) * np.exp(draws.slope_error * distance)


def test_allocations_past_the_data_carry_the_laws_error_as_predict_does():
    from bayescale.evaluate.predict import predict
    from bayescale.optimise.evaluation import empirical_cvar

    draws = past_the_data()
    budget = 4 * REACH  # log 4 past the data: the slope error's sd there is 0.15 * 1.39 = 0.21 on log loss
    result = al.allocate(draws, budget, objective="cvar:0.9", **FAST)
    assert result["status"] == "optimal", result["solver_notes"]
    D = vec(result)
    L = with_error_past_the_data(draws, D)
    # the reported intervals are predict's for the same allocation (one definition of "the law's loss")
    same = predict(draws, dict(zip(NAMES, D)), interval=0.9)["targets"]
    for j, name in enumerate(NAMES):
        got = result["predicted"][name]
        assert got["mean"] == pytest.approx(L[:, j].mean(), rel=1e-9)
        assert (got["lo"], got["hi"]) == pytest.approx(tuple(np.quantile(L[:, j], [0.05, 0.95])), rel=1e-9)
        assert (got["lo"], got["hi"]) == pytest.approx((same[name]["lo"], same[name]["hi"]), rel=1e-5)
    # the reducible loss (what the baselines' reductions compare) is the loss above E, both at the total
    floor = draws.E * (L / law_only(draws, D))
    np.testing.assert_allclose(LawEval(draws).reducible(D), L - floor, rtol=1e-9, atol=1e-12)
    # the objective is the CVaR over draws of the loss with that error, and the error widens it
    v = np.array(list(result["weights"].values()))
    assert result["objective_value"] == pytest.approx(empirical_cvar(L @ v, 0.9), rel=1e-9)
    assert empirical_cvar(L @ v, 0.9) > empirical_cvar(law_only(draws, D) @ v, 0.9) * 1.02
    # and the recommendation is the optimum of that program: no other allocation of the budget does better
    rng = np.random.default_rng(11)
    for share in rng.dirichlet(np.ones(len(NAMES)), size=200):
        assert empirical_cvar(with_error_past_the_data(draws, budget * share) @ v, 0.9) >= result["objective_value"] * (1 - 1e-6)
    # within the fit runs' data nothing changes: the same allocation as draws without a slope error
    inside = al.allocate(draws, 0.8 * REACH, objective="cvar:0.9", **FAST)
    plain = al.allocate(dataclasses.replace(draws, slope_error=None, reach=None), 0.8 * REACH, objective="cvar:0.9", **FAST)
    assert vec(inside) == pytest.approx(vec(plain), rel=1e-9)


def test_a_falling_misfit_is_one_runs_noise_at_the_allocations_total():
    draws = past_the_data(S=3000, slope_scale=0.0, noise_slope=0.5, sigma=0.4)
    chance = [f"mri<={TAU}@0.9"]
    budget = 8 * REACH  # the misfit there is (800 / 100)^-0.5 = 0.35 of sigma
    result = al.allocate(draws, budget, chance=chance, holdout=0.3, **FAST)
    assert result["status"] == "optimal", result["solver_notes"]
    D = vec(result)
    _, held_idx = al.split_draws(draws.n_draws, 3000, 0.3, 0)
    L = ref_losses(draws, D)[held_idx, 0, MRI]

    def probability(misfit_factor, replicates=50):
        z = np.random.default_rng(99).standard_normal((held_idx.size, replicates))
        hits = L[:, None] * np.exp(0.4 * misfit_factor * z) <= TAU
        p = float(hits.mean())
        return p, float(np.sqrt(p * (1 - p) / held_idx.size))

    p_total, se = probability((np.sum(D) / REACH) ** -0.5)
    report = result["chance"][0]
    assert abs(report["achieved_held_out"] - p_total) <= 4 * np.hypot(report["held_out_se"], se)
    assert p_total >= 0.9 - 3 * se
    # the misfit at the fit runs' largest total (the gap this replaces) gives a clearly other probability
    p_reach, se_reach = probability(1.0)
    assert p_reach < p_total - 4 * np.hypot(se, se_reach)


def test_with_costs_the_program_settles_at_its_solutions_total():
    from bayescale.optimise.evaluation import objective_values

    draws = past_the_data(noise_slope=0.3)
    spec = build_spec(draws, objective="cvar:0.8", costs={"web": 0.5, "mri": 3.0}, chance=["mri<=3@0.8"])
    problem, _, _ = al.build_problem(draws, spec, 300.0, min_budget=False, max_draws=None, holdout=0.2, seed=0)
    sol = problem.solve(300.0)
    assert sol.violation <= FEAS_TOL
    total = float(np.sum(sol.D))
    assert total != pytest.approx(300.0, rel=1e-3)  # costs: the total is not the budget
    assert problem.total == pytest.approx(total, rel=1e-5) and sol.converged
    # the program's objective there is the exact loss at the solution's own total
    v = problem.effective_weights()
    assert sol.objective == pytest.approx(objective_values(problem.draws, sol.D, spec.objective, v), rel=1e-4)
