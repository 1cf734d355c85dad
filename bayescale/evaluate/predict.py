"""Posterior predictive loss for any allocation, vectorised over draws and allocations with JAX."""

from __future__ import annotations

import numpy as np

from bayescale import laws
from bayescale.errors import InputError
from bayescale.laws.base import Draws
from bayescale.laws.noise import with_extrapolation_error


def loss_draws(draws: Draws, allocations, *, log: bool = False) -> np.ndarray:
    """Law loss (or its log) of every target for each allocation under each draw, by the draws' family.

    ``allocations``: (N, I) or (I,) raw data amounts over ``draws.sources``.
    Returns (S, N, J) (or (S, J) for a single allocation).
    """
    return laws.of_draws(draws).loss_draws(draws, allocations, log=log)


def add_observation_noise(log_loss: np.ndarray, draws: Draws, rng: np.random.Generator, amounts=None) -> np.ndarray:
    """Posterior predictive draws of one more run's observed log loss: the law plus its family's
    noise (and, given the runs' raw data ``amounts``, the law's error past the fit runs' data)."""
    return laws.of_draws(draws).add_noise(log_loss, draws, rng, amounts)


def parse_allocation(draws: Draws, allocation: dict[str, float], parameter: str = "allocation") -> np.ndarray:
    """A {source: amount} mapping as a vector over the posterior's sources (missing sources get 0)."""
    vector = np.zeros(len(draws.sources))
    for name, amount in allocation.items():
        if name not in draws.sources:
            raise InputError(f"{parameter}: unknown source domain {name!r}; the posterior's sources are {', '.join(draws.sources)}",
                             parameter=parameter)
        if not np.isfinite(amount) or amount < 0:
            raise InputError(f"{parameter}: amount for {name!r} must be a finite number >= 0, got {amount}", parameter=parameter)
        vector[draws.sources.index(name)] = amount
    return vector


def summarise(samples: np.ndarray, interval: float) -> dict[str, float]:
    """Mean, median and central interval of 1-D samples."""
    lo, med, hi = np.quantile(samples, [(1 - interval) / 2, 0.5, (1 + interval) / 2])
    return {"mean": float(np.mean(samples)), "median": float(med), "lo": float(lo), "hi": float(hi)}


def predict(draws: Draws, allocation: dict[str, float], interval: float = 0.9, *, noise: bool = False, seed: int = 0) -> dict:
    """Predicted loss per target for one allocation: mean, median and the central ``interval``.

    ``noise=False`` gives the credible interval of the expected loss (the law);
    ``noise=True`` the predictive interval of an observed loss from one more run.
    Both include the law's error past the fit runs' data where the posterior carries one
    (``slope_error``, :mod:`bayescale.inference.extrapolation`): beyond the largest fitted
    total, the curve itself is less certain than the law's parameters say.
    """
    if not 0 < interval < 1:
        raise InputError(f"interval must lie strictly between 0 and 1, got {interval}", parameter="interval")
    vector = parse_allocation(draws, allocation)
    log_l = loss_draws(draws, vector, log=True)
    if noise:
        log_l = add_observation_noise(log_l, draws, np.random.default_rng(seed), vector)
    else:
        log_l = with_extrapolation_error(log_l, draws, vector)
    samples = np.exp(log_l)
    return {
        "allocation": {name: float(vector[i]) for i, name in enumerate(draws.sources)},
        "interval": interval,
        "targets": {t: summarise(samples[:, j], interval) for j, t in enumerate(draws.targets)},
    }
