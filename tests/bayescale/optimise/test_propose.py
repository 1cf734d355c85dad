"""Which runs to train next (bayescale.optimise.propose): the value-of-information estimator against
closed forms, its pieces against independent computations, and the whole on a real NUTS posterior."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import integrate, stats

from bayescale.errors import InputError
from bayescale.laws.draws import loss_draws
from bayescale.laws.noise import with_extrapolation_error
from bayescale.optimise.candidates import Candidates, make_candidates
from bayescale.optimise.evaluation import empirical_cvar
from bayescale.optimise.propose import (
    Decisions,
    candidate_log_likelihoods,
    decision_risk,
    design_toml,
    information_value,
    propose,
    run_log_likelihood,
    simulate_outcomes,
    weighted_cvar,
)
from trainers.config import read_design_runs


def test_run_log_likelihood_is_the_multivariate_normal_density():
    rng = np.random.default_rng(0)
    S, J, M = 5, 4, 3
    mean, sigma, sigma_run = rng.normal(size=(S, J)), rng.uniform(0.02, 0.2, (S, J)), rng.uniform(0.0, 0.1, S)
    y = rng.normal(size=(M, J))
    ours = run_log_likelihood(mean, sigma, sigma_run, y)
    for s in range(S):
        cov = np.diag(sigma[s] ** 2) + sigma_run[s] ** 2 * np.ones((J, J))
        np.testing.assert_allclose(ours[:, s], stats.multivariate_normal(mean[s], cov).logpdf(y), rtol=1e-10)
    np.testing.assert_allclose(run_log_likelihood(mean, sigma, None, y)[:, 0],
                               stats.multivariate_normal(mean[0], np.diag(sigma[0] ** 2)).logpdf(y), rtol=1e-10)


def rockafellar_uryasev(values, weights, gamma):
    """min over eta of eta + E_w[(v - eta)+] / (1 - gamma), at every candidate eta (the kinks), in float64."""
    return min(eta + np.sum(weights * np.maximum(values - eta, 0.0)) / (1.0 - gamma) for eta in values)


def test_weighted_cvar_is_the_rockafellar_uryasev_minimum():
    rng = np.random.default_rng(1)
    values = rng.gamma(2.0, 0.1, size=(300, 4)) + 0.5
    weights = rng.dirichlet(np.full(300, 0.3), size=3)  # uneven, as importance weights are
    ours = weighted_cvar(values, weights, 0.9)
    for m in range(3):
        for a in range(4):
            assert ours[m, a] == pytest.approx(rockafellar_uryasev(values[:, a], weights[m], 0.9), rel=2e-6)
    flat = np.full(300, 1 / 300)
    assert weighted_cvar(values, flat, 0.75)[0] == pytest.approx(empirical_cvar(values[:, 0], 0.75), rel=2e-6)


def two_worlds(n_draws: int, separation: float):
    """Draws alternating between two worlds; one new cell's log loss is Normal(0 or separation, 1)
    under them, decision 0 costs 1 in world 1 and decision 1 costs 1 in world 0."""
    world = np.arange(n_draws) % 2
    per_draw = np.stack([world.astype(float), 1.0 - world], axis=1)  # (S, 2)
    return world, Decisions(allocations=np.zeros((2, 1)), per_draw=per_draw, risk="mean", gamma=None, minimax=False)


def exact_evoi(separation: float) -> float:
    """E_y[max(0, 1 - 2 p0(y))] with y from the two worlds' mixture: the regret today's choice
    (decision 0, a tie at the prior) would reveal, by quadrature."""

    def integrand(y):
        f0, f1 = stats.norm.pdf(y), stats.norm.pdf(y, separation)
        p0 = f0 / (f0 + f1)
        return 0.5 * (f0 + f1) * max(0.0, 1.0 - 2.0 * p0)

    return integrate.quad(integrand, -12, 12 + separation, limit=200)[0]


@pytest.mark.parametrize("separation", [0.5, 2.0])
def test_the_value_of_information_matches_the_closed_form_of_two_worlds(separation):
    world, decisions = two_worlds(400, separation)
    rng = np.random.default_rng(2)
    M = 4000
    true_world = rng.integers(0, 2, M)
    y = rng.normal(separation * true_world, 1.0)[:, None]  # (M, 1)
    mean = (separation * world)[:, None].astype(float)
    log_lik = run_log_likelihood(mean, np.ones((400, 1)), None, y)  # (M, S)
    regret = information_value(log_lik, decisions, "evoi", today=0)
    se = regret.std(ddof=1) / np.sqrt(M)
    assert abs(regret.mean() - exact_evoi(separation)) < 5 * se + 1e-3
    assert np.all(regret >= -1e-12)
    # without the update (every outcome weighted as the prior) nothing is learnt: the test can fail
    assert np.allclose(information_value(np.zeros_like(log_lik), decisions, "evoi", today=0), 0.0)


def test_cvar_and_minimax_decision_risks_are_their_definitions():
    rng = np.random.default_rng(3)
    per_target = rng.uniform(0.1, 1.0, size=(200, 3, 2))  # (S, A, J)
    weights = rng.dirichlet(np.ones(200), size=2)
    minimax = Decisions(np.zeros((3, 1)), per_target, "mean", None, True)
    expected = np.array([[max(weights[m] @ per_target[:, a, j] for j in range(2)) for a in range(3)] for m in range(2)])
    np.testing.assert_allclose(decision_risk(minimax, weights), expected, rtol=1e-12)
    cvar = Decisions(np.zeros((3, 1)), per_target.sum(-1), "cvar", 0.8, False)
    expected = [[rockafellar_uryasev(per_target.sum(-1)[:, a], weights[m], 0.8) for a in range(3)] for m in range(2)]
    np.testing.assert_allclose(decision_risk(cvar, weights), expected, rtol=2e-6)


def test_outcomes_are_drawn_from_the_model_the_update_weighs_them_with(small_draws, small_grid):
    """One draw generates many outcomes of a run past the fit runs' data: their mean and covariance
    are the mean and covariance the likelihood gives that draw (law + slope error; noise + run effect,
    both at the run's total data: sigma and sigma_run times (B / noise_reach)^-noise_slope)."""
    one = small_draws.subset(np.zeros(4000, dtype=int))
    reach = one.reach or float(small_grid["data"].sum("source").max())
    slope = np.full_like(one.E, 0.05)
    # A steep fall of the noise with data (gamma 0.8) and a run effect that falls with it: at twice
    # the reach both sds are 2^-0.8 = 0.57 of the draw's, which a likelihood that ignored it would miss.
    one = dataclasses.replace(one, slope_error=slope, reach=reach, noise_slope=np.full(4000, 0.8), noise_reach=reach,
                              noise_low=1.0, sigma_run=np.full(4000, 0.03), run_effect_falls=True)
    amounts = np.full((1, len(one.sources)), 2.0 * reach / len(one.sources))  # twice the reach
    run = Candidates(sources=one.sources, names=("far",), amounts=amounts, costs=np.ones(1), cost_unit="volumes")
    y = simulate_outcomes(one, run, 4000, seed=0)[:, 0]  # (M, J)
    mean = with_extrapolation_error(np.asarray(loss_draws(one.subset([0]), amounts, log=True), dtype=np.float64),
                                    one.subset([0]), amounts)[0, 0]
    factor = 2.0 ** -0.8
    sd = np.sqrt((one.sigma[0] * factor) ** 2 + (0.03 * factor) ** 2)
    assert np.all(np.abs(y.mean(axis=0) - mean) < 5 * sd / np.sqrt(4000))
    cov = np.diag((one.sigma[0] * factor) ** 2) + (0.03 * factor) ** 2
    # sample covariance: each entry's SE is about sqrt((c_ii c_jj + c_ij^2) / M)
    se = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / 4000)
    assert np.all(np.abs(np.cov(y.T) - cov) < 5 * se)
    # the update weighs outcomes with that very density
    ll = candidate_log_likelihoods(one.subset([0]), run, y[:20, None, :])  # (1, 20, 1)
    np.testing.assert_allclose(ll[0, :, 0], stats.multivariate_normal(mean, cov).logpdf(y[:20]), rtol=1e-5)


