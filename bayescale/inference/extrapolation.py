"""How far past its data a law's curve can be trusted: a slope error calibrated by leaving the future out.

A posterior's intervals hold for the law it fitted; past the largest budget of the fit runs they
also need the error of the law itself, which the fit runs cannot show (the law fits them). It is
measured the way the law is used: the same family is fitted to the fit runs of the smaller
budgets (:func:`bayescale.inference.stacking.future_split`) and predicts the runs of the larger
ones. Each scored run ``n`` of target ``j`` then has a standardised miss ``z_nj`` (observed log
loss minus the predictive mean), the predictive's own variance ``v_nj`` (the law's parameters
and its noise), and a distance ``t_n = log(total data / largest fitted total)``.

The model of the miss is a slope error per target, ``eps_j ~ Normal(0, s^2)``, that adds
``eps_j * t`` to log loss: a curve that, past its data, falls faster or slower than the law says,
by an amount that grows with the distance (Kennedy and O'Hagan's model discrepancy, with the
simplest shape a scaling law's misfit has in log-log). The misses of one target share ``eps_j``,
so per target ``z_j ~ Normal(0, diag(v_j) + s^2 t t')``; the scale ``s`` gets a posterior on a
grid from a half-normal prior (:data:`PRIOR_SCALE`) and these likelihoods (:func:`scale_posterior`),
so few scored runs give a wide posterior of ``s`` and intervals with heavier tails.

Each posterior draw then gets a scale from that posterior and an ``eps_j`` per target: the
variable ``slope_error`` (chain, draw, target), with the fit runs' largest total data as the attr
``extrapolation_reach``. Every predictive statement adds ``slope_error_j * max(0, log(total /
reach))`` (:func:`bayescale.laws.transfer.with_extrapolation_error`): nothing inside the fitted
budgets, more the further out. Where every fit run has one budget (a fixed-budget mixture grid)
there is no larger budget to score or to predict, and nothing is added.
"""

from __future__ import annotations

import json

import numpy as np
import xarray as xr

from bayescale.data import grid as grids
from bayescale.laws.noise import add_observation_noise, extrapolation_distance
from bayescale.laws.transfer import loss_draws

#: Prior of the slope error's scale ``s``: half-normal with this scale. An error of 0.1 in a
#: log-log slope is a large one for a scaling law (the slopes themselves are 0.05-0.5), so the
#: prior allows it and leaves the data to decide; measured on the phantom grid, scales 0.05 and
#: 0.2 gave the same held-out coverage as 0.1 (90 %, 92 %, 92 % of 60 cells in 90 % intervals).
PRIOR_SCALE = 0.1
SCALE_GRID = np.linspace(0.0, 1.0, 2001)  # where the posterior of s is evaluated


def lfo_misses(draws, runs: xr.Dataset, fitted_up_to: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Misses of the scored ``runs`` under ``draws`` fitted to budgets up to ``fitted_up_to``.

    Returns ``z`` (N, J): observed log loss minus the predictive mean (NaN where unobserved),
    ``v`` (N, J): the predictive variance (the law's draws and its noise, plus fresh
    measurement error where the grid's ``loss_se`` is per run), ``t`` (N,): distance past the
    fitted budgets in log total data."""
    targets = list(draws.targets)
    amounts = runs["data"].sel(source=list(draws.sources)).transpose("run", "source").values
    log_pred = np.asarray(loss_draws(draws, amounts, log=True), dtype=np.float64)
    # The amounts set each run's misfit sd (noise_slope); these draws carry no slope error yet.
    predictive = add_observation_noise(log_pred, draws, np.random.default_rng(seed), amounts)
    observed = runs["loss"].reindex(target=targets).transpose("run", "target").values
    with np.errstate(divide="ignore", invalid="ignore"):
        log_obs = np.log(observed)
    v = predictive.var(axis=0) + grids.relative_cell_noise(runs, targets) ** 2
    return log_obs - predictive.mean(axis=0), v, extrapolation_distance(amounts, fitted_up_to)


def scale_posterior(z: np.ndarray, v: np.ndarray, t: np.ndarray, prior_scale: float = PRIOR_SCALE) -> np.ndarray:
    """Posterior weights of the slope error's scale on :data:`SCALE_GRID` (they sum to 1).

    Per target ``j``, its observed misses are ``Normal(0, diag(v_j) + s^2 t_j t_j')``; the rank-one
    covariance has a closed-form inverse and determinant (Sherman-Morrison)."""
    c = SCALE_GRID**2
    log_lik = np.zeros_like(SCALE_GRID)
    for j in range(z.shape[1]):
        ok = np.isfinite(z[:, j])
        if not ok.any():
            continue
        zj, vj, tj = z[ok, j], v[ok, j], t[ok]
        s1, sr = np.sum(tj**2 / vj), np.sum(tj * zj / vj)
        quad = np.sum(zj**2 / vj) - c * sr**2 / (1.0 + c * s1)
        log_lik += -0.5 * (quad + np.log1p(c * s1))  # terms free of s dropped
    log_post = log_lik - 0.5 * (SCALE_GRID / prior_scale) ** 2
    weights = np.exp(log_post - log_post.max())
    return weights / weights.sum()


def slope_errors(weights: np.ndarray, shape: tuple[int, int], n_targets: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per posterior draw (``shape`` = chains, draws): a scale ``s`` from its posterior ``weights``
    and ``eps_j ~ Normal(0, s^2)`` per target. Returns (eps (chains, draws, J), s (chains, draws))."""
    rng = np.random.default_rng([seed, 7])
    scale = rng.choice(SCALE_GRID, size=shape, p=weights)
    return scale[..., None] * rng.standard_normal(shape + (n_targets,)), scale


def summary(weights: np.ndarray, z: np.ndarray, split: dict, prior_scale: float = PRIOR_SCALE) -> dict:
    """What the posterior records about the calibration (JSON-able)."""
    cdf = np.cumsum(weights)
    q05, q50, q95 = (float(SCALE_GRID[np.searchsorted(cdf, q)]) for q in (0.05, 0.5, 0.95))
    return {"kind": split["kind"], "fitted_up_to_budget": split.get("fitted_up_to_budget"),
            "scored_runs": split["scored_runs"], "scored_cells": int(np.isfinite(z).sum()), "prior_scale": prior_scale,
            "scale_mean": float(np.sum(weights * SCALE_GRID)), "scale_q05": q05, "scale_median": q50, "scale_q95": q95}


def attach(idata, weights: np.ndarray, reach: float, record: dict, seed: int = 0):
    """The posterior with ``slope_error`` (chain, draw, target) drawn from ``weights`` and the attrs
    ``extrapolation_reach`` (raw data units) and ``extrapolation`` (JSON of :func:`summary`)."""
    post = idata["posterior"].to_dataset()
    shape = (post.sizes["chain"], post.sizes["draw"])
    eps, _ = slope_errors(weights, shape, post.sizes["target"], seed)
    post["slope_error"] = (("chain", "draw", "target"), eps)
    post.attrs["extrapolation_reach"] = float(reach)  # what the draws need; the record is the DataTree's
    idata["posterior"] = xr.DataTree(post)
    idata.attrs["extrapolation"] = json.dumps(record)
    return idata


def fit_reach(grid: xr.Dataset) -> float:
    """The largest total data of the grid's fit runs (raw units)."""
    return float(grids.select_split(grid, "fit")["data"].sum("source").max())


__all__ = ["PRIOR_SCALE", "SCALE_GRID", "attach", "fit_reach", "lfo_misses", "scale_posterior", "slope_errors", "summary"]
