"""Bayesian stacking of law families (Yao, Vehtari, Simpson and Gelman 2018) with weights from
*leave-future-out* scores, and the one posterior it makes.

The question a scaling law answers is extrapolation, so the members are scored the way they
will be used: each is fitted to the fit runs of the smaller budgets and scored on the runs
of the largest ones (:func:`future_split`). A run is one point (its cells share a model and a
seed): its log predictive density is that of all its targets together under each draw,
with the run effect (``sigma_run``) as the covariance it induces (:func:`run_log_density`).
The weights maximise the log score of the mixture of the members' predictive
distributions (:func:`stacking_weights`). The stacked posterior holds, of each member's
posterior on *all* fit runs, a share of draws equal to its weight, in the variables every
transfer-law family shares (a member without a bend has ``delta = 0``, one without interference
``kappa = 0``, ``independent`` has T = 0
off a target's own source) and a ``law`` variable naming each draw's family, so ``predict``,
``allocate`` (each draw's loss is still convex), ``check``, ``hubs`` and ``report`` read it as
any other posterior of data amounts.

Where every fit run has one budget (a fixed-budget mixture grid) there is no future to
leave out: a seeded random fifth of the runs is scored instead, and the split says so.
"""

from __future__ import annotations

import json

import numpy as np
import xarray as xr

from bayescale.data import grid as grids
from bayescale.laws.transfer import BEND_PARAMS, PAIR_PARAMS, TARGET_PARAMS, loss_draws
from bayescale.laws.noise import misfit_factor, run_effect_sd

SCORED_SHARE = 0.2  # at least this share of the fit runs is scored


def future_split(grid: xr.Dataset, seed: int = 0) -> tuple[xr.Dataset, dict]:
    """The grid's fit runs, those to score marked ``split = "holdout"``, and a description of the split.

    Scored: the runs of the largest distinct fit budgets, added from the top until at least
    :data:`SCORED_SHARE` of the fit runs are scored, keeping at least two smaller budgets to
    fit. With fewer than three distinct budgets, a seeded random share of the runs."""
    grid = grid.isel(run=np.flatnonzero(grid["split"].values == "fit"))  # the grid's own held-out runs play no part
    fit_index = np.arange(grid.sizes["run"])
    budgets = grid["data"].isel(run=fit_index).sum("source").values
    # One budget up to float noise is one level: mixture shares times a budget (RegMix's 1B tokens)
    # sum to totals that differ in the 16th digit, which are not larger budgets.
    level = np.round(budgets / budgets.max(), 6)
    distinct = np.unique(level)
    n_score = max(1, int(np.ceil(SCORED_SHARE * fit_index.size)))
    if distinct.size >= 3:
        top = distinct[::-1]  # descending
        k = 1  # how many of the largest budgets are scored
        while k < distinct.size - 2 and np.sum(level >= top[k - 1]) < n_score:
            k += 1
        scored = level > top[k]
        cut = budgets[level == top[k]].max()  # the largest budget still fitted
        how = {"kind": "leave-future-out", "fitted_up_to_budget": float(cut)}
    else:
        scored = np.zeros(fit_index.size, dtype=bool)
        scored[np.random.default_rng(seed).permutation(fit_index.size)[:n_score]] = True
        how = {"kind": "random runs (every fit run has one budget: no future to leave out)", "seed": seed}
    split = grid["split"].values.astype(object).copy()
    split[fit_index[scored]] = "holdout"
    how.update({"scored_runs": int(scored.sum()), "fitted_runs": int((~scored).sum())})
    return grid.assign_coords(split=("run", split)), how


def run_log_density(draws, runs: xr.Dataset) -> np.ndarray:
    """(N,) log predictive density of each run's observed losses (all its targets at once).

    Per draw: log loss ~ Normal(law, diag(m_j^2 + se^2) + r^2 11'), m_j the misfit sd and r the run effect's at the run's total data, the cells of
    one run correlated through its run effect; the density is averaged over draws (log-mean-exp)."""
    targets = list(draws.targets)
    amounts = runs["data"].sel(source=list(draws.sources)).transpose("run", "source").values
    log_obs = np.log(runs["loss"].reindex(target=targets).transpose("run", "target").values)  # (N, J)
    observed = np.isfinite(log_obs)
    log_se = grids.relative_cell_noise(runs, targets)
    mean = np.asarray(loss_draws(draws, amounts, log=True), dtype=np.float64)  # (S, N, J)
    if mean.ndim == 2:
        mean = mean[:, None, :]
    misfit = draws.sigma[:, None, :] * misfit_factor(draws, amounts)  # each run's misfit sd at its total data
    var = misfit ** 2 + log_se[None] ** 2  # (S, N, J) diagonal
    c = run_effect_sd(draws, amounts, 3)[..., 0] ** 2  # (S, N): the run effect's variance at each run's total
    inv = np.where(observed[None], 1.0 / var, 0.0)
    resid = np.where(observed[None], log_obs[None] - mean, 0.0)
    s1 = np.sum(inv, axis=2)  # 1' D^-1 1
    sr = np.sum(resid * inv, axis=2)  # 1' D^-1 r
    quad = np.sum(resid**2 * inv, axis=2) - c * sr**2 / (1.0 + c * s1)  # Sherman-Morrison
    logdet = np.sum(np.where(observed[None], np.log(var), 0.0), axis=2) + np.log1p(c * s1)
    n_obs = observed.sum(axis=1)[None]
    log_p = -0.5 * (quad + logdet + n_obs * np.log(2 * np.pi))  # (S, N)
    top = log_p.max(axis=0)
    return top + np.log(np.mean(np.exp(log_p - top), axis=0))