@pytest.fixture(scope="module")
def proposal(small_draws, small_grid):
    pool = make_candidates(small_draws.sources, small_grid, max_run_budget=32.0)
    # min_effective_draws=0: the whole batch, whose bookkeeping this checks (the stop has its own test)
    return pool, propose(small_draws, 100.0, pool, batch=3, options={"objective": "cvar:0.9"}, outcomes=64, decisions=16,
                         min_effective_draws=0)


def test_a_proposal_on_a_real_posterior_adds_up(proposal):
    pool, result = proposal
    names = [run.name for run in result.batch]
    assert len(names) == 3 and len(set(names)) == 3 and set(names) <= set(pool.names)
    for run in result.batch:
        k = pool.names.index(run.name)
        assert run.cost == pytest.approx(pool.amounts[k].sum())  # cost "volumes": its total data
        assert run.gain_per_cost == pytest.approx(run.gain / run.cost)
        assert 1.0 <= run.effective_draws <= result.evaluation_draws
        assert run.informs and all(0.0 < r <= 1.0 + 1e-9 for r in run.informs.values())
    # the batch's value is the sum of what each run added (the greedy's bookkeeping)
    assert result.expected_gain == pytest.approx(sum(run.gain for run in result.batch), rel=1e-9, abs=1e-15)
    assert result.expected_gain >= 0 and result.value_after == pytest.approx(result.value_now - result.expected_gain)
    assert result.cost == pytest.approx(sum(run.cost for run in result.batch))
    assert result.to_dict()["batch"][0]["name"] == names[0]


