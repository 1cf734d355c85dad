"""Partial centring (bayescale.inference.reparam, laws.base.partially_centred_normal): the prior of
a centred entry is the prior it had; the pilot centres what the data pin down and leaves what they
do not; a fit with the chosen centring is the same posterior as a non-centred one, and its stored
log-likelihood is the law's own, recomputed here from the law's parameters."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import numpyro
import pytest
import scipy.stats
from numpyro.infer import Predictive

from bayescale import laws
from bayescale.data import simulate
from bayescale.inference import reparam
from bayescale.inference.fit import fit
from bayescale.inference.posterior import diagnostics
from bayescale.laws.base import partially_centred_normal
from bayescale.laws.transfer import HIERARCHICAL_SITES


@pytest.mark.parametrize("centring", [0.0, 0.3, 1.0, np.array([0.0, 0.5, 1.0])])
def test_the_value_has_its_prior_whatever_the_centring(centring):
    loc, scale, n = np.array([2.0, -1.0, 0.5]), np.array([0.5, 2.0, 0.1]), 20000

    def model():
        with numpyro.plate("p", 3):
            numpyro.deterministic("value", partially_centred_normal("w", loc, scale, centring))

    values = np.asarray(Predictive(model, num_samples=n)(jax.random.PRNGKey(0))["value"])
    for k in range(3):
        # Kolmogorov-Smirnov against Normal(loc, scale): p < 1e-3 only if the prior changed
        assert scipy.stats.kstest(values[:, k], scipy.stats.norm(loc[k], scale[k]).cdf).pvalue > 1e-3


def informative_grid(noise: float, seed: int = 0):
    world = dataclasses.replace(simulate.draw_world(3, seed=seed), sigma=np.full(3, noise))
    world.design = simulate.Design(fit_budgets=(4.0, 8.0, 16.0, 32.0, 64.0), holdout_budgets=(128.0,), mixtures_per_budget=8)
    return simulate.simulate_grid(world, seed=seed)


def pilot(grid, law="transfer"):
    family = laws.get(law)
    data, _ = family.model_data(grid)
    return reparam.choose_centring(family, data, family.model_kwargs("normal"), jax.random.PRNGKey(0))


def test_the_pilot_centres_entries_the_data_pin_down_and_not_those_they_do_not():
    precise = pilot(informative_grid(0.002))
    noisy = pilot(informative_grid(0.5))
    assert set(precise) == set(HIERARCHICAL_SITES)
    for site, c in precise.items():
        assert c.shape == noisy[site].shape and np.all((c >= 0) & (c <= 1))
    # 40 runs at 0.2 % noise pin a target's exponent down (centred); at 50 % noise the
    # offsets x0 and the transfer coefficients log T are left to the prior (non-centred).
    for site in ("z_alpha", "z_x0", "h"):
        assert precise[site].mean() > 0.8, site
    for site in ("z_x0", "u", "h"):
        assert precise[site].mean() > noisy[site].mean() + 0.3, site


def test_the_pilot_skips_a_non_finite_step_instead_of_ending_in_nan():
    """The shipped phantom grid with fit's own pilot key (seed 0): its start hits a non-finite ELBO
    at step 65 and, without skipping that step, the whole pilot ended in NaN and fit sampled every
    entry non-centred without a word. Now it settles and centres what the data pin down."""
    from bayescale.data.grid import load_grid

    family = laws.get("transfer")
    data, _ = family.model_data(load_grid(laws.__file__.rsplit("/bayescale/", 1)[0] + "/data/grids/phantom-mae.nc"), "phantom")
    key = jax.random.fold_in(jax.random.PRNGKey(0), 7)  # the key fit(seed=0) gives the pilot
    chosen = reparam.choose_centring(family, data, family.model_kwargs("normal"), key)
    assert set(chosen) >= {"z_e", "z_alpha", "z_x0", "z_sigma", "h", "r", "u"}
    assert all(np.all((0 <= c) & (c <= 1)) for c in chosen.values())
    # the scale parameters of the misfit are pinned by 90 runs x 5 targets: centred more than half
    assert np.all(chosen["z_sigma"] > 0.5)


def test_a_law_without_transfer_sites_and_the_mixing_law_get_what_they_have():
    grid = informative_grid(0.02)
    assert set(pilot(grid, "independent")) == {"z_e", "z_alpha", "z_x0", "z_sigma"}
    assert set(pilot(grid, "linear")) == {"z_e", "z_alpha", "z_x0", "z_sigma", "h", "r", "u"}
    mixing = laws.get("mixing")
    assert mixing.hierarchical_sites == () and mixing.dense_blocks == ()


def test_an_unknown_centring_is_refused_before_any_sampling():
    from bayescale.errors import InputError

    with pytest.raises(InputError, match="centring must be one of auto, none, got 'centred'"):
        fit(informative_grid(0.02), centring="centred", chains=1, warmup=1, draws=1)


@pytest.fixture(scope="module")
def two_fits():
    grid = informative_grid(0.02)
    # The linear law (the transfer hierarchy h, r, u without beta's b): both samplers converge on this
    # K = 3 grid at fit seeds 1, 2 and 3 (r-hat <= 1.026, <= 10 divergences of 1200, measured). The
    # transfer law's centred fit does not mix reliably here (seed 2 converged on one install and gave
    # r-hat 1.09, ESS 25 on a fresh one; 2 x (800 + 600) or noise 0.01 or 0.005 did not fix both):
    # the centred path is fragile at K = 3 (docs/speed.md), and this test compares two posteriors, so
    # both samplers must have found theirs. That centring keeps any entry's prior is tested above.
    kwargs = {"law": "linear", "chains": 2, "warmup": 400, "draws": 600, "seed": 2, "extrapolation": False}
    centred = fit(grid, centring="auto", **kwargs)
    non_centred = fit(grid, centring="none", dense_mass=False, **kwargs)
    return grid, centred, non_centred


def test_the_centred_fit_is_the_same_posterior(two_fits):
    import arviz as az

    _, centred, non_centred = two_fits
    assert "centring" in centred.attrs and "centring" not in non_centred.attrs
    assert set(json.loads(centred.attrs["centring"])) == set(HIERARCHICAL_SITES) - {"b"}
    for d in (diagnostics(centred), diagnostics(non_centred)):
        # both converged; a few divergences would bias a mean, which the comparison below would show
        assert d["max_rhat"] < 1.05 and d["divergences"] <= 0.02 * d["draws"], d
    for name in ("E", "A", "alpha", "T"):
        a, b = (f["posterior"].to_dataset()[name] for f in (centred, non_centred))
        se_a, se_b = (az.mcse(f["posterior"].to_dataset()[[name]], method="mean")[name] for f in (centred, non_centred))
        diff = np.abs(a.mean(("chain", "draw")) - b.mean(("chain", "draw")))
        # two independent Monte Carlo estimates of one posterior mean: 5 joint standard errors
        tolerance = 5 * np.sqrt(se_a**2 + se_b**2) + 1e-9
        assert bool((diff <= tolerance).all()), (name, float((diff / tolerance).max()))


def test_the_stored_log_likelihood_is_the_laws_recomputed_from_its_parameters():
    grid = informative_grid(0.02)
    # a centred transfer fit (beta free); whether it mixed does not matter to this identity
    centred = fit(grid, centring="auto", chains=1, warmup=150, draws=600, seed=2, extrapolation=False)
    post = centred["posterior"].to_dataset()
    data, _ = laws.get("transfer").model_data(grid)
    d = data.d
    flat = {k: post[k].values.reshape((-1,) + post[k].shape[2:]) for k in ("E", "A", "alpha", "x0", "sigma", "T", "beta")}
    loglik = centred["log_likelihood"].to_dataset()["log_loss"].values.reshape(-1, data.obs_run.size)
    noise_slope = post["noise_slope"].values.reshape(-1)
    assert noise_slope.max() > 0.05  # the factor is in play
    mask = data.self_mask
    for s in (0, 77, 599):
        with np.errstate(divide="ignore"):
            powered = np.where(d[:, :, None] > 0, d[:, :, None] ** flat["beta"][s][None], 0.0)
        x = flat["x0"][s] + d @ mask + np.einsum("ij,nij->nj", flat["T"][s] * (1 - mask), powered)
        mean = np.log(flat["E"][s] + flat["A"][s] * x ** (-flat["alpha"][s]))
        # the misfit sd at each run's total data over the largest fit run's, to the draw's noise_slope
        totals = d.sum(axis=1)
        misfit = flat["sigma"][s][data.obs_target] * (totals / totals.max())[data.obs_run] ** -noise_slope[s]
        expected = scipy.stats.norm.logpdf(data.log_loss, mean[data.obs_run, data.obs_target], misfit)
        np.testing.assert_allclose(loglik[s], expected, rtol=1e-4, atol=1e-4)
