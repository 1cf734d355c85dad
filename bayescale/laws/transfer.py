"""The hierarchical Bayesian transfer scaling law as a NumPyro model.

Everything the model needs from a grid is packed into :class:`ModelData` (arrays in
law units), so the model itself is a pure function of arrays and can be sampled,
prior-sampled or simulated from without touching xarray.

Parameterisation (chosen so NUTS sees a well-conditioned posterior):

- ``alpha_j``, ``A_j``, ``sigma_j`` and ``x0_j`` are log-normal around shared means
  (partial pooling), written non-centred. ``A_j`` is scaled by the target's typical
  loss so one prior serves grids of any loss scale.
- ``E_j = m_j * sigmoid(e_j)`` with ``m_j`` the smallest loss observed on target j:
  the irreducible loss lies below every observation.
- ``log T_ij = mu_T + tau_h h_i + tau_r r_j + tau_u u_ij`` off a target's own source:
  ``h_i`` is source i's hubness, ``r_j`` target j's receptivity. ``T_jj = 1``.
- ``beta_ij = sigmoid(mu_b + tau_b b_ij)`` in (0, 1).

The likelihood is on log loss: Normal or Student-t, with scale
``sqrt(sigma_j^2 + (se / loss)^2)`` where the grid gives a standard error.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from bayescale.laws import power as laws

LIKELIHOODS = ("normal", "student_t")


@dataclasses.dataclass(frozen=True)
class ModelData:
    """Arrays the model is conditioned on (all NumPy; law units)."""

    d: np.ndarray  # (N, I) data per run and source, divided by D0
    obs_run: np.ndarray  # (M,) run index of each observed cell
    obs_target: np.ndarray  # (M,) target index of each observed cell
    log_loss: np.ndarray | None  # (M,) observed log loss (None: prior predictive)
    log_se: np.ndarray  # (M,) standard error of log loss (0 where unknown)
    self_mask: np.ndarray  # (I, J)
    loss_floor: np.ndarray  # (J,) smallest observed loss per target (upper bound of E)
    loss_scale: np.ndarray  # (J,) typical observed loss per target (scale of A)


# A pytree, so a compiled sampler can take new data of the same shapes without
# recompiling (MCMC(jit_model_args=True), as simulation-based calibration does).
jax.tree_util.register_dataclass(ModelData, data_fields=[f.name for f in dataclasses.fields(ModelData)], meta_fields=[])


def transfer_law_model(data: ModelData, law: str = "transfer", likelihood: str = "normal"):
    n_sources, n_targets = data.self_mask.shape
    self_mask = jnp.asarray(data.self_mask)
    off_self = 1.0 - self_mask

    def pooled_lognormal(name, loc, scale, tau_scale):
        """Per-target positive parameter, log-normal around a shared mean (non-centred)."""
        mu = numpyro.sample(f"mu_{name}", dist.Normal(loc, scale))
        tau = numpyro.sample(f"tau_{name}", dist.HalfNormal(tau_scale))
        with numpyro.plate("target_plate", n_targets):
            z = numpyro.sample(f"z_{name}", dist.Normal(0.0, 1.0))
        return jnp.exp(mu + tau * z)

    alpha = numpyro.deterministic("alpha", pooled_lognormal("alpha", jnp.log(0.35), 0.6, 0.4))
    A = numpyro.deterministic("A", jnp.asarray(data.loss_scale) * pooled_lognormal("A", jnp.log(0.5), 1.0, 0.5))
    x0 = numpyro.deterministic("x0", pooled_lognormal("x0", jnp.log(0.1), 1.0, 0.5))
    sigma = numpyro.deterministic("sigma", pooled_lognormal("sigma", jnp.log(0.03), 1.0, 0.5))
    with numpyro.plate("target_plate", n_targets):
        e = numpyro.sample("e", dist.Normal(0.0, 1.5))
    E = numpyro.deterministic("E", jnp.asarray(data.loss_floor) * jax_sigmoid(e))

    if law == "independent":
        T = self_mask
        beta = jnp.ones((n_sources, n_targets))
    else:
        mu_T = numpyro.sample("mu_T", dist.Normal(jnp.log(0.1), 1.5))
        tau_h = numpyro.sample("tau_h", dist.HalfNormal(1.0))
        tau_r = numpyro.sample("tau_r", dist.HalfNormal(1.0))
        tau_u = numpyro.sample("tau_u", dist.HalfNormal(0.5))
        with numpyro.plate("source_plate", n_sources):
            h = numpyro.sample("h", dist.Normal(0.0, 1.0))
        with numpyro.plate("target_plate", n_targets):
            r = numpyro.sample("r", dist.Normal(0.0, 1.0))
        u = numpyro.sample("u", dist.Normal(0.0, 1.0).expand([n_sources, n_targets]).to_event(2))
        log_T = mu_T + tau_h * h[:, None] + tau_r * r[None, :] + tau_u * u
        T = self_mask + off_self * jnp.exp(log_T)
        numpyro.deterministic("hubness", tau_h * h)
        numpyro.deterministic("receptivity", tau_r * r)
        if law == "linear":
            beta = jnp.ones((n_sources, n_targets))
        else:
            mu_b = numpyro.sample("mu_beta", dist.Normal(1.0, 1.0))
            tau_b = numpyro.sample("tau_beta", dist.HalfNormal(0.5))
            b = numpyro.sample("b", dist.Normal(0.0, 1.0).expand([n_sources, n_targets]).to_event(2))
            beta = self_mask + off_self * jax_sigmoid(mu_b + tau_b * b)
    T = numpyro.deterministic("T", T)
    beta = numpyro.deterministic("beta", beta)

    log_mean = laws.log_loss(jnp.asarray(data.d), E, A, alpha, x0, T, beta, self_mask)
    loc = log_mean[data.obs_run, data.obs_target]
    scale = jnp.sqrt(sigma[data.obs_target] ** 2 + jnp.asarray(data.log_se) ** 2)
    if likelihood == "student_t":
        nu = numpyro.sample("nu", dist.Gamma(2.0, 0.1))
        noise = dist.StudentT(nu, loc, scale)
    else:
        noise = dist.Normal(loc, scale)
    with numpyro.plate("obs", loc.shape[0]):
        numpyro.sample("log_loss", noise, obs=None if data.log_loss is None else jnp.asarray(data.log_loss))


def jax_sigmoid(x):
    return 1.0 / (1.0 + jnp.exp(-x))
