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
from bayescale.optimise.riskprog import LawEval
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
