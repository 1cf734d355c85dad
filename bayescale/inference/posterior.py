"""The posterior contract: save, load, validate, diagnose, and turn into law draws.

A posterior is an ArviZ DataTree (groups ``posterior``, ``sample_stats``,
``log_likelihood``, ``observed_data``, ``constant_data``) with attrs naming the law, the
likelihood and the grid it came from. What ``posterior`` and ``constant_data`` hold is the
law family's (:mod:`bayescale.laws`): for the transfer laws ``E, A, alpha, x0, sigma``
(dim ``target``), ``T, beta`` (dims ``source, target``) and ``data_scale`` = D0. Each family
turns a posterior into flat NumPy draws (:class:`LawDraws` for the transfer laws), which
is what ``predict``, ``allocate``, ``check`` and ``hubs`` work on.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import xarray as xr

from bayescale import laws
from bayescale._files import atomic_path
from bayescale.errors import InputError
from bayescale.laws.base import Draws, self_mask_for
from bayescale.laws.transfer import PAIR_PARAMS, TARGET_PARAMS, LawDraws

__all__ = ["HYPER_NAMES", "HYPER_PREFIXES", "KHAT_LIMIT", "LawDraws", "PAIR_PARAMS", "TARGET_PARAMS", "diagnostic_variables",
           "diagnostics", "law_draws", "load_posterior", "require_amounts",
           "sampler_diagnostics", "save_posterior", "self_mask_for", "validate_posterior"]

REQUIRED_GROUPS = ("posterior", "constant_data")  # plus sample_stats for a sampler's (NUTS) posterior


def law_draws(idata) -> Draws:
    """Flatten a posterior DataTree into its family's draws (:class:`LawDraws` for the transfer laws)."""
    for group in REQUIRED_GROUPS:
        _group(idata, group)
    return laws.of_posterior(idata).draws(idata)


def require_amounts(draws: Draws, what: str) -> LawDraws:
    """``draws`` of a law of data amounts (one that predicts any budget and allocates), or a one-line error."""
    family = laws.of_draws(draws)
    if not family.amounts:
        usable = ", ".join(name for name, f in laws.FAMILIES.items() if f.amounts)
        raise InputError(f"posterior is of the {family.name} law ({family.summary}); {what} needs a law of data amounts "
                         f"(bayescale fit --law {usable.replace(', ', '|')}); check works on every law")
    return draws


def _group(idata, name) -> xr.Dataset:
    try:
        return idata[name].to_dataset()
    except KeyError:
        raise InputError(f"posterior has no {name!r} group") from None


def validate_posterior(idata, source: str = "posterior") -> None:
    """Check the posterior contract; raise :class:`InputError` naming what is missing."""
    children = set(idata.children)
    required = REQUIRED_GROUPS + (("sample_stats",) if idata.attrs.get("method", "nuts") == "nuts" else ())
    for group in required:
        if group not in children:
            raise InputError(f"{source}: not a bayescale posterior (no {group!r} group)")
    try:
        family = laws.of_posterior(idata)
    except InputError:
        raise InputError(f"{source}: posterior of an unknown law {idata.attrs.get('law')!r}; "
                         f"this bayescale knows {', '.join(laws.names())}") from None
    family.validate(idata, source)


def save_posterior(idata, path: str | os.PathLike) -> None:
    """Write the posterior as NetCDF atomically (no partial file on failure)."""
    with atomic_path(path) as tmp:
        idata.to_netcdf(tmp, engine="netcdf4")


