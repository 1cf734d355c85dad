"""Every generic function over every registered law family: a family is tested the moment it
is registered. Real NUTS on each family's own example grid (short chains: these tests check
plumbing and agreement between the model and the prediction code, not convergence)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
from numpyro import handlers

from bayescale import laws
from bayescale.errors import InputError
from bayescale.evaluate.check import holdout_predictions, score_posterior
from bayescale.evaluate.compare import compare_fits
from bayescale.evaluate.hubs import hub_island_table
from bayescale.evaluate.predict import add_observation_noise, loss_draws, predict
from bayescale.inference.fit import fit, prior_predictive
from bayescale.inference.posterior import diagnostics, law_draws, load_posterior, require_amounts, save_posterior, validate_posterior
from bayescale.laws.base import LawFamily

FAMILIES = laws.names()
SHORT = {"chains": 2, "warmup": 150, "draws": 100, "target_accept": 0.9}


@pytest.fixture(scope="module", params=FAMILIES)
def fitted(request):
    family = laws.get(request.param)
    grid = family.example_grid(seed=2)
    return family, grid, fit(grid, law=family.name, seed=1, grid_name="example.nc", **SHORT)


def test_registry_holds_the_four_families_and_refuses_duplicates_and_strangers():
    assert set(FAMILIES) >= {"transfer", "linear", "independent", "mixing"}
    for name in FAMILIES:
        assert isinstance(laws.get(name), LawFamily) and laws.get(name).name == name
    with pytest.raises(ValueError, match="already registered"):
        laws.register(laws.get("transfer"))
    with pytest.raises(TypeError, match="LawFamily protocol"):
        laws.register(object())
    with pytest.raises(InputError, match="unknown law 'bending'"):
        laws.get("bending")


def test_fit_writes_the_contract_and_survives_a_round_trip(fitted, tmp_path):
    family, grid, idata = fitted
    assert idata.attrs["law"] == family.name and idata["posterior"].attrs["law"] == family.name
    validate_posterior(idata, "fresh")
    path = tmp_path / "fit.nc"
    save_posterior(idata, path)
    loaded = load_posterior(path)
    for name in family.parameters:
        if name in idata["posterior"].data_vars:
            np.testing.assert_array_equal(loaded["posterior"][name].values, idata["posterior"][name].values)
    assert laws.of_posterior(loaded) is family


def test_diagnostics_cover_the_family_parameters(fitted):
    family, _, idata = fitted
    diag = diagnostics(idata)
    assert diag["draws"] == SHORT["chains"] * SHORT["draws"] and diag["chains"] == SHORT["chains"]
    assert np.isfinite(diag["max_rhat"]) and diag["min_ess_bulk"] > 0


def test_prediction_code_agrees_with_the_model(fitted):
    """The family's prediction from draws (its own vectorised code) equals the location of the
    NumPyro model's likelihood when the model is replayed with the same draws."""
    family, grid, idata = fitted
    draws = law_draws(idata)
    data, coords = family.model_data(grid, "example.nc")
    if family.members:
        # A stack samples no model of its own: its draws are its members' (each checked here).
        with pytest.raises(InputError, match="no model of its own"):
            family.model(data)
        weights = json.loads(idata.attrs["stack_weights"])
        assert set(weights) == set(family.members) and sum(weights.values()) == pytest.approx(1.0)
        assert draws.n_draws == SHORT["chains"] * SHORT["draws"]
        # each draw names its family; a member's share of the draws is its weight (among those kept)
        from bayescale.inference.fit import MIN_STACK_WEIGHT

        kept = {m: w for m, w in weights.items() if w >= MIN_STACK_WEIGHT}
        names, counts = np.unique(idata["posterior"]["law"].values.astype(str), return_counts=True)
        assert set(names) <= set(kept)
        for name, count in zip(names, counts):
            assert abs(count - kept[name] / sum(kept.values()) * draws.n_draws) <= 1
        return
    runs = grid.isel(run=np.flatnonzero(grid["split"].values == "fit"))
    amounts = runs["data"].transpose("run", "source").values
    predicted = loss_draws(draws, amounts, log=True)  # (S, N, J)
    post = idata["posterior"].to_dataset()
    for s in (0, draws.n_draws // 2, draws.n_draws - 1):
        chain, draw = divmod(s, post.sizes["draw"])
        values = {name: np.asarray(post[name].values[chain, draw]) for name in post.data_vars}
        model = handlers.substitute(handlers.seed(family.model, 0), data=values)
        site = handlers.trace(model).get_trace(data, **family.model_kwargs(family.likelihoods[0]))["log_loss"]
        loc = np.asarray(site["fn"].base_dist.loc if hasattr(site["fn"], "base_dist") else site["fn"].loc)
        # The fit runs' own run effects sit in the likelihood; a prediction is for a new run.
        # (at each run's total data: sigma_run (B / B_max)^-noise_slope, as the misfit)
        factor = np.exp(-values["noise_slope"] * np.asarray(data.log_budget)) if "noise_slope" in values else 1.0
        run_effect = (values["sigma_run"] * factor * values["z_run"])[data.obs_run] if "z_run" in values else 0.0
        np.testing.assert_allclose(predicted[s, data.obs_run, data.obs_target] + run_effect, loc, rtol=2e-5, atol=2e-5)


def test_noise_matches_each_draws_sigma(fitted):
    family, _, idata = fitted
    draws = law_draws(idata)
    zero = np.zeros((draws.n_draws, 4000, len(draws.targets)))
    noise = add_observation_noise(zero, draws, np.random.default_rng(0))
    # A new run's cell noise and its run effect (shared by its targets) add in quadrature.
    run_sd = np.zeros(draws.n_draws) if getattr(draws, "sigma_run", None) is None else draws.sigma_run
    expected = np.sqrt(draws.sigma**2 + run_sd[:, None] ** 2)
    # the sample sd over 4000 cells estimates its sd to ~1.1 % (sd of a sample sd: sd / sqrt(2 n))
    np.testing.assert_allclose(noise.std(axis=1), expected, rtol=5 * np.sqrt(1 / (2 * 4000)))
    if len(draws.targets) > 1 and getattr(draws, "sigma_run", None) is not None:
        # covariance of two targets of one run is sigma_run^2 (sd of a sample covariance ~ sd_a sd_b / sqrt(n))
        cov = np.mean(noise[:, :, 0] * noise[:, :, 1], axis=1)
        tol = 5 * expected[:, 0] * expected[:, 1] / np.sqrt(4000)
        assert np.all(np.abs(cov - run_sd**2) <= tol)


def test_held_out_check_scores_every_family(fitted):
    family, grid, idata = fitted
    pred, scores = score_posterior(idata, grid, where="example.nc")
    held = grid.isel(run=np.flatnonzero(grid["split"].values == "holdout"))
    assert scores["n"] == int(np.isfinite(held["loss"].values).sum())
    assert scores["calibration"]["verdict"] in ("ok", "over-confident", "under-confident")
    assert (pred["lo90"] <= pred["median"]).all() and (pred["median"] <= pred["hi90"]).all()
    # the same predictions straight from the draws
    again = holdout_predictions(law_draws(idata), grid, where="example.nc")
    xr.testing.assert_allclose(again, pred)


def test_prior_predictive_and_loo_comparison(fitted):
    family, grid, idata = fitted
    if family.members:
        with pytest.raises(InputError, match="has no prior of its own"):
            prior_predictive(grid, law=family.name, draws=50)
    else:
        prior = prior_predictive(grid, law=family.name, draws=50)
        assert set(prior["targets"]) == {str(t) for t in grid["target"].values}
    rows = compare_fits({"a.nc": idata, "b.nc": idata})
    assert [r["law"] for r in rows] == [family.name] * 2 and rows[1]["elpd_diff"] == pytest.approx(0.0)


def test_capabilities_decide_prediction_allocation_and_hubs(fitted):
    family, grid, idata = fitted
    draws = law_draws(idata)
    if family.amounts:
        result = predict(require_amounts(draws, "predict"), {draws.sources[0]: 10.0})
        assert set(result["targets"]) == set(draws.targets)
    else:
        with pytest.raises(InputError, match="needs a law of data amounts"):
            require_amounts(draws, "allocate")
    if family.transfer:
        table = hub_island_table(idata)
        assert set(table["domain"].values) <= set(draws.sources) | set(draws.targets)
    else:
        with pytest.raises(InputError, match="no transfer parameters"):
            hub_island_table(idata)
