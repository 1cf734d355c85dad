"""The SVI check (bayescale.inference.sampling): the Pareto k-hat of p(theta, y) / q(theta) over the
guide's draws, on guides whose k is known, and on a real SVI fit of the small world."""

from __future__ import annotations

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from bayescale import laws
from bayescale.inference.posterior import KHAT_LIMIT, diagnostics
from bayescale.inference.sampling import SVIFit, approximate_svi, guide_psis_khat


def standard_normal(data):
    numpyro.sample("x", dist.Normal(0.0, 1.0))


def normal_guide(scale):
    def guide(data):
        numpyro.sample("x", dist.Normal(0.0, scale))
    return guide


@pytest.mark.parametrize("scale, low, high", [
    (0.15, KHAT_LIMIT, np.inf),  # far too narrow: the ratios have tail index 1 / (1 - 0.15^2), k = 0.98
    (1.5, -np.inf, 0.0),  # wider than the target: bounded ratios, k < 0
])
def test_khat_sees_a_guide_that_is_too_narrow(scale, low, high):
    khat = guide_psis_khat(standard_normal, normal_guide(scale), {}, None, {}, jax.random.PRNGKey(0), 4000)
    assert low < khat < high


def test_khat_of_the_exact_posterior_is_minus_infinity():
    khat = guide_psis_khat(standard_normal, normal_guide(1.0), {}, None, {}, jax.random.PRNGKey(0), 500)
    assert khat == -np.inf


def test_a_real_svi_fit_computes_a_finite_khat_that_the_diagnostics_judge(small_grid, small_fit):
    family = laws.get("transfer")
    data, _ = family.model_data(small_grid, "small grid")
    fitted = approximate_svi(family.model, data, family.model_kwargs("normal"), jax.random.PRNGKey(0), n_draws=200,
                             steps=1500, init_samples=family.init_samples, progress=False)
    assert isinstance(fitted, SVIFit)
    samples, final_loss = fitted  # unpacks as it always did
    assert samples is fitted.samples and final_loss == fitted.final_loss and np.isfinite(final_loss)
    assert samples["alpha"].shape[:2] == (1, 200)
    assert np.isfinite(fitted.psis_khat)
    # The posterior's attrs carry it (fit stores it there); --strict fails the fit where it exceeds 0.7.
    svi = small_fit.copy(deep=True)
    del svi["sample_stats"]
    svi.attrs.update({"method": "svi", "approximate": 1, "psis_khat": fitted.psis_khat})
    diag = diagnostics(svi)
    assert diag["psis_khat"] == fitted.psis_khat
    assert diag["ok"] is (fitted.psis_khat <= KHAT_LIMIT)