def test_a_posterior_without_uncertainty_has_nothing_to_learn(small_draws, small_grid):
    """Every draw the same world: no outcome can move the weights, so no run is worth anything."""
    certain = small_draws.subset(np.zeros(400, dtype=int))
    pool = make_candidates(certain.sources, small_grid).subset(np.arange(12))
    result = propose(certain, 100.0, pool, batch=2, outcomes=16, decisions=4)
    assert result.expected_gain == pytest.approx(0.0, abs=1e-12)
    assert result.decisions == 1  # every per-draw optimum is the recommendation
    assert result.effective_draws == pytest.approx(result.evaluation_draws)


def test_the_variance_criterion_is_a_share_of_todays_variance(small_draws, small_grid):
    pool = make_candidates(small_draws.sources, small_grid).subset(np.arange(0, 60, 3))
    result = propose(small_draws, 100.0, pool, batch=2, criterion="variance", outcomes=32, decisions=8)
    assert 0.0 < result.expected_gain < result.value_now  # learns something, not everything


def test_the_design_file_is_what_the_trainers_read(tmp_path, small_draws, small_grid):
    rows = "name," + ",".join(small_draws.sources) + "\nwide,4,4,0,0\nnarrow,0,0,8,0\n"
    (tmp_path / "c.csv").write_text(rows)
    pool = make_candidates(small_draws.sources, small_grid, tmp_path / "c.csv")
    result = propose(small_draws, 100.0, pool, batch=2, outcomes=16, decisions=4)
    (tmp_path / "d.toml").write_text(design_toml(result))
    runs = read_design_runs(tmp_path / "d.toml")
    assert [r.data for r in runs] == [{s: int(a) for s, a in run.amounts.items()} for run in result.batch]
    assert len({r.seed for r in runs}) == 2 and all(r.split == "fit" for r in runs)
    assert [r.id for r in runs] == [f"propose-{k}-{run.name}" for k, run in enumerate(result.batch, start=1)]


