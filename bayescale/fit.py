"""Fit the transfer scaling law to a loss grid with NUTS and return a posterior per the contract."""

from __future__ import annotations

import hashlib
import warnings

import jax
import numpy as np
import xarray as xr

from bayescale import grid as grids
from bayescale.errors import InputError
from bayescale.laws import check_law
from bayescale.model import LIKELIHOODS, ModelData, transfer_law_model
from bayescale.posterior import self_mask_for


def grid_fingerprint(grid: xr.Dataset) -> str:
    """A short hash of a grid's runs, domains, data and losses: ties a posterior to its grid."""
    h = hashlib.sha256()
    for name in ("run", "source", "target"):
        h.update("\x1f".join(map(str, grid[name].values)).encode())
    for name in ("data", "loss"):
        h.update(np.ascontiguousarray(grid[name].values, dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


def model_data(grid: xr.Dataset) -> tuple[ModelData, dict]:
    """Turn the fit runs of a grid into model arrays (law units) and the coordinates to label them."""
    fit_runs = grids.select_split(grid, "fit")
    if fit_runs.sizes["run"] == 0:
        raise InputError("grid has no runs with split == 'fit' to fit the law to")
    fit_runs = grids.validate_grid(fit_runs)
    scale = grids.data_scale(fit_runs)
    loss = fit_runs["loss"].transpose("run", "target").values
    observed_targets = np.isfinite(loss).any(axis=0)
    if not observed_targets.all():
        missing = [str(t) for t, ok in zip(fit_runs["target"].values, observed_targets) if not ok]
        warnings.warn(f"target(s) {', '.join(missing)} have no observed loss in the fit runs and are left out of the fit", stacklevel=2)
        fit_runs = fit_runs.sel(target=[t for t, ok in zip(fit_runs["target"].values, observed_targets) if ok])
        loss = fit_runs["loss"].transpose("run", "target").values
    sources = [str(s) for s in fit_runs["source"].values]
    targets = [str(t) for t in fit_runs["target"].values]
    obs_run, obs_target = np.nonzero(np.isfinite(loss))
    observed = loss[obs_run, obs_target]
    if "loss_se" in fit_runs:
        se = fit_runs["loss_se"].transpose("run", "target").values[obs_run, obs_target]
        log_se = np.where(np.isfinite(se), se / observed, 0.0)
    else:
        log_se = np.zeros_like(observed)
    floor = np.array([np.nanmin(loss[:, j]) for j in range(len(targets))])
    typical = np.array([np.nanmedian(loss[:, j]) for j in range(len(targets))])
    data = ModelData(
        d=fit_runs["data"].transpose("run", "source").values / scale,
        obs_run=obs_run,
        obs_target=obs_target,
        log_loss=np.log(observed),
        log_se=log_se,
        self_mask=self_mask_for(sources, targets),
        loss_floor=floor,
        loss_scale=typical,
    )
    coords = {
        "source": sources,
        "target": targets,
        "obs": np.arange(observed.size),
        "obs_run": ("obs", fit_runs["run"].values[obs_run].astype(str)),
        "obs_target": ("obs", np.asarray(targets)[obs_target]),
        "data_scale": scale,
    }
    return data, coords


DIMS = {
    "E": ["target"], "A": ["target"], "alpha": ["target"], "x0": ["target"], "sigma": ["target"],
    "e": ["target"], "z_alpha": ["target"], "z_A": ["target"], "z_x0": ["target"], "z_sigma": ["target"],
    "r": ["target"], "receptivity": ["target"], "h": ["source"], "hubness": ["source"],
    "T": ["source", "target"], "beta": ["source", "target"], "u": ["source", "target"], "b": ["source", "target"],
    "log_loss": ["obs"],
}


def fit(
    grid: xr.Dataset,
    *,
    law: str = "transfer",
    likelihood: str = "normal",
    chains: int = 4,
    warmup: int = 500,
    draws: int = 500,
    seed: int = 0,
    target_accept: float = 0.95,
    dense_mass: bool = False,
    progress: bool = False,
    grid_name: str = "",
):
    """Sample the posterior of the transfer law on the grid's fit runs with NUTS.

    Returns an ArviZ DataTree with the groups and variables of the posterior contract.
    """
    import arviz as az
    from numpyro.infer import MCMC, NUTS, init_to_median

    check_law(law)
    if likelihood not in LIKELIHOODS:
        raise InputError(f"--likelihood must be one of {', '.join(LIKELIHOODS)}, got {likelihood!r}")
    for flag, value, least in (("--chains", chains, 1), ("--warmup", warmup, 1), ("--draws", draws, 1)):
        if value < least:
            raise InputError(f"{flag} must be >= {least}, got {value}")
    grid = grids.validate_grid(grid, grid_name or "grid")
    data, coords = model_data(grid)

    # Chains run in parallel when the host exposes enough XLA devices (set in bayescale/__init__).
    method = "parallel" if jax.local_device_count() >= chains else "sequential"
    kernel = NUTS(transfer_law_model, target_accept_prob=target_accept, init_strategy=init_to_median(num_samples=25), dense_mass=dense_mass)
    mcmc = MCMC(kernel, num_warmup=warmup, num_samples=draws, num_chains=chains, chain_method=method, progress_bar=progress)
    mcmc.run(jax.random.PRNGKey(seed), data, law=law, likelihood=likelihood, extra_fields=("diverging", "energy"))

    obs_coords = {k: coords[k] for k in ("source", "target", "obs")}
    idata = az.from_numpyro(
        mcmc,
        log_likelihood=True,
        coords=obs_coords,
        dims={k: v for k, v in DIMS.items()},
        constant_data={"data_scale": np.float64(coords["data_scale"])},
    )
    for group in ("observed_data", "log_likelihood"):
        ds = idata[group].to_dataset().assign_coords(obs_run=coords["obs_run"], obs_target=coords["obs_target"])
        idata[group] = xr.DataTree(ds)
    idata.attrs.update(
        {
            "law": law,
            "likelihood": likelihood,
            "method": "nuts",
            "data_unit": str(grid.attrs.get("data_unit", "units")),
            "loss_name": str(grid.attrs.get("loss_name", "loss")),
            "data_scale": float(coords["data_scale"]),
            "grid": grid_name,
            "grid_fingerprint": grid_fingerprint(grid),
            "grid_description": str(grid.attrs.get("description", "")),
            "seed": seed,
        }
    )
    post = idata["posterior"].to_dataset()
    post.attrs["law"] = law
    idata["posterior"] = xr.DataTree(post)
    return idata