def load_posterior(path: str | os.PathLike):
    """Read and validate a posterior written by :func:`save_posterior`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such posterior file")
    try:
        # Load into memory and close: netCDF4 crashes after many open handles to one file.
        with xr.open_datatree(path, engine="netcdf4") as tree:
            idata = tree.load()
    except Exception as exc:  # any reader failure means "not our file"
        raise InputError(f"{path}: not a readable NetCDF posterior ({type(exc).__name__})") from None
    validate_posterior(idata, str(path))
    return idata


HYPER_PREFIXES = ("mu_", "tau_")  # the hierarchy's means and scales: where funnels show
HYPER_NAMES = ("nu",)  # the Student-t degrees of freedom
KHAT_LIMIT = 0.7  # Pareto k-hat above which an approximate (SVI) posterior fails the diagnostics


def diagnostic_variables(idata) -> list[str]:
    """The posterior variables the diagnostics cover: the family's law parameters, and every
    hyperparameter of the hierarchy (``mu_*``, ``tau_*``, ``nu``) the posterior holds."""
    present = list(idata["posterior"].data_vars)
    names = [n for n in laws.of_posterior(idata).parameters if n in present]
    names += [n for n in present if n not in names and (n.startswith(HYPER_PREFIXES) or n in HYPER_NAMES)]
    return names


def diagnostics(idata) -> dict:
    """Convergence summary over the law's parameters and the hierarchy's hyperparameters: max r-hat,
    min bulk/tail ESS, divergences, and which variable is worst; for an SVI posterior, the Pareto
    k-hat of its guide (``psis_khat`` in the attrs). ``ok``: the posterior passes (``--strict``).

    A stacked posterior has no sampler of its own: its diagnostics are its members' (kept in
    its attrs when it was made), the worst of each figure over the members, each member's
    under ``members``."""
    if "stack_members" in idata.attrs:
        return stack_diagnostics(json.loads(idata.attrs["stack_members"]))
    return sampler_diagnostics(idata, diagnostic_variables(idata))


def stack_diagnostics(members: dict) -> dict:
    """The worst of the members' diagnostics (r-hat, ESS, divergences, ok), each member's kept whole."""
    rows = list(members.values())

    def worst(key, fn):
        values = [r[key] for r in rows if isinstance(r.get(key), (int, float)) and np.isfinite(r[key])]
        return float(fn(values)) if values else float("nan")

    worst_member = max(members, key=lambda m: members[m].get("max_rhat", float("nan")) if np.isfinite(members[m].get("max_rhat", np.nan)) else -1)
    return {
        "method": "stack",
        "approximate": any(bool(r.get("approximate")) for r in rows),
        "max_rhat": worst("max_rhat", np.max),
        "min_ess_bulk": worst("min_ess_bulk", np.min),
        "min_ess_tail": worst("min_ess_tail", np.min),
        "divergences": int(sum(r.get("divergences", 0) for r in rows)),
        "draws": int(rows[0]["draws"]) if rows else 0,
        "chains": int(rows[0]["chains"]) if rows else 0,
        "worst_rhat_variable": f"{worst_member}: {members[worst_member].get('worst_rhat_variable')}" if rows else None,
        "members": members,
        "ok": all(bool(r.get("ok")) for r in rows),
    }


def _label(da, index) -> str:
    """``T(ct, mri)``: a variable's entry at ``index``, named by its coordinates (round brackets: square
    ones would be taken for markup by the terminal printer)."""
    if not index:
        return str(da.name)
    parts = [str(da[dim].values[i]) if dim in da.coords else str(i) for dim, i in zip(da.dims, index)]
    return f"{da.name}({', '.join(parts)})"


def _extreme(ds, largest: bool) -> tuple[float, str | None, str | None]:
    """(value, variable, entry) of the largest (smallest) finite value over every variable of ``ds``."""
    best = (float("nan"), None, None)
    for name in ds.data_vars:
        da = ds[name]
        values = np.asarray(da.values, dtype=np.float64)
        finite = np.isfinite(values)
        if not finite.any():
            continue
        flat = np.where(finite, values, -np.inf if largest else np.inf)
        k = int(np.argmax(flat) if largest else np.argmin(flat))
        value = float(flat.reshape(-1)[k])
        if best[1] is None or (value > best[0] if largest else value < best[0]):
            best = (value, str(name), _label(da, np.unravel_index(k, values.shape) if values.ndim else ()))
    return best


def sampler_diagnostics(idata, names) -> dict:
    """Max r-hat, min bulk/tail ESS (each with the variable and entry where it is worst), divergences
    and min E-BFMI over the posterior variables ``names``; an approximate (SVI) posterior is judged
    by the Pareto k-hat of its guide instead."""
    import arviz as az

    post = idata["posterior"].to_dataset()[list(names)]
    n_draws = int(post.sizes["chain"] * post.sizes["draw"])
    if "sample_stats" not in idata.children:
        # An approximate (SVI) posterior: independent draws from the guide, no sampler to diagnose.
        # Its check is the Pareto k-hat of p(theta, y) / q(theta) over the guide's draws (Yao et al. 2018).
        khat = idata.attrs.get("psis_khat")
        khat = float(khat) if khat is not None else float("nan")
        return {"method": str(idata.attrs.get("method", "svi")), "approximate": True, "psis_khat": khat,
                "khat_limit": KHAT_LIMIT, "max_rhat": float("nan"), "min_ess_bulk": float(n_draws),
                "min_ess_tail": float(n_draws), "divergences": 0, "draws": n_draws, "chains": int(post.sizes["chain"]),
                "variables": list(names), "ok": bool(khat <= KHAT_LIMIT)}
    # Fixed entries (T = 1 on a target's own source, beta = 1 in the linear law) have no
    # variance; their r-hat is NaN and says nothing, so they are dropped before the max.
    varying = post.std(("chain", "draw")) > 0
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        rhat = az.rhat(post).where(varying)
        ess_bulk = az.ess(post, method="bulk").where(varying)
        ess_tail = az.ess(post, method="tail").where(varying)
    stats = idata["sample_stats"]
    divergences = int(stats["diverging"].sum()) if "diverging" in stats.data_vars else 0
    max_rhat, rhat_var, rhat_entry = _extreme(rhat, largest=True)
    min_bulk, bulk_var, bulk_entry = _extreme(ess_bulk, largest=False)
    result = {
        "method": "nuts",
        "approximate": False,
        "max_rhat": max_rhat,
        "min_ess_bulk": min_bulk,
        "min_ess_tail": _extreme(ess_tail, largest=False)[0],
        "divergences": divergences,
        "draws": n_draws,
        "chains": int(post.sizes["chain"]),
        "worst_rhat_variable": rhat_var,
        "worst_rhat_entry": rhat_entry,
        "worst_ess_variable": bulk_var,
        "worst_ess_entry": bulk_entry,
        "variables": list(names),
    }
    if "energy" in stats.data_vars:
        result["min_bfmi"] = float(np.min(np.asarray(az.bfmi(idata).to_dataset()["energy"])))
    result["ok"] = bool(
        result["max_rhat"] <= 1.01 and result["divergences"] == 0 and result["min_ess_bulk"] >= 400
    )
    return result
