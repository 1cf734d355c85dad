"""The exponential mixing law: the pure function, the model's coordinates, a real NUTS
recovery on a small simulated fixed-budget grid, prediction, and (slow) the RegMix grid."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

from bayescale.data import realgrids
from bayescale.errors import InputError
from bayescale.evaluate.check import check_holdout
from bayescale.inference.fit import fit
from bayescale.inference.posterior import diagnostics
from bayescale.laws import mixing

SOURCES = ["a", "b", "c", "d"]
TARGETS = ["a", "b", "c"]


def true_law(seed=3):
    rng = np.random.default_rng(seed)
    t = rng.normal(0.0, 0.7, (4, 3))
    t[[0, 1, 2], [0, 1, 2]] = -3.0  # a target's own domain lowers its loss most
    return np.array([1.5, 2.0, 2.5]), np.array([1.0, 0.8, 1.2]), t


# ---------------------------------------------------------------------------
# the law


def test_mixing_loss_matches_the_formula_written_out():
    c, k, t = true_law()
    r = np.random.default_rng(0).dirichlet(np.ones(4), size=6)
    got = np.asarray(mixing.mixing_loss(jnp.asarray(r), c, k, t))
    for n in range(6):
        for j in range(3):
            assert got[n, j] == pytest.approx(c[j] + k[j] * np.exp(sum(t[i, j] * r[n, i] for i in range(4))), rel=1e-5)
    np.testing.assert_allclose(np.asarray(mixing.mixing_log_loss(jnp.asarray(r), c, k, t)), np.log(got), rtol=1e-5)


def test_mixing_log_loss_has_finite_gradients_even_with_tiny_c_and_pure_mixtures():
    c, k, t = true_law()
    r = jnp.asarray(np.vstack([np.eye(4), np.full((1, 4), 0.25)]))
    f = lambda c, k, t: mixing.mixing_log_loss(r, c, k, t).sum()  # noqa: E731
    for c_value in (c, np.full(3, 1e-12)):
        grads = jax.grad(f, argnums=(0, 1, 2))(jnp.asarray(c_value), jnp.asarray(k), jnp.asarray(t))
        assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)


def test_identified_representative_is_the_same_law():
    c, k, t = true_law()
    r = np.random.default_rng(1).dirichlet(np.ones(4), size=20)
    r_ref = r.mean(axis=0)
    ci, ki, ti = mixing.identified(c, k, t, r_ref)
    np.testing.assert_allclose(r_ref @ ti, 0.0, atol=1e-12)
    np.testing.assert_allclose(np.asarray(mixing.mixing_loss(r, ci, ki, ti)), np.asarray(mixing.mixing_loss(r, c, k, t)), rtol=1e-5)


def test_sampling_coordinates_span_the_identified_exponents_and_whiten_the_design():
    r = np.random.default_rng(2).dirichlet(np.full(5, 0.5), size=200)
    r_ref = r.mean(axis=0)
    basis = mixing.contrast_basis(r_ref)
    assert basis.shape == (5, 4)
    np.testing.assert_allclose(r_ref @ basis, 0.0, atol=1e-12)
    assert np.linalg.matrix_rank(basis) == 4
    slope_basis, slope_loc, slope_tril = mixing.slope_coordinates(r, basis)
    np.testing.assert_allclose(r_ref @ slope_basis, 0.0, atol=1e-10)
    gram = (r @ slope_basis).T @ (r @ slope_basis) / len(r)
    np.testing.assert_allclose(gram, np.eye(4), atol=0.01)  # orthonormal up to the small ridge
    # slope_loc maps any identified vector to its coordinates
    x = basis @ np.random.default_rng(3).normal(size=4)
    np.testing.assert_allclose(slope_basis @ (slope_loc @ x), x, atol=1e-10)
    assert np.allclose(slope_tril, np.tril(slope_tril))


def test_mixing_is_a_registered_family_of_proportions_not_amounts():
    from bayescale import laws as registry

    family = registry.get("mixing")
    assert family is mixing.MIXING and "mixing" in registry.names()
    assert not family.amounts and not family.transfer  # no prediction at other budgets, no hubs
    assert all(registry.get(name).amounts for name in ("transfer", "linear", "independent"))


# ---------------------------------------------------------------------------
# the model on a simulated world (real NUTS)


@pytest.fixture(scope="module")
def simulated():
    c, k, t = true_law()
    grid = mixing.simulate_mixing_grid(c, k, t, [0.01] * 3, sources=SOURCES, targets=TARGETS, runs=80, holdout=20, seed=1)
    return grid, (c, k, t)


@pytest.fixture(scope="module")
def simulated_fit(simulated):
    grid, _ = simulated
    # the generic fit, with the mixing family from the registry
    return fit(grid, law="mixing", chains=2, warmup=300, draws=300, target_accept=0.9, seed=0, grid_name="sim.nc")


def test_fit_returns_a_posterior_tree_with_the_mixing_parameters(simulated_fit):
    idata = simulated_fit
    assert idata.attrs["law"] == "mixing" and idata.attrs["grid"] == "sim.nc"
    for group in ("posterior", "sample_stats", "log_likelihood", "observed_data", "constant_data"):
        assert group in idata.children
    post = idata["posterior"]
    assert post["c"].dims == ("chain", "draw", "target") and post["k"].dims == ("chain", "draw", "target")
    assert post["t"].dims == ("chain", "draw", "source", "target")
    assert list(post["source"].values) == SOURCES and list(post["target"].values) == TARGETS
    assert idata["log_likelihood"]["log_loss"].shape == (2, 300, 60 * 3)
    assert idata["constant_data"]["r_ref"].dims == ("source",)
    assert float(idata["constant_data"]["budget"]) == pytest.approx(1.0)
    draws = mixing.mixing_draws(idata)
    np.testing.assert_allclose(draws.r_ref @ draws.t, 0.0, atol=1e-4)  # the identified representative
    assert (draws.k > 0).all() and (draws.c >= 0).all()


def test_model_recovers_the_known_law(simulated, simulated_fit):
    grid, (c, k, t) = simulated
    diag = diagnostics(simulated_fit)
    assert diag["divergences"] <= 5 and diag["max_rhat"] < 1.05
    draws = mixing.mixing_draws(simulated_fit)
    ci, ki, ti = mixing.identified(c, k, t, draws.r_ref)
    for name, truth, samples in (("c", ci, draws.c), ("k", ki, draws.k), ("t", ti, draws.t)):
        lo, hi = np.quantile(samples, [0.005, 0.995], axis=0)
        inside = (lo <= truth) & (truth <= hi)
        assert inside.mean() >= 0.8, f"{name}: truth inside the 99 % interval for only {inside.mean():.0%}"
    np.testing.assert_allclose(np.median(draws.t, axis=0), ti, atol=0.3)
    np.testing.assert_allclose(np.median(draws.sigma, axis=0), 0.01, rtol=0.4)


def test_held_out_mixtures_are_predicted(simulated, simulated_fit):
    grid, _ = simulated
    draws = mixing.mixing_draws(simulated_fit)
    scores = check_holdout(draws, grid)
    assert set(scores) >= {"n", "pearson_r", "median_abs_rel_error", "coverage_50", "coverage_90"}
    assert scores["n"] == 60
    assert scores["pearson_r"] > 0.99
    assert scores["median_abs_rel_error"] < 0.02
    assert scores["coverage_90"] >= 0.7


def test_predict_new_mixtures(simulated, simulated_fit):
    grid, (c, k, t) = simulated
    draws = mixing.mixing_draws(simulated_fit)
    mixtures = [{"a": 1.0}, {"a": 0.5, "b": 0.5}, {"c": 2.0, "d": 2.0}]  # amounts are normalised
    pred = mixing.predict_mixing(draws, mixtures, interval=0.9)
    assert pred["median"].dims == ("mixture", "target") and pred.sizes == {"mixture": 3, "target": 3, "source": 4}
    assert (pred["lo"] <= pred["median"]).all() and (pred["median"] <= pred["hi"]).all()
    np.testing.assert_allclose(pred["proportions"].values.sum(axis=1), 1.0)
    truth = np.asarray(mixing.mixing_loss(pred["proportions"].values, c, k, t))
    np.testing.assert_allclose(pred["median"].values, truth, rtol=0.05)
    same = mixing.predict_mixing(draws, pred["proportions"].values)  # an array in source order works too
    np.testing.assert_allclose(same["median"].values, pred["median"].values)
    noisy = mixing.predict_mixing(draws, mixtures, noise=True)
    assert (noisy["hi"] - noisy["lo"] >= pred["hi"] - pred["lo"] - 1e-9).all()
    with pytest.raises(InputError, match="unknown source domain 'z'"):
        mixing.predict_mixing(draws, {"z": 1.0})
    with pytest.raises(InputError, match="no data at all"):
        mixing.predict_mixing(draws, {"a": 0.0})
    with pytest.raises(InputError, match="5 weights per mixture"):
        mixing.predict_mixing(draws, np.ones(5))


def test_posterior_survives_a_netcdf_round_trip(simulated_fit, tmp_path):
    from bayescale.inference.posterior import save_posterior

    save_posterior(simulated_fit, tmp_path / "mix.nc")
    back = xr.open_datatree(tmp_path / "mix.nc", engine="netcdf4").load()
    a, b = mixing.mixing_draws(simulated_fit), mixing.mixing_draws(back)
    np.testing.assert_allclose(a.t, b.t)
    assert a.sources == b.sources and a.budget == b.budget


def test_mixing_draws_refuse_a_transfer_posterior():
    tree = xr.DataTree(xr.Dataset(attrs={"law": "transfer"}))
    with pytest.raises(InputError, match="not a mixing-law posterior"):
        mixing.mixing_draws(tree)


def test_fit_refuses_a_grid_it_cannot_mix(simulated):
    grid, _ = simulated
    one_source = grid.isel(source=[0])
    one_source = one_source.assign(data=one_source["data"] * 0 + 1.0)
    with pytest.raises(InputError, match="at least 2 sources"):
        fit(one_source, law="mixing")
    with pytest.raises(InputError, match="likelihood must be one of normal, got 'student_t'"):
        fit(grid, law="mixing", likelihood="student_t")
    with pytest.raises(InputError, match="method must be one of nuts, got 'svi'"):
        fit(grid, law="mixing", method="svi")


def test_auto_samples_the_mixing_law_with_nuts_as_it_has_no_guide(simulated):
    grid, _ = simulated
    idata = fit(grid, law="mixing", method="auto", chains=1, warmup=40, draws=40, target_accept=0.9, seed=0)
    assert idata.attrs["method"] == "nuts" and "has no SVI guide" in idata.attrs["method_choice"]


# ---------------------------------------------------------------------------
# the RegMix grid (slow: 512 runs x 13 targets x 17 sources)


@pytest.mark.slow
@pytest.mark.skipif(realgrids.shared_data_dir() is None, reason="shared third-party data not found")
def test_regmix_held_out_runs_are_predicted():
    grid = realgrids.regmix_grid(seed=0)
    idata = fit(grid, law="mixing", chains=2, warmup=300, draws=300, seed=0, target_accept=0.9)
    scores = check_holdout(mixing.mixing_draws(idata), grid)
    # measured (2 x 300 draws, seed 0): r 0.955, coverage 50 % 0.47, 90 % 0.93
    assert scores["n"] == 102 * 13
    assert scores["pearson_r"] > 0.93
    assert scores["coverage_90"] > 0.85
    assert scores["median_abs_rel_error"] < 0.04


def test_command_line_fits_and_checks_a_mixing_grid_and_refuses_transfer_only_commands(simulated, tmp_path):
    from typer.testing import CliRunner

    from bayescale.cli import app
    from bayescale.data.grid import save_grid
    from bayescale.inference.posterior import load_posterior

    grid, _ = simulated
    grid_path, fit_path, out = tmp_path / "g.nc", tmp_path / "f.nc", tmp_path / "c.json"
    save_grid(grid, grid_path)
    runner = CliRunner()
    r = runner.invoke(app, ["fit", str(grid_path), "--law", "mixing", "--chains", "1", "--warmup", "200", "--draws", "200", "--out", str(fit_path)])
    assert r.exit_code == 0 and fit_path.exists(), r.output
    assert "r-hat" in r.output  # the mixing law's own diagnostics
    r = runner.invoke(app, ["check", str(fit_path), str(grid_path), "--json", str(out)])
    assert r.exit_code == 0, r.output
    import json

    scores = json.loads(out.read_text())
    assert scores["pearson_r"] > 0.9 and "calibration" in scores
    # predict: a mixture at the fitted budget (the law sees its proportions)
    r = runner.invoke(app, ["predict", str(fit_path), "--alloc", f"{SOURCES[0]}=0.5,{SOURCES[1]}=0.5", "--json", str(out)])
    assert r.exit_code == 0, r.output
    predicted = json.loads(out.read_text())["targets"]
    draws = mixing.mixing_draws(load_posterior(fit_path))
    expected = np.median(np.exp(mixing.log_loss_draws(draws, [[0.5, 0.5, 0.0, 0.0]])[:, 0, :]), axis=0)
    np.testing.assert_allclose([predicted[t]["median"] for t in TARGETS], expected, rtol=1e-6)
    # allocate and hubs need a law of data amounts / with transfer: one line, exit 2
    for argv in (["allocate", str(fit_path), "--budget", "2"], ["hubs", str(fit_path)]):
        r = runner.invoke(app, argv)
        assert r.exit_code == 2 and "mixing" in r.output and r.output.strip().count("\n") == 0, r.output