def stacking_weights(lpd: np.ndarray, iterations: int = 5000, tol: float = 1e-12) -> np.ndarray:
    """Weights on the simplex maximising sum_n log sum_k w_k exp(lpd[n, k]) (points x members).

    The objective is concave in w; the EM fixed point w_k <- mean_n w_k p_nk / sum_l w_l p_nl
    climbs it monotonically to the maximum."""
    lpd = np.asarray(lpd, dtype=np.float64)
    p = np.exp(lpd - lpd.max(axis=1, keepdims=True))
    w = np.full(lpd.shape[1], 1.0 / lpd.shape[1])
    for _ in range(iterations):
        resp = w * p
        resp /= resp.sum(axis=1, keepdims=True)
        new = resp.mean(axis=0)
        if np.max(np.abs(new - w)) < tol:
            w = new
            break
        w = new
    return w


def shares(weights: np.ndarray, total: int) -> np.ndarray:
    """Whole numbers of draws per member summing to ``total`` (largest remainders)."""
    raw = np.asarray(weights) * total
    n = np.floor(raw).astype(int)
    n[np.argsort(raw - n)[::-1][: total - n.sum()]] += 1
    return n


def combine(members: dict, weights: dict, total: int, seed: int = 0):
    """One posterior of ``total`` draws: of each member's posterior, ``weight * total`` draws
    (without replacement where it has enough), in the variables the transfer laws share."""
    rng = np.random.default_rng(seed)
    names = list(members)
    counts = shares(np.array([weights[n] for n in names]), total)
    first = members[names[0]]
    post_parts, loglik_parts = [], []
    for name, count in zip(names, counts):
        if count == 0:
            continue
        post = members[name]["posterior"].to_dataset().stack(sample=("chain", "draw"))
        loglik = members[name]["log_likelihood"].to_dataset().stack(sample=("chain", "draw"))
        size = post.sizes["sample"]
        index = rng.choice(size, count, replace=count > size)
        keep = {v: post[v] for v in TARGET_PARAMS + PAIR_PARAMS}
        zeros = xr.zeros_like(post["E"])
        keep["delta"] = post["delta"] if "delta" in post else zeros
        keep["log_xb"] = post["log_xb"] if "log_xb" in post else zeros
        keep["kappa"] = post["kappa"] if "kappa" in post else xr.zeros_like(post["T"])
        keep["sigma_run"] = post["sigma_run"] if "sigma_run" in post else xr.zeros_like(post["E"].isel(target=0, drop=True))
        keep["noise_slope"] = post["noise_slope"] if "noise_slope" in post else xr.zeros_like(post["E"].isel(target=0, drop=True))
        part = xr.Dataset(keep).isel(sample=index).drop_vars(["sample", "chain", "draw"])
        part["law"] = ("sample", np.full(count, name, dtype=object))  # each draw carries its family (contract 2)
        post_parts.append(part.rename(sample="draw"))
        loglik_parts.append(loglik.isel(sample=index).drop_vars(["sample", "chain", "draw"]).rename(sample="draw"))
    post = xr.concat(post_parts, dim="draw").expand_dims("chain").transpose("chain", "draw", ...)
    loglik = xr.concat(loglik_parts, dim="draw").expand_dims("chain").transpose("chain", "draw", ...)
    post = post.assign_coords(chain=[0], draw=np.arange(post.sizes["draw"]))
    loglik = loglik.assign_coords(chain=[0], draw=np.arange(loglik.sizes["draw"]))
    return xr.DataTree.from_dict({
        "posterior": post.assign_attrs(law="stack"),
        "log_likelihood": loglik,
        "observed_data": first["observed_data"].to_dataset(),
        "constant_data": first["constant_data"].to_dataset(),
    })


def stack_attrs(weights: dict, split: dict, lpd: dict, diagnostics: dict) -> dict:
    """What a stacked posterior records about how it was made (JSON strings: netCDF attrs are flat)."""
    return {
        "stack_weights": json.dumps({k: float(v) for k, v in weights.items()}),
        "stack_split": json.dumps(split),
        "stack_scores": json.dumps({k: float(np.sum(v)) for k, v in lpd.items()}),
        "stack_members": json.dumps(diagnostics),
    }


__all__ = ["BEND_PARAMS", "combine", "future_split", "run_log_density", "shares", "stack_attrs", "stacking_weights"]
