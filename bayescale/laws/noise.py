"""What a new run observes beyond the law's expected loss: its noise, its run effect and, past
the fit runs' data, the law's own error (``slope_error``, calibrated by
:mod:`bayescale.inference.extrapolation`). Shared by the transfer-law families."""

from __future__ import annotations

import numpy as np
import xarray as xr

from bayescale.laws.base import flat_draws


def add_observation_noise(log_loss: np.ndarray, draws, rng: np.random.Generator, amounts=None) -> np.ndarray:
    """Posterior predictive draws of observed log loss of new runs: the law plus each draw's noise.

    ``log_loss`` is (S, ..., J): draws first, targets last, one new run per index in between;
    a run's effect (``sigma_run``) is shared by all its targets, its cell noise is not; with the
    runs' raw data ``amounts`` the noise sd is each draw's at the run's total (:func:`misfit_factor`),
    and so is the run effect's where it falls with data (:func:`run_effect_sd`).
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
    out = log_loss + sigma * misfit_factor(draws, amounts) * noise
    if draws.sigma_run is not None:
        out = out + run_effect_sd(draws, amounts, log_loss.ndim) * rng.standard_normal(log_loss.shape[:-1] + (1,))
    return with_extrapolation_error(out, draws, amounts)


def run_effect_sd(draws, amounts, ndim: int) -> np.ndarray:
    """(S, ..., 1) sd of the run effect of runs with raw data ``amounts`` (..., I), to broadcast against
    (S, ..., J) log losses of ``ndim`` axes: ``sigma_run``, times :func:`misfit_factor` where the
    posterior's run effect falls with a run's data (``run_effect_falls``). Zeros without a run effect."""
    sigma_run = getattr(draws, "sigma_run", None)
    if sigma_run is None:
        return np.zeros((draws.n_draws,) + (1,) * (ndim - 1))
    run_sd = sigma_run.reshape((-1,) + (1,) * (ndim - 1))
    return run_sd * misfit_factor(draws, amounts) if getattr(draws, "run_effect_falls", False) else run_sd


def misfit_factor(draws, amounts) -> np.ndarray | float:
    """``(B / noise_reach)^-noise_slope`` per draw and run, (S, ..., 1) to broadcast against (S, ..., J)
    log losses of runs with ``amounts`` (..., I): B a run's total raw data, clipped below at the fit runs' smallest
    (``noise_low``). 1 where the draws have no ``noise_slope`` or no ``amounts`` are given (the
    misfit at the largest fit run)."""
    slope = getattr(draws, "noise_slope", None)
    if slope is None or amounts is None:
        return 1.0
    log_ratio = log_budget_ratio(np.sum(np.asarray(amounts, dtype=np.float64), axis=-1), draws.noise_low, draws.noise_reach)
    return np.exp(-slope.reshape((-1,) + (1,) * log_ratio.ndim) * log_ratio[None])[..., None]


def noise_slope_draws(post: xr.Dataset, idata) -> dict:
    """LawDraws' fields of the misfit's fall with data: none where the posterior has no ``noise_slope``
    (posteriors made before 2026-12 or a bootstrap: a constant sd)."""
    if "noise_slope" not in post:
        return {}
    const = idata["constant_data"].to_dataset()
    return {"noise_slope": flat_draws(post, "noise_slope", ()), "noise_reach": float(const["noise_reach"].values),
            "noise_low": float(const["noise_low"].values),
            "run_effect_falls": bool(float(const["run_effect_falls"].values)) if "run_effect_falls" in const else False}


def log_budget_ratio(totals, low: float, reach: float) -> np.ndarray:
    """``log(max(B, low) / reach)`` of total data ``B``: where a run's misfit sd is read, a total
    below the fit runs' smallest counting as that (a run of no data has the smallest fit run's
    misfit, not an infinite one). The one place the fit and the predictive compute it."""
    return np.log(np.maximum(np.asarray(totals, dtype=np.float64), low) / reach)


def log_budgets(totals, fit_totals) -> np.ndarray:
    """(N,) :func:`log_budget_ratio` of the runs' ``totals`` against the fit runs' ``fit_totals``
    (their largest and smallest positive); zeros where no fit run has data. Any data units."""
    fit_totals = np.asarray(fit_totals, dtype=np.float64)
    positive = fit_totals[fit_totals > 0]
    if positive.size == 0:
        return np.zeros(np.asarray(totals).shape[0])
    return log_budget_ratio(totals, positive.min(), positive.max())


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


__all__ = ["add_observation_noise", "extrapolation_distance", "log_budget_ratio", "log_budgets", "misfit_factor", "noise_slope_draws",
           "run_effect_sd", "with_extrapolation_error"]
