import numpy as np
import pytest

from bayescale.errors import InputError
from bayescale.inference.fit import fit
from bayescale.laws.transfer import model_data
from bayescale.data.grid import select_split
from bayescale.inference.posterior import diagnostics, law_draws, load_posterior, save_posterior, validate_posterior
from bayescale.data.simulate import true_params


def test_posterior_follows_the_contract(small_fit, small_grid):
    validate_posterior(small_fit)
    for group in ("posterior", "sample_stats", "log_likelihood", "observed_data", "constant_data"):
        assert group in small_fit.children
    post = small_fit["posterior"]
    for name in ("E", "A", "alpha", "x0", "sigma"):
        assert post[name].dims == ("chain", "draw", "target")
    for name in ("T", "beta"):
        assert post[name].dims == ("chain", "draw", "source", "target")
    names = list(small_grid["source"].values)
    assert list(post["source"].values) == names and list(post["target"].values) == names
    for k in names:  # a target's own source enters with coefficient 1
        np.testing.assert_array_equal(post["T"].sel(source=k, target=k).values, 1.0)
        np.testing.assert_array_equal(post["beta"].sel(source=k, target=k).values, 1.0)
    assert np.all(post["beta"].values > 0) and np.all(post["beta"].values <= 1)
    assert float(small_fit["constant_data"]["data_scale"]) > 0
    assert small_fit.attrs["law"] == "transfer" and small_fit.attrs["method"] == "nuts"


def test_only_fit_runs_are_used(small_fit, small_grid):
    fit_runs = set(select_split(small_grid, "fit")["run"].values)
    observed_runs = set(small_fit["observed_data"]["obs_run"].values)
    assert observed_runs == fit_runs
    n_cells = int(np.isfinite(select_split(small_grid, "fit")["loss"]).sum())
    assert small_fit["log_likelihood"]["log_loss"].sizes["obs"] == n_cells


def test_sampler_converged(small_fit):
    # The shared fixture is deliberately short (2 x 1000 draws), so this asks for a usable
    # sample rather than the --strict standard (r-hat <= 1.01, bulk ESS >= 400).
    diag = diagnostics(small_fit)
    assert diag["max_rhat"] < 1.05
    assert diag["divergences"] <= 5
    assert diag["min_ess_bulk"] > 80


def test_recovers_the_world(small_fit, small_grid):
    draws = law_draws(small_fit)
    truth = true_params(small_grid, draws.data_scale)
    # Own scaling rates are the best-identified parameters: truth inside the 95 % interval.
    lo, hi = np.quantile(draws.alpha, [0.025, 0.975], axis=0)
    inside = (lo <= truth["alpha"].values) & (truth["alpha"].values <= hi)
    assert inside.mean() >= 0.75
    # The hub's out-transfer is credibly larger than the island's.
    off = 1 - draws.self_mask
    out = (draws.T * off).sum(axis=2)
    hub, island = 0, len(draws.sources) - 1
    assert np.mean(out[:, hub] > out[:, island]) > 0.95


def test_round_trip_through_netcdf(small_fit, tmp_path):
    path = tmp_path / "fit.nc"
    save_posterior(small_fit, path)
    again = load_posterior(path)
    a, b = law_draws(small_fit), law_draws(again)
    np.testing.assert_allclose(a.T, b.T)
    assert a.sources == b.sources and a.data_scale == b.data_scale and again.attrs["law"] == "transfer"


@pytest.mark.parametrize("law", ["linear", "independent"])
def test_nested_laws(small_grid, law):
    idata = fit(small_grid, law=law, chains=1, warmup=150, draws=100, seed=0)
    draws = law_draws(idata)
    assert idata.attrs["law"] == law
    np.testing.assert_array_equal(draws.beta, 1.0)
    if law == "independent":
        np.testing.assert_array_equal(draws.T, np.broadcast_to(draws.self_mask, draws.T.shape))


def test_loss_se_enters_the_noise(small_grid):
    g = small_grid.copy()
    g["loss_se"] = g["loss"] * 0.5  # huge standard errors: the fit must widen
    data, _ = model_data(g)
    np.testing.assert_allclose(data.log_se, 0.5)


