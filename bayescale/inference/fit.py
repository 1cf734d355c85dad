"""Fit any registered law family to a loss grid (NUTS, or SVI as a fast approximation) and
return a posterior per the contract (an ArviZ DataTree).

Nothing here knows a law by name: the family (:mod:`bayescale.laws`) reads the grid, owns
the model and says what to store beside the draws.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Callable

import jax
import numpy as np
import xarray as xr

from bayescale import laws
from bayescale.data import grid as grids
from bayescale.data.grid import grid_fingerprint
from bayescale.errors import InputError
from bayescale.inference import extrapolation as extrapolation_error
from bayescale.inference import reparam, stacking
from bayescale.inference.posterior import KHAT_LIMIT, diagnostics, law_draws
from bayescale.inference.sampling import approximate_svi, ensure_host_devices, sample_nuts
from bayescale.laws.base import LawFamily

__all__ = ["calibrate_extrapolation", "check_options", "fit", "fit_stack", "prior_predictive", "to_datatree"]


def check_options(family: LawFamily, likelihood: str, method: str | None = None) -> None:
    """Refuse a likelihood or fitting method the family does not implement."""
    if likelihood not in family.likelihoods:
        raise InputError(f"likelihood must be one of {', '.join(family.likelihoods)}, got {likelihood!r}", parameter="likelihood")
    if method is not None and method != "auto" and method not in family.methods:
        raise InputError(f"method must be one of {', '.join(family.methods)}, got {method!r}", parameter="method")


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
    dense_mass: bool | None = None,
    svi_steps: int = 5000,
    progress: bool = False,
    grid_name: str = "",
    extrapolation: bool = True,
    centring: str = "none",
    on_warmup: Callable[[dict], None] | None = None,
):
    """Fit the law family ``law`` to the grid's fit runs; returns a posterior per the contract.

    ``method="nuts"`` samples with NUTS (chains in parallel where XLA has the devices).
    ``method="svi"`` is the fast approximate path: a full-rank Gaussian guide fitted by
    stochastic variational inference, then ``chains * draws`` draws from it in one chain;
    its attrs say ``approximate = 1`` and it has no sampler diagnostics.
    ``method="auto"`` fits the SVI guide and keeps it where its Pareto k-hat passes
    (:data:`~bayescale.inference.posterior.KHAT_LIMIT`), and samples with NUTS where it does not
    (or where the family has no SVI); the attrs ``method`` says which was kept and
    ``method_choice`` why.
    ``law`` is any registered family (:func:`bayescale.laws.names`): ``transfer``, ``linear``,
    ``independent``, or ``mixing`` (the exponential mixing law at one fixed budget).
    ``extrapolation=True`` also fits the law to the smaller budgets of the fit runs and scores
    it on the larger ones, to calibrate its error past the fit runs' data (``slope_error``,
    :mod:`bayescale.inference.extrapolation`; about twice the time of one fit).
    ``centring="auto"`` centres each hierarchical entry as far as a short SVI pilot says the data
    inform it (:mod:`bayescale.inference.reparam`); ``"none"`` (the default) samples every one
    non-centred. ``dense_mass``: None adapts a dense mass matrix over the family's ``dense_blocks``
    where entries are centred (a diagonal one elsewhere, and everywhere without centring); True a
    dense one over everything; False a diagonal one.
    ``on_warmup``: called once each NUTS warm-up has ended with
    :func:`~bayescale.inference.sampling.sampling_estimate`'s dict (and ``fit``: which fit, as the
    leave-future-out fit for ``extrapolation`` is a second one), to say how long the draws will take.
    """
    ensure_host_devices()
    family = laws.get(law)
    check_options(family, likelihood, method)
    for name, value in (("chains", chains), ("warmup", warmup), ("draws", draws), ("svi_steps", svi_steps)):
        if value < 1:
            raise InputError(f"{name} must be >= 1, got {value}", parameter=name)
    if centring not in CENTRINGS:
        raise InputError(f"centring must be one of {', '.join(CENTRINGS)}, got {centring!r}", parameter="centring")
    if not 0 < target_accept < 1:
        raise InputError(f"target_accept must lie strictly between 0 and 1, got {target_accept}", parameter="target_accept")
    where = grid_name or "grid"
    grid = grids.validate_grid(grid, where)
    if family.members:
        return fit_stack(grid, family, chains=chains, warmup=warmup, draws=draws, seed=seed, target_accept=target_accept,
                         dense_mass=dense_mass, progress=progress, grid_name=grid_name, extrapolation=extrapolation,
                         centring=centring, on_warmup=on_warmup)
    data, coords = family.model_data(grid, where)
    for message in family.identification_warnings(data, coords, str(grid.attrs.get("data_unit", "units"))):
        warnings.warn(message, UserWarning, stacklevel=2)
    model_kwargs = family.model_kwargs(likelihood)
    key = jax.random.PRNGKey(seed)
    resolved, extra_attrs = ("svi" if "svi" in family.methods else "nuts") if method == "auto" else method, {}
    if resolved == "svi":
        fitted = approximate_svi(family.model, data, model_kwargs, key, n_draws=chains * draws, steps=svi_steps,
                                 init_samples=family.init_samples, progress=progress)
        samples, final_loss = fitted
        stats = {}
        # The guide's Pareto k-hat: whether its draws can stand for the posterior (--strict reads it).
        extra_attrs = {"approximate": 1, "svi_steps": svi_steps, "svi_final_loss": final_loss, "psis_khat": fitted.psis_khat}
        if fitted.step_schedule != "constant":
            extra_attrs["svi_step_schedule"] = fitted.step_schedule
        if method == "auto":
            kept = fitted.psis_khat <= KHAT_LIMIT
            choice = (f"auto: the SVI guide's Pareto k-hat {fitted.psis_khat:.2f} {'<=' if kept else '>'} {KHAT_LIMIT:g}, "
                      f"{'SVI kept' if kept else 'NUTS instead'}")
            # A guide that cannot stand for the posterior is dropped with its attrs, and the posterior sampled.
            extra_attrs, resolved = ({**extra_attrs, "method_choice": choice}, "svi") if kept else ({"method_choice": choice}, "nuts")
    elif method == "auto":
        extra_attrs["method_choice"] = f"auto: the {family.name} law has no SVI guide, NUTS"
    if resolved == "nuts":
        chosen = reparam.choose_centring(family, data, model_kwargs, jax.random.fold_in(key, 7)) if centring == "auto" else {}
        data = family.with_centring(data, chosen)
        # Dense blocks only with centring: over non-centred entries they made a K = 8 world mix
        # worse (4 x (500 + 1000): bulk ESS 19 and r-hat 1.19, against 513 and 1.007 centred).
        blocks = [tuple(block) for block in family.dense_blocks] if chosen else []
        mass = (blocks or False) if dense_mass is None else dense_mass
        report = None if on_warmup is None else (lambda estimate: on_warmup({**estimate, "fit": where}))
        samples, stats = sample_nuts(family.model, data, model_kwargs, key, chains=chains, warmup=warmup, draws=draws,
                                     target_accept=target_accept, dense_mass=mass, init_samples=family.init_samples,
                                     progress=progress, on_warmup=report)
        if chosen:
            extra_attrs["centring"] = reparam.centring_attr(chosen)
        elif centring == "auto" and family.hierarchical_sites:
            note = "centring auto: the SVI pilot diverged; every hierarchical entry was sampled non-centred"
            warnings.warn(f"{where}: {note}", UserWarning, stacklevel=2)
            extra_attrs["centring_note"] = note
    idata = to_datatree(family, samples, stats, data, coords, model_kwargs)
    idata.attrs.update(
        {
            "law": family.name,
            "likelihood": likelihood,
            "method": resolved,
            "data_unit": str(grid.attrs.get("data_unit", "units")),
            "loss_name": str(grid.attrs.get("loss_name", "loss")),
            **family.posterior_attrs(coords),
            "grid": grid_name,
            "grid_fingerprint": grid_fingerprint(grid),
            "grid_description": str(grid.attrs.get("description", "")),
            "seed": seed,
            **extra_attrs,
        }
    )
    if extrapolation and not family.amounts:  # a law of proportions at one budget: nothing lies past it
        idata.attrs["extrapolation"] = json.dumps({"kind": f"none: the {family.name} law predicts at its one budget only"})
    elif extrapolation:
        def smaller_budgets(scored_grid):
            # The method the full fit kept; "auto" again only where it kept SVI, so that this fit is checked too.
            return fit(scored_grid, law=law, likelihood=likelihood, method="auto" if method == "auto" and resolved == "svi" else resolved, chains=chains, warmup=warmup, draws=draws,
                       seed=seed, target_accept=target_accept, dense_mass=dense_mass, svi_steps=svi_steps, progress=progress,
                       grid_name=f"{where} (smaller budgets)", extrapolation=False, centring=centring,
                       on_warmup=on_warmup)
        idata = calibrate_extrapolation(grid, idata, smaller_budgets, seed)
    return idata


def calibrate_extrapolation(grid: xr.Dataset, idata, smaller_budgets: Callable[[xr.Dataset], xr.DataTree], seed: int = 0):
    """``idata`` with the law's error past the fit runs' data (:mod:`bayescale.inference.extrapolation`).

    ``smaller_budgets(scored_grid)`` returns the same law's posterior fitted to the runs of
    ``scored_grid`` marked ``fit`` (the smaller budgets); it is scored on those marked ``holdout``.
    A grid with no future to leave out (fewer than three distinct budgets) gets no slope error,
    and its attrs say why."""
    scored_grid, split = stacking.future_split(grid, seed)
    if split["kind"] != "leave-future-out":
        idata.attrs["extrapolation"] = json.dumps({"kind": "none: fewer than three distinct fit budgets, no larger budget to score"})
        return idata
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the full fit has shown the grid's identification warnings
        early = smaller_budgets(scored_grid)
    z, v, t = extrapolation_error.lfo_misses(law_draws(early), grids.select_split(scored_grid, "holdout"),
                                             split["fitted_up_to_budget"], seed)
    weights = extrapolation_error.scale_posterior(z, v, t)
    return extrapolation_error.attach(idata, weights, extrapolation_error.fit_reach(grid),
                                      extrapolation_error.summary(weights, z, split), seed)


def fit_stack(grid: xr.Dataset, family: LawFamily, *, chains: int, warmup: int, draws: int, seed: int, grid_name: str,
              fitted: dict | None = None, extrapolation: bool = True, **nuts) -> xr.DataTree:
    """Stack the family's members: weights from leave-future-out scores, then draws of each
    member's fit to every fit run in proportion to its weight (:mod:`bayescale.inference.stacking`).

    ``fitted``: members' posteriors already fitted to this grid's fit runs with the same
    settings (checked by the grid's fingerprint), reused instead of refitted.
    A member its family calls unsuited to the grid (``independent`` where no target is a source) is left
    out, and the attr ``stack_left_out`` says why.
    ``extrapolation``: the stack's own error past the data, from the stacked leave-future-out
    fits (the members' own slope errors are not kept)."""
    where = grid_name or "grid"
    scored_grid, split = stacking.future_split(grid, seed)
    score_runs = grids.select_split(scored_grid, "holdout")
    settings = {"chains": chains, "warmup": warmup, "draws": draws, "seed": seed, "extrapolation": False, **nuts}
    lpd, early, full, member_diagnostics = {}, {}, {}, {}
    unsuited = {name: why for name in family.members if (why := laws.get(name).unsuited(grid))}
    members = [name for name in family.members if name not in unsuited]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # each member's identification warnings were shown by the full fits' grid
        for name in members:
            early[name] = fit(scored_grid, law=name, grid_name=f"{where} (smaller budgets)", **settings)
            lpd[name] = stacking.run_log_density(law_draws(early[name]), score_runs)
    weights_array = stacking.stacking_weights(np.column_stack([lpd[n] for n in members]))
    weights = dict(zip(members, weights_array))
    for name in members:
        if weights[name] >= MIN_STACK_WEIGHT:
            reuse = (fitted or {}).get(name)
            if reuse is not None and reuse.attrs.get("grid_fingerprint") != grid_fingerprint(grid):
                raise InputError(f"fitted: the {name} posterior was fitted to another grid", parameter="fitted")
            full[name] = reuse if reuse is not None else fit(grid, law=name, grid_name=grid_name, **settings)
            member_diagnostics[name] = {"weight": float(weights[name]), **diagnostics(full[name])}
    kept = {n: weights[n] / sum(weights[m] for m in full) for n in full}
    idata = stacking.combine(full, kept, chains * draws, seed)
    first = next(iter(full.values()))
    idata.attrs.update({**first.attrs, "law": family.name, "method": "stack", "approximate": 0,
                        **stacking.stack_attrs(weights, split, lpd, member_diagnostics),
                        "stack_left_out": json.dumps(unsuited)})
    idata.attrs.pop("extrapolation", None)  # a reused member's, not the stack's
    if extrapolation:  # scored with the stack the scored runs saw
        idata = calibrate_extrapolation(grid, idata, lambda _: stacking.combine(early, weights, chains * draws, seed), seed)
    return idata


#: How fit samples hierarchical entries: centred as far as a pilot says the data inform them, or all non-centred.
CENTRINGS = ("auto", "none")

#: Members whose stacking weight is below this are left out of the stacked posterior (and not refitted).
MIN_STACK_WEIGHT = 0.005


def to_datatree(family: LawFamily, samples: dict, stats: dict, data, coords: dict, model_kwargs: dict):
    """Samples shaped (chain, draw, ...) -> an ArviZ DataTree with the contract's groups."""
    import arviz as az
    from numpyro.infer import log_likelihood

    chains, draws = next(iter(samples.values())).shape[:2]
    flat = {k: v.reshape((chains * draws,) + v.shape[2:]) for k, v in samples.items()}
    loglik = np.asarray(log_likelihood(family.model, flat, data, **model_kwargs)["log_loss"])
    constant = family.constant_data(data, coords)
    groups = {
        "posterior": samples,
        "log_likelihood": {"log_loss": loglik.reshape(chains, draws, -1)},
        "observed_data": {"log_loss": np.asarray(data.log_loss)},
        "constant_data": constant,
    }
    if stats:
        groups["sample_stats"] = stats
    dims = {k: v for k, v in family.dims.items() if k in samples or k in constant or k == "log_loss"}
    idata = az.from_dict(groups, coords={k: coords[k] for k in (*family.coords, "obs")}, dims=dims)
    for group in ("observed_data", "log_likelihood"):
        ds = idata[group].to_dataset().assign_coords(obs_run=coords["obs_run"], obs_target=coords["obs_target"])
        idata[group] = xr.DataTree(ds)
    post = idata["posterior"].to_dataset()
    post.attrs["law"] = family.name
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
    from numpyro.infer import Predictive

    family = laws.get(law)
    check_options(family, likelihood)
    if family.members:
        raise InputError(f"law: the {law} law has no prior of its own; check each member's ({', '.join(family.members)})",
                         parameter="law")
    if draws < 1:
        raise InputError(f"draws must be >= 1, got {draws}", parameter="draws")
    where = grid_name or "grid"
    data, coords = family.model_data(grids.validate_grid(grid, where), where)
    prior_data = dataclasses.replace(data, log_loss=None)
    sim = Predictive(family.model, num_samples=draws)(jax.random.PRNGKey(seed), prior_data, **family.model_kwargs(likelihood))
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
