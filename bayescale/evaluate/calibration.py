"""How well held-out predictions hold on a real grid: error, rank and coverage, with honest
uncertainty where the cells of one run are not independent.

Cells of one run share its model and seed, so coverage is resampled by run (a cluster
bootstrap: whole runs drawn with replacement), never by cell; Pearson and Spearman
correlations are given per target as well as pooled (pooled r over targets of different
loss scales mostly measures the spread between targets).
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from scipy import stats

LEVELS = (0.5, 0.9)


def cluster_coverage(pred: xr.Dataset, level: float, *, replicates: int = 2000, seed: int = 0) -> dict:
    """Coverage of the central ``level`` intervals and its 95 % cluster-bootstrap interval (runs resampled)."""
    inside, observed = _inside(pred, level)
    per_run_in = np.nansum(np.where(observed, inside, 0.0), axis=1)
    per_run_n = observed.sum(axis=1)
    keep = per_run_n > 0
    per_run_in, per_run_n = per_run_in[keep], per_run_n[keep]
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, per_run_n.size, (replicates, per_run_n.size))
    boot = per_run_in[picks].sum(axis=1) / per_run_n[picks].sum(axis=1)
    return {"coverage": float(per_run_in.sum() / per_run_n.sum()), "lo": float(np.quantile(boot, 0.025)),
            "hi": float(np.quantile(boot, 0.975)), "runs": int(per_run_n.size), "cells": int(per_run_n.sum())}


def _inside(pred: xr.Dataset, level: float) -> tuple[np.ndarray, np.ndarray]:
    tag = int(round(level * 100))
    obs = pred["observed"].transpose("run", "target").values
    lo = pred[f"lo{tag}"].transpose("run", "target").values
    hi = pred[f"hi{tag}"].transpose("run", "target").values
    observed = np.isfinite(obs)
    return (lo <= obs) & (obs <= hi), observed


def per_target_correlations(pred: xr.Dataset) -> dict[str, dict[str, float]]:
    """Pearson r and Spearman rho of predicted median vs observed loss, per target (NaN under 3 cells)."""
    out = {}
    for target in pred["target"].values:
        cell = pred.sel(target=target)
        obs, med = cell["observed"].values, cell["median"].values
        ok = np.isfinite(obs) & np.isfinite(med)
        if ok.sum() >= 3 and np.ptp(obs[ok]) > 0 and np.ptp(med[ok]) > 0:
            out[str(target)] = {"pearson_r": float(stats.pearsonr(med[ok], obs[ok])[0]),
                                "spearman": float(stats.spearmanr(med[ok], obs[ok])[0]), "n": int(ok.sum())}
        else:
            out[str(target)] = {"pearson_r": float("nan"), "spearman": float("nan"), "n": int(ok.sum())}
    return out


def real_grid_scores(pred: xr.Dataset, *, seed: int = 0) -> dict:
    """Every figure of the real-grid calibration table for one set of held-out predictions.

    Median |relative error| of the predictive median; pooled and per-target Pearson r and
    per-target Spearman rho (median over targets); 50 % / 90 % coverage with cluster
    bootstrap intervals; mean relative width of the 90 % interval ((hi - lo) / median); the
    Kolmogorov-Smirnov p-value of the PIT against uniform (cells pooled, so it is quick to
    flag: read it with the cluster intervals)."""
    obs = pred["observed"].values.ravel()
    ok = np.isfinite(obs)
    med = pred["median"].values.ravel()[ok]
    obs = obs[ok]
    per_target = per_target_correlations(pred)
    pit = pred["pit"].values.ravel()
    pit = pit[np.isfinite(pit)]
    width = (pred["hi90"].values.ravel()[ok] - pred["lo90"].values.ravel()[ok]) / med

    def median_of(key):
        values = [v[key] for v in per_target.values() if np.isfinite(v[key])]
        return float(np.median(values)) if values else float("nan")

    return {
        "cells": int(ok.sum()),
        "median_abs_rel_error": float(np.median(np.abs(med - obs) / obs)),
        "pearson_r": float(np.corrcoef(med, obs)[0, 1]) if obs.size >= 2 else float("nan"),
        "per_target_r": median_of("pearson_r"),
        "per_target_spearman": median_of("spearman"),
        "targets": per_target,
        **{f"coverage_{int(level * 100)}": cluster_coverage(pred, level, seed=seed) for level in LEVELS},
        "width_90": float(np.mean(width)),
        "pit_ks_p": float(stats.kstest(pit, "uniform").pvalue) if pit.size else float("nan"),
    }


def point_scores(observed: np.ndarray, predicted: np.ndarray) -> dict:
    """Median |relative error|, pooled Pearson r and median per-target Spearman of point predictions (run, target)."""
    ok = np.isfinite(observed)
    rho = [stats.spearmanr(predicted[:, j], observed[:, j])[0] for j in range(observed.shape[1]) if ok[:, j].sum() >= 3]
    return {
        "cells": int(ok.sum()),
        "median_abs_rel_error": float(np.median(np.abs(predicted[ok] - observed[ok]) / observed[ok])),
        "pearson_r": float(np.corrcoef(predicted[ok], observed[ok])[0, 1]),
        "per_target_spearman": float(np.median(rho)) if rho else float("nan"),
    }


__all__ = ["cluster_coverage", "per_target_correlations", "point_scores", "real_grid_scores"]