def test_bad_settings_are_clear_errors(small_grid):
    with pytest.raises(InputError, match="^chains must be >= 1") as caught:
        fit(small_grid, chains=0)
    assert caught.value.parameter == "chains"
    with pytest.raises(InputError, match="unknown law"):
        fit(small_grid, law="cubic")
    with pytest.raises(InputError, match="no runs with split == 'fit'"):
        g = small_grid.assign_coords(split=("run", ["holdout"] * small_grid.sizes["run"]))
        fit(g)


def test_svi_is_a_fast_approximate_posterior_in_the_same_contract(small_grid):
    idata = fit(small_grid, method="svi", draws=250, svi_steps=1500, seed=0)
    validate_posterior(idata)
    assert idata.attrs["method"] == "svi" and idata.attrs["approximate"] == 1
    diag = diagnostics(idata)
    assert diag["approximate"] and diag["draws"] == 4 * 250
    draws = law_draws(idata)
    truth = true_params(small_grid, draws.data_scale)
    lo, hi = np.quantile(draws.alpha, [0.005, 0.995], axis=0)
    assert np.mean((lo <= truth["alpha"].values) & (truth["alpha"].values <= hi)) >= 0.5


def test_prior_predictive_covers_the_observed_losses(small_grid):
    from bayescale.inference.fit import prior_predictive

    check = prior_predictive(small_grid, draws=300, seed=0)
    for row in check["targets"].values():
        assert row["prior_predictive"]["q05"] < row["observed"]["min"] and row["observed"]["max"] < row["prior_predictive"]["q95"]
        assert row["observed_inside_90"] >= 0.9


def test_auto_keeps_the_svi_guide_only_where_its_khat_passes(small_grid, monkeypatch):
    """``method="auto"``: the guide where its Pareto k-hat passes, else NUTS from the same key, so the
    fallback's draws are those of ``method="nuts"`` to the bit; the attrs say which and why."""
    import bayescale.inference.fit as fit_module

    settings = dict(chains=1, warmup=40, draws=40, svi_steps=800, seed=3, extrapolation=False)
    monkeypatch.setattr(fit_module, "KHAT_LIMIT", np.inf)  # every guide passes: the guide
    guide = fit(small_grid, method="auto", **settings)
    assert guide.attrs["method"] == "svi" and guide.attrs["approximate"] == 1
    khat = guide.attrs["psis_khat"]
    assert np.isfinite(khat) and guide.attrs["method_choice"] == f"auto: the SVI guide's Pareto k-hat {khat:.2f} <= inf, SVI kept"
    validate_posterior(guide)

    monkeypatch.setattr(fit_module, "KHAT_LIMIT", -np.inf)  # no guide passes: NUTS
    fallback = fit(small_grid, method="auto", **settings)
    assert fallback.attrs["method"] == "nuts" and fallback.attrs["method_choice"].endswith(f"{khat:.2f} > -inf, NUTS instead")
    assert "approximate" not in fallback.attrs and "psis_khat" not in fallback.attrs
    nuts = fit(small_grid, method="nuts", **settings)
    for name in ("alpha", "level", "sigma", "T", "noise_slope"):
        np.testing.assert_array_equal(fallback["posterior"][name].values, nuts["posterior"][name].values)


def test_each_warmup_reports_how_long_its_draws_will_take(small_grid):
    """The full fit and the leave-future-out fit each report once, between warm-up and draws."""
    reports = []
    idata = fit(small_grid, chains=1, warmup=40, draws=30, seed=0, on_warmup=reports.append)
    assert [r["fit"] for r in reports] == ["grid", "grid (smaller budgets)"]
    assert json_kind(idata) == "leave-future-out"
    for report in reports:
        assert report["draws"] == 30 and report["warmup_seconds"] > 0 and report["estimated_seconds"] > 0
        assert 1 <= report["steps_per_draw"] <= 1023


def json_kind(idata):
    import json
    return json.loads(idata.attrs["extrapolation"])["kind"]