def test_a_design_needs_whole_volumes(small_draws, small_grid):
    pool = make_candidates(small_draws.sources, small_grid)  # the simulated grid's mixtures are fractional
    fractional = pool.subset([i for i, a in enumerate(pool.amounts) if np.any(a != np.round(a))][:3])
    result = propose(small_draws, 100.0, fractional, batch=1, outcomes=8, decisions=2)
    with pytest.raises(InputError, match="^design: run .* a design needs whole volumes"):
        design_toml(result)


@pytest.mark.parametrize("kwargs, message", [
    ({"criterion": "entropy"}, "^criterion: 'entropy'"),
    ({"batch": 0}, "^batch: 0"),
    ({"outcomes": 1}, "^outcomes: 1"),
    ({"options": {"objective": "worst"}}, "^objective: propose cannot score 'worst'"),
    ({"options": {"objective": "minimax:cvar:0.9"}}, "^objective: propose cannot score"),
    ({"options": {"chance": ["d1<=0.5@0.9"]}}, "^chance: propose scores the objective"),
])
def test_bad_settings_are_one_line_errors(small_draws, small_grid, kwargs, message):
    pool = make_candidates(small_draws.sources, small_grid).subset(np.arange(4))
    with pytest.raises(InputError, match=message):
        propose(small_draws, 100.0, pool, **kwargs)


def test_candidates_beyond_the_available_data_are_left_out(small_draws, small_grid):
    pool = make_candidates(small_draws.sources, small_grid).subset(np.arange(20))
    cap = {small_draws.sources[0]: 1.0}
    result = propose(small_draws, 100.0, pool, batch=3, options={"upper": cap}, outcomes=16, decisions=4)
    assert all(run.amounts.get(small_draws.sources[0], 0.0) <= 1.0 for run in result.batch)
    dropped = int(np.sum(pool.amounts[:, 0] > 1.0))
    assert dropped > 0 and any(f"{dropped} of 20 candidates ask for more" in note for note in result.notes)
    with pytest.raises(InputError, match="^candidates: every candidate asks for more"):
        propose(small_draws, 100.0, pool.subset(np.flatnonzero(pool.amounts[:, 0] > 1.0)), options={"upper": cap})


def test_the_batch_stops_where_the_reweighted_posterior_thins_out(small_draws, small_grid):
    pool = make_candidates(small_draws.sources, small_grid).subset(np.arange(0, 80, 4))
    strict = propose(small_draws, 100.0, pool, batch=4, outcomes=16, decisions=4, min_effective_draws=499.0)
    assert len(strict.batch) == 1 and any(note.startswith("stopped after 1 of 4 runs") for note in strict.notes)
    free = propose(small_draws, 100.0, pool, batch=4, outcomes=16, decisions=4, min_effective_draws=0)
    assert len(free.batch) == 4 and free.batch[0].name == strict.batch[0].name
    assert free.batch[1].effective_draws < 499.0  # why the strict batch stopped
    with pytest.raises(InputError, match="^min_effective_draws: -1"):
        propose(small_draws, 100.0, pool, min_effective_draws=-1)


def test_an_svi_guide_that_fails_its_check_is_named_in_the_notes(small_draws, small_grid, small_fit):
    from bayescale.inference.posterior import diagnostics

    pool = make_candidates(small_draws.sources, small_grid).subset(np.arange(8))
    failing = {"method": "svi", "approximate": True, "psis_khat": 3.21, "khat_limit": 0.7, "ok": False}
    result = propose(small_draws, 100.0, pool, batch=1, outcomes=8, decisions=2, diagnostics=failing)
    assert any("SVI guide that fails its check (PSIS k-hat 3.21 > 0.7)" in note for note in result.notes)
    for fine in ({**failing, "psis_khat": 0.4, "ok": True}, diagnostics(small_fit), None):
        quiet = propose(small_draws, 100.0, pool, batch=1, outcomes=8, decisions=2, diagnostics=fine)
        assert not any("SVI" in note for note in quiet.notes)
