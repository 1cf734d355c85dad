"""Fit the transfer scaling law to a loss grid with NUTS and return a posterior per the contract."""

from __future__ import annotations

import hashlib
import threading
import warnings

import jax
import numpy as np
import xarray as xr

from bayescale.data import grid as grids
from bayescale.errors import InputError
from bayescale.laws.power import check_law
from bayescale.laws.transfer import LIKELIHOODS, ModelData, transfer_law_model
from bayescale.inference.posterior import self_mask_for


def grid_fingerprint(grid: xr.Dataset) -> str:
    """A short hash of a grid's runs, domains, data and losses: ties a posterior to its grid."""
    h = hashlib.sha256()
    for name in ("run", "source", "target"):
        h.update("\x1f".join(map(str, grid[name].values)).encode())
    for name in ("data", "loss"):
        h.update(np.ascontiguousarray(grid[name].values, dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


def observed_cells(fit_runs: xr.Dataset, loss: np.ndarray):
    """(run index, target index, loss, relative standard error) of every observed cell of (run, target)
    ``loss``; the relative error (loss_se / loss, the log-scale noise it adds) is 0 where the grid has none."""
    obs_run, obs_target = np.nonzero(np.isfinite(loss))
    observed = loss[obs_run, obs_target]
    if "loss_se" in fit_runs:
        se = fit_runs["loss_se"].transpose("run", "target").values[obs_run, obs_target]
        log_se = np.where(np.isfinite(se), se / observed, 0.0)
    else:
        log_se = np.zeros_like(observed)
    return obs_run, obs_target, observed, log_se


def model_data(grid: xr.Dataset, where: str = "grid") -> tuple[ModelData, dict]:
    """Turn the fit runs of a grid into model arrays (law units) and the coordinates to label them.

    ``where`` names the grid (its file) in error messages."""
    fit_runs = grids.select_split(grid, "fit")
    if fit_runs.sizes["run"] == 0:
        raise InputError(f"{where}: no runs with split == 'fit' to fit the law to")
    fit_runs = grids.validate_grid(fit_runs, where)
    scale = grids.data_scale(fit_runs, where)
    loss = fit_runs["loss"].transpose("run", "target").values
    observed_targets = np.isfinite(loss).any(axis=0)
    if not observed_targets.all():
        missing = [str(t) for t, ok in zip(fit_runs["target"].values, observed_targets) if not ok]
        warnings.warn(f"target(s) {', '.join(missing)} have no observed loss in the fit runs and are left out of the fit", stacklevel=2)
        fit_runs = fit_runs.sel(target=[t for t, ok in zip(fit_runs["target"].values, observed_targets) if ok])
        loss = fit_runs["loss"].transpose("run", "target").values
    sources = [str(s) for s in fit_runs["source"].values]
    targets = [str(t) for t in fit_runs["target"].values]
    obs_run, obs_target, observed, log_se = observed_cells(fit_runs, loss)
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


def identification_warnings(data: ModelData, coords: dict, law: str = "transfer", unit: str = "units") -> list[str]:
    """What the fit runs cannot tell apart, as one-line warnings (the fit still runs).

    Parameters the data say nothing about keep their (wide) priors, so the posterior stays
    honest; but a reader must know that intervals there are the prior's, not the grid's:

    - every fit run has the same budget: the law is fitted to how runs split that budget,
      and predictions at other budgets extrapolate from that alone;
    - a source without data in any fit run: its scaling and transfer are not identified;
    - (transfer laws) no cross-domain variation: no run with data from one domain was
      evaluated on another, or every run mixes the sources in the same proportions, so
      transfer cannot be told apart from a domain's own data; or, short of that, the
      (source, target) pairs no run informs.
    """
    d = np.asarray(data.d, dtype=np.float64)
    sources, targets = list(coords["source"]), list(coords["target"])
    scale = float(coords["data_scale"])
    out = []
    budgets = d.sum(axis=1)
    positive = np.sort(budgets[budgets > 0])
    if positive.size and positive[-1] <= positive[0] * (1 + 1e-9):
        out.append(
            f"every fit run has the same budget ({positive[0] * scale:g} {unit}): the law is fitted to how the runs split it, "
            "so predictions at other budgets rest on the law's form and its priors; add runs at other budgets "
            "(or fit the fixed-budget mixing law, --law mixing)"
        )
    unused = [s for i, s in enumerate(sources) if not (d[:, i] > 0).any()]
    if unused:
        out.append(
            f"source(s) {', '.join(unused)} have no data in any fit run: their scaling and their transfer "
            "to other targets are not identified and keep their priors"
        )
    if law == "independent":
        return out
    off = 1.0 - np.asarray(data.self_mask) > 0  # (I, J): pairs with a transfer coefficient
    informed = np.zeros(off.shape, dtype=bool)
    same_mix = []
    for j in range(len(targets)):
        rows = np.unique(data.obs_run[data.obs_target == j])
        informed[:, j] = (d[rows] > 0).any(axis=0)
        mixes = d[rows][budgets[rows] > 0]
        shares = mixes / mixes.sum(axis=1, keepdims=True)
        # Only one way of mixing the sources, and more than one source in it: own data and
        # transferred data always move together and cannot be told apart.
        same_mix.append(len(shares) > 0 and np.ptp(shares, axis=0).max() < 1e-9 and (shares[0] > 0).sum() > 1)
    if off.any() and (not (informed & off).any() or all(same_mix)):
        out.append(
            "transfer is not identified: no cross-domain variation in the fit runs (no run with data from one domain is "
            "evaluated on another, or every run mixes the sources in the same proportions); T and beta keep their wide "
            "priors; add single-domain runs evaluated on every target, or runs with different mixtures"
        )
    else:
        missing = [(sources[i], targets[j]) for i, j in zip(*np.nonzero(off & ~informed)) if sources[i] not in unused]
        if missing:
            example = ", ".join(f"{a} -> {b}" for a, b in missing[:3]) + (", ..." if len(missing) > 3 else "")
            out.append(
                f"transfer of {len(missing)} of {int(off.sum())} (source, target) pairs is not informed by any fit run "
                f"({example}): no run with data from that source is evaluated on that target; those T and beta keep their priors"
            )
    return out


DIMS = {
    "E": ["target"], "A": ["target"], "alpha": ["target"], "x0": ["target"], "sigma": ["target"],
    "e": ["target"], "z_alpha": ["target"], "z_A": ["target"], "z_x0": ["target"], "z_sigma": ["target"],
    "r": ["target"], "receptivity": ["target"], "h": ["source"], "hubness": ["source"],
    "T": ["source", "target"], "beta": ["source", "target"], "u": ["source", "target"], "b": ["source", "target"],
    "log_loss": ["obs"],
}


METHODS = ("nuts", "svi")


def fit(
    grid: xr.Dataset,
    *,
    law: str = "transfer",
    likelihood: str = "normal",
    method: str = "nuts",
    chains: int = 4,
    warmup: int = 500,
    draws: int = 500,
    seed: int = 0,
    target_accept: float = 0.98,
    dense_mass: bool = False,
    svi_steps: int = 5000,
    progress: bool = False,
    grid_name: str = "",
):
    """Fit the transfer law to the grid's fit runs; returns a posterior per the contract.

    ``method="nuts"`` samples with NUTS (chains in parallel where XLA has the devices).
    ``method="svi"`` is the fast approximate path: a full-rank Gaussian guide fitted by
    stochastic variational inference, then ``chains * draws`` draws from it in one chain;
    its attrs say ``approximate = 1`` and it has no sampler diagnostics.
    ``law="mixing"`` fits the exponential mixing law at a fixed budget instead
    (:func:`bayescale.laws.mixing.fit_mixing`; its posterior has c, k, t, not the transfer law's).
    """
    if law == "mixing":
        from bayescale.laws.mixing import fit_mixing

        return fit_mixing(grid, likelihood=likelihood, method=method, chains=chains, warmup=warmup, draws=draws, seed=seed,
                          target_accept=target_accept, dense_mass=dense_mass, progress=progress, grid_name=grid_name)
    check_law(law)
    if likelihood not in LIKELIHOODS:
        raise InputError(f"--likelihood must be one of {', '.join(LIKELIHOODS)}, got {likelihood!r}")
    if method not in METHODS:
        raise InputError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    for flag, value, least in (("--chains", chains, 1), ("--warmup", warmup, 1), ("--draws", draws, 1), ("--svi-steps", svi_steps, 1)):
        if value < least:
            raise InputError(f"{flag} must be >= {least}, got {value}")
    if not 0 < target_accept < 1:
        raise InputError(f"--target-accept must lie strictly between 0 and 1, got {target_accept}")
    grid = grids.validate_grid(grid, grid_name or "grid")
    data, coords = model_data(grid, grid_name or "grid")
    for message in identification_warnings(data, coords, law, str(grid.attrs.get("data_unit", "units"))):
        warnings.warn(message, UserWarning, stacklevel=2)
    model_kwargs = {"law": law, "likelihood": likelihood}
    key = jax.random.PRNGKey(seed)
    if method == "nuts":
        samples, stats = _sample_nuts(data, model_kwargs, key, chains, warmup, draws, target_accept, dense_mass, progress)
        extra_attrs = {}
    else:
        samples, stats, final_loss = _approximate_svi(data, model_kwargs, key, chains * draws, svi_steps, progress)
        extra_attrs = {"approximate": 1, "svi_steps": svi_steps, "svi_final_loss": final_loss}
    idata = _to_datatree(samples, stats, data, coords, model_kwargs)
    idata.attrs.update(
        {
            "law": law,
            "likelihood": likelihood,
            "method": method,
            "data_unit": str(grid.attrs.get("data_unit", "units")),
            "loss_name": str(grid.attrs.get("loss_name", "loss")),
            "data_scale": float(coords["data_scale"]),
            "grid": grid_name,
            "grid_fingerprint": grid_fingerprint(grid),
            "grid_description": str(grid.attrs.get("description", "")),
            "seed": seed,
            **extra_attrs,
        }
    )
    return idata


_ABANDONED: list[threading.Event] = []


def computation_abandoned() -> bool:
    """Is a computation that Ctrl-C left behind still running in this process?

    A process must then end with ``os._exit``: XLA aborts if the interpreter shuts down
    under a running computation. The command line does so (exit status 130)."""
    return any(not finished.is_set() for finished in _ABANDONED)


def interruptible(fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, run so that Ctrl-C (SIGINT) stops the command at once.

    Python handles a signal only between bytecodes of the main thread, and a compiled JAX
    loop (parallel chains, or no progress bar) keeps the main thread inside XLA until the
    whole phase is done, which can be minutes or hours. So the work runs in a daemon thread
    while the main thread waits in short waits, where a KeyboardInterrupt arrives at once;
    the abandoned computation dies with the process, and nothing has been written yet.
    """
    if threading.current_thread() is not threading.main_thread():
        return fn(*args, **kwargs)
    outcome: dict = {}
    finished = threading.Event()
    x64 = bool(jax.config.jax_enable_x64)  # a thread-local setting (jax.enable_x64): carry it over

    def work():
        try:
            with jax.enable_x64(x64):
                outcome["value"] = fn(*args, **kwargs)
        except BaseException as error:  # handed to the caller's thread below
            outcome["error"] = error
        finally:
            finished.set()

    # An Event, not Thread.join: a join interrupted by Ctrl-C marks a running thread as stopped.
    threading.Thread(target=work, name="bayescale-sampler", daemon=True).start()
    try:
        while not finished.wait(0.1):
            pass
    except KeyboardInterrupt:
        _ABANDONED.append(finished)
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _sample_nuts(data, model_kwargs, key, chains, warmup, draws, target_accept, dense_mass, progress):
    from numpyro.infer import MCMC, NUTS, init_to_median

    # Chains run in parallel when the host exposes enough XLA devices (set in bayescale/__init__).
    chain_method = "parallel" if jax.local_device_count() >= chains else "sequential"
    kernel = NUTS(transfer_law_model, target_accept_prob=target_accept, init_strategy=init_to_median(num_samples=25), dense_mass=dense_mass)
    mcmc = MCMC(kernel, num_warmup=warmup, num_samples=draws, num_chains=chains, chain_method=chain_method, progress_bar=progress)

    def sample():
        mcmc.run(key, data, extra_fields=("diverging", "energy", "num_steps"), **model_kwargs)
        # np.asarray waits for the (asynchronously dispatched) chains: inside, so Ctrl-C reaches it.
        samples = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
        extra = mcmc.get_extra_fields(group_by_chain=True)
        stats = {"diverging": np.asarray(extra["diverging"]), "energy": np.asarray(extra["energy"]), "n_steps": np.asarray(extra["num_steps"])}
        return samples, stats

    return interruptible(sample)


def _approximate_svi(data, model_kwargs, key, n_draws, steps, progress):
    import numpyro.optim as optim
    from numpyro import handlers
    from numpyro.infer import SVI, Predictive, Trace_ELBO, init_to_median
    from numpyro.infer.autoguide import AutoMultivariateNormal

    guide = AutoMultivariateNormal(transfer_law_model, init_loc_fn=init_to_median(num_samples=25))
    svi = SVI(transfer_law_model, guide, optim.ClippedAdam(step_size=0.01), Trace_ELBO())
    fit_key, draw_key = jax.random.split(key)

    def optimise():
        result = svi.run(fit_key, steps, data, progress_bar=progress, **model_kwargs)
        return result, np.asarray(result.losses)

    result, losses = interruptible(optimise)
    if not np.isfinite(losses[-1]):
        raise InputError("SVI diverged (non-finite ELBO); use --method nuts for this grid")
    # Ask for every latent and deterministic site: by default Predictive returns only
    # the sites the guide does not sample.
    trace = handlers.trace(handlers.seed(transfer_law_model, 0)).get_trace(data, **model_kwargs)
    sites = [name for name, site in trace.items() if site["type"] in ("sample", "deterministic") and not site.get("is_observed")]
    predictive = Predictive(transfer_law_model, guide=guide, params=result.params, num_samples=n_draws, return_sites=sites)
    draws = predictive(draw_key, data, **model_kwargs)
    samples = {k: np.asarray(v)[None] for k, v in draws.items() if k != "log_loss"}
    return samples, {}, float(np.mean(losses[-100:]))


def _to_datatree(samples: dict, stats: dict, data: ModelData, coords: dict, model_kwargs: dict):
    """Samples shaped (chain, draw, ...) -> an ArviZ DataTree with the contract's groups."""
    import arviz as az
    from numpyro.infer import log_likelihood

    chains, draws = next(iter(samples.values())).shape[:2]
    flat = {k: v.reshape((chains * draws,) + v.shape[2:]) for k, v in samples.items()}
    loglik = np.asarray(log_likelihood(transfer_law_model, flat, data, **model_kwargs)["log_loss"])
    groups = {
        "posterior": samples,
        "log_likelihood": {"log_loss": loglik.reshape(chains, draws, -1)},
        "observed_data": {"log_loss": np.asarray(data.log_loss)},
        "constant_data": {"data_scale": np.float64(coords["data_scale"])},
    }
    if stats:
        groups["sample_stats"] = stats
    dims = {k: v for k, v in DIMS.items() if k in samples or k == "log_loss"}
    idata = az.from_dict(groups, coords={k: coords[k] for k in ("source", "target", "obs")}, dims=dims)
    for group in ("observed_data", "log_likelihood"):
        ds = idata[group].to_dataset().assign_coords(obs_run=coords["obs_run"], obs_target=coords["obs_target"])
        idata[group] = xr.DataTree(ds)
    post = idata["posterior"].to_dataset()
    post.attrs["law"] = model_kwargs["law"]
    idata["posterior"] = xr.DataTree(post)
    return idata


def prior_predictive(grid: xr.Dataset, *, law: str = "transfer", likelihood: str = "normal", draws: int = 1000, seed: int = 0,
                     grid_name: str = "") -> dict:
    """Prior predictive check: do the priors, adapted to this grid, cover its observed losses?

    Simulates ``draws`` worlds from the prior at the grid's own fit runs and compares, per
    target, the central 90 % of the simulated losses with what was observed. Returns a
    JSON-able dict with, per target, the observed min/median/max, the prior predictive
    5/50/95 % quantiles, and the share of observed losses inside that 90 % band.
    """
    import dataclasses

    from numpyro.infer import Predictive

    check_law(law)
    if likelihood not in LIKELIHOODS:
        raise InputError(f"--likelihood must be one of {', '.join(LIKELIHOODS)}, got {likelihood!r}")
    if draws < 1:
        raise InputError(f"--draws must be >= 1, got {draws}")
    where = grid_name or "grid"
    data, coords = model_data(grids.validate_grid(grid, where), where)
    prior_data = dataclasses.replace(data, log_loss=None)
    sim = Predictive(transfer_law_model, num_samples=draws)(jax.random.PRNGKey(seed), prior_data, law=law, likelihood=likelihood)
    simulated = np.exp(np.asarray(sim["log_loss"]))  # (draws, M)
    observed = np.exp(data.log_loss)
    out = {"law": law, "draws": draws, "targets": {}}
    for j, name in enumerate(coords["target"]):
        cells = data.obs_target == j
        lo, med, hi = np.quantile(simulated[:, cells], [0.05, 0.5, 0.95])
        per_cell_lo, per_cell_hi = np.quantile(simulated[:, cells], [0.05, 0.95], axis=0)
        inside = float(np.mean((per_cell_lo <= observed[cells]) & (observed[cells] <= per_cell_hi)))
        out["targets"][name] = {
            "observed": {"min": float(observed[cells].min()), "median": float(np.median(observed[cells])), "max": float(observed[cells].max())},
            "prior_predictive": {"q05": float(lo), "median": float(med), "q95": float(hi)},
            "observed_inside_90": inside,
        }
    return out
