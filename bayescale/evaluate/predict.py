"""Posterior predictive loss for any allocation, vectorised over draws and allocations with JAX."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from bayescale.laws import power as laws
from bayescale.errors import InputError
from bayescale.inference.posterior import LawDraws


@functools.partial(jax.jit, static_argnames=("log",))
def _loss_all_draws(d, E, A, alpha, x0, T, beta, self_mask, log=False):
    """(N, I) allocations x S draws -> (S, N, J) law loss (or its log).

    The same law as :func:`bayescale.laws.power.loss`, written for many draws at once: log d is
    taken once per allocation (log 0 = -inf, so d^beta = exp(beta log d) = 0 without a
    branch), and the sum over sources is unrolled into elementwise (S, N, J) terms, which
    XLA fuses into one loop (5x faster on CPU than a reduction over a (S, N, I, J) array).
    """
    log_d = jnp.log(d)  # (N, I)
    transfer = T * (1.0 - self_mask)  # (S, I, J); a target's own source enters via d @ self_mask
    x = x0[:, None, :] + (d @ self_mask)[None]
    for i in range(d.shape[1]):
        x = x + transfer[:, None, i, :] * jnp.exp(beta[:, None, i, :] * log_d[None, :, i, None])
    # Without this barrier XLA fuses the power-law step into the loop above into one kernel
    # that runs 5x slower on CPU than the two loops apart (measured: 0.9 s vs 0.17 s).
    log_x = jnp.log(jax.lax.optimization_barrier(x))
    if log:
        return jnp.logaddexp(jnp.log(E)[:, None, :], jnp.log(A)[:, None, :] - alpha[:, None, :] * log_x)
    return E[:, None, :] + A[:, None, :] * jnp.exp(-alpha[:, None, :] * log_x)


def loss_draws(draws: LawDraws, allocations, *, log: bool = False, chunk: int = 256) -> np.ndarray:
    """Law loss of every target for each allocation under each draw.

    ``allocations``: (N, I) or (I,) array in the grid's data units (not rescaled).
    Returns (S, N, J) float32 (or (S, J) for a single allocation).
    """
    allocations = np.asarray(allocations, dtype=np.float32)
    single = allocations.ndim == 1
    d = np.atleast_2d(allocations) / np.float32(draws.data_scale)
    params = [jnp.asarray(p, dtype=jnp.float32) for p in (draws.E, draws.A, draws.alpha, draws.x0, draws.T, draws.beta)]
    mask = jnp.asarray(draws.self_mask, dtype=jnp.float32)
    n = d.shape[0]
    chunk = min(chunk, n)
    # Pad to whole chunks so every call has the same shape and XLA compiles once.
    padded = np.concatenate([d, np.ones((-n % chunk, d.shape[1]), np.float32)])
    result = np.empty((draws.n_draws, padded.shape[0], len(draws.targets)), dtype=np.float32)
    for i in range(0, padded.shape[0], chunk):
        result[:, i : i + chunk] = np.asarray(_loss_all_draws(jnp.asarray(padded[i : i + chunk]), *params, mask, log=log))
    result = result[:, :n]
    return result[:, 0, :] if single else result


def add_observation_noise(log_loss: np.ndarray, draws: LawDraws, rng: np.random.Generator) -> np.ndarray:
    """Posterior predictive draws of observed log loss: the law plus each draw's noise (last axis = target)."""
    sigma = draws.sigma.reshape(draws.sigma.shape[:1] + (1,) * (log_loss.ndim - 2) + draws.sigma.shape[1:])
    if draws.likelihood == "student_t" and draws.nu is not None:
        nu = draws.nu.reshape((-1,) + (1,) * (log_loss.ndim - 1))
        noise = rng.standard_t(np.broadcast_to(nu, log_loss.shape))
    else:
        noise = rng.standard_normal(log_loss.shape)
    return log_loss + sigma * noise


def parse_allocation(draws: LawDraws, allocation: dict[str, float], flag: str = "--alloc") -> np.ndarray:
    """A {source: amount} mapping as a vector over the posterior's sources (missing sources get 0)."""
    vector = np.zeros(len(draws.sources))
    for name, amount in allocation.items():
        i = draws.source_index(name, flag)
        if not np.isfinite(amount) or amount < 0:
            raise InputError(f"{flag}: amount for {name!r} must be a finite number >= 0, got {amount}")
        vector[i] = amount
    return vector


def summarise(samples: np.ndarray, interval: float) -> dict[str, float]:
    """Mean, median and central interval of 1-D samples."""
    lo, med, hi = np.quantile(samples, [(1 - interval) / 2, 0.5, (1 + interval) / 2])
    return {"mean": float(np.mean(samples)), "median": float(med), "lo": float(lo), "hi": float(hi)}


def predict(draws: LawDraws, allocation: dict[str, float], interval: float = 0.9, *, noise: bool = False, seed: int = 0) -> dict:
    """Predicted loss per target for one allocation: mean, median and the central ``interval``.

    ``noise=False`` gives the credible interval of the expected loss (the law);
    ``noise=True`` the predictive interval of an observed loss from one more run.
    """
    if not 0 < interval < 1:
        raise InputError(f"--interval must lie strictly between 0 and 1, got {interval}")
    vector = parse_allocation(draws, allocation)
    log_l = loss_draws(draws, vector, log=True)
    if noise:
        log_l = add_observation_noise(log_l, draws, np.random.default_rng(seed))
    samples = np.exp(log_l)
    return {
        "allocation": {name: float(vector[i]) for i, name in enumerate(draws.sources)},
        "interval": interval,
        "targets": {t: summarise(samples[:, j], interval) for j, t in enumerate(draws.targets)},
    }
