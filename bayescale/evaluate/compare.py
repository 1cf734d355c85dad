"""Model comparison: PSIS-LOO (ArviZ) and the held-out extrapolation score, in one table.

- :func:`compare_fits`  one row per fit, best elpd_loo first, with the held-out scores
- :func:`loo_summary`   PSIS-LOO of one posterior as a small dict (what the report shows)
"""

from __future__ import annotations

import warnings

import arviz as az
import numpy as np
import xarray as xr

from bayescale.errors import InputError
from bayescale.evaluate.check import check_holdout
from bayescale.inference.posterior import law_draws


def compare_fits(fits: dict, grid: xr.Dataset | None = None) -> list[dict]:
    """One row per fit, best expected log predictive density (elpd_loo) first.

    Each row: ``fit``, ``law``, ``method``, ``elpd_loo``, ``se``, ``p_loo``, ``elpd_diff``
    (to the best fit; 0 for it), ``pareto_k_bad`` (observations whose Pareto k exceeds
    ArviZ's sample-size-dependent threshold ``good_k``: LOO is unreliable there) and,
    with ``grid``, ``holdout`` (the scores of :func:`bayescale.evaluate.check.check_holdout`).
    Fits must come from the same grid (the same observations), or LOO cannot compare them.
    """
    if len(fits) < 2:
        raise InputError("compare needs at least two posteriors")
    fingerprints = {name: idata.attrs.get("grid_fingerprint") for name, idata in fits.items()}
    if len(set(fingerprints.values())) > 1:
        first = next(iter(fingerprints))
        other = next(n for n, f in fingerprints.items() if f != fingerprints[first])
        raise InputError(f"{other} was fitted to a different grid than {first}; LOO compares fits of the same data only")
    rows = []
    for name, idata in fits.items():
        loo = loo_summary(idata)
        if loo is None:
            raise InputError(f"{name}: posterior has no log_likelihood group; LOO needs one")
        row = {
            "fit": name,
            "law": str(idata.attrs.get("law", "?")),
            "method": str(idata.attrs.get("method", "nuts")),
            **{key: loo[key] for key in ("elpd_loo", "se", "p_loo", "pareto_k_bad", "pareto_k_threshold")},
        }
        if grid is not None:
            row["holdout"] = check_holdout(law_draws(idata), grid, where=name)
        rows.append(row)
    rows.sort(key=lambda r: -r["elpd_loo"])
    for row in rows:
        row["elpd_diff"] = row["elpd_loo"] - rows[0]["elpd_loo"]
    return rows


def loo_summary(idata) -> dict | None:
    """PSIS-LOO of a posterior with a log-likelihood group, as a small dict; None without one.

    Keys: ``elpd_loo``, ``se``, ``p_loo``, ``n`` (observations), ``pareto_k_bad`` (observations
    whose Pareto k exceeds ArviZ's threshold ``pareto_k_threshold``: LOO is unreliable there).
    """
    if "log_likelihood" not in getattr(idata, "children", {}):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the Pareto-k count below says it
        loo = az.loo(idata)
    k = np.asarray(loo.pareto_k).ravel()
    return {"elpd_loo": float(loo.elpd), "se": float(loo.se), "p_loo": float(loo.p), "n": int(k.size),
            "pareto_k_bad": int(np.sum(k > loo.good_k)), "pareto_k_threshold": float(loo.good_k)}
