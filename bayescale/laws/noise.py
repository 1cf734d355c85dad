"""What a new run observes beyond the law's expected loss: its noise, its run effect and, past
the fit runs' data, the law's own error (``slope_error``, calibrated by
:mod:`bayescale.inference.extrapolation`). Shared by the transfer-law families."""

from __future__ import annotations

import numpy as np


def add_observation_noise(log_loss: np.ndarray, draws, rng: np.random.Generator, amounts=None) -> np.ndarray:
    """Posterior predictive draws of observed log loss of new runs: the law plus each draw's noise.

    ``log_loss`` is (S, ..., J): draws first, targets last, one new run per index in between;
    a run's effect (``sigma_run``) is shared by all its targets, its cell noise is not.
    With the runs' raw data ``amounts`` (..., I) and a posterior that carries a slope error,
    a run with more data in total than the fit runs' largest (``reach``) also gets the law's
    extrapolation error: ``slope_error_j * log(total / reach)``, one per draw and target (a
    curve-level error, shared by every run of the draw)."""
    sigma = draws.sigma.reshape(draws.sigma.shape[:1] + (1,) * (log_loss.ndim - 2) + draws.sigma.shape[1:])
    if draws.likelihood == "student_t" and draws.nu is not None:
        nu = draws.nu.reshape((-1,) + (1,) * (log_loss.ndim - 1))
        noise = rng.standard_t(np.broadcast_to(nu, log_loss.shape))
    else:
        noise = rng.standard_normal(log_loss.shape)
    out = log_loss + sigma * noise
    if draws.sigma_run is not None:
        run_sd = draws.sigma_run.reshape((-1,) + (1,) * (log_loss.ndim - 1))
        out = out + run_sd * rng.standard_normal(log_loss.shape[:-1] + (1,))
    return with_extrapolation_error(out, draws, amounts)


def with_extrapolation_error(log_loss: np.ndarray, draws, amounts) -> np.ndarray:
    """``log_loss`` (S, ..., J) of runs with raw data ``amounts`` (..., I) plus the law's error
    past the fit runs' data, where the draws carry one (``slope_error``; any family, else unchanged):
    ``slope_error_j * max(0, log(total / reach))`` per draw and target."""
    slope_error = getattr(draws, "slope_error", None)
    if amounts is None or slope_error is None or not getattr(draws, "reach", None):
        return log_loss
    distance = extrapolation_distance(amounts, draws.reach)  # (...,)
    slope = slope_error.reshape(slope_error.shape[:1] + (1,) * (log_loss.ndim - 2) + slope_error.shape[1:])
    return log_loss + slope * distance[None, ..., None]


def extrapolation_distance(amounts, reach: float) -> np.ndarray:
    """``max(0, log(total data / reach))`` of each row of raw ``amounts`` (..., I): how far past the fit runs' data."""
    total = np.sum(np.asarray(amounts, dtype=np.float64), axis=-1)
    with np.errstate(divide="ignore"):
        return np.maximum(np.log(np.maximum(total, 1e-300) / reach), 0.0)


__all__ = ["add_observation_noise", "extrapolation_distance", "with_extrapolation_error"]
