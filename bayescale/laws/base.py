"""What a law family is: the protocol every family in the registry (:mod:`bayescale.laws`) follows.

A family owns everything that differs between laws: its parameters, how it reads a grid
into model arrays, its NumPyro model and priors, what it stores beside the draws, how it
turns a posterior into draws, and its prediction (and the noise of one more run) from
draws. Everything generic — sampling, saving, diagnostics, held-out checks, comparison,
reports — lives in the layers above and asks the family, never the law's name.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np
import xarray as xr

from bayescale.data import grid as grids
from bayescale.data.grid import self_mask_for
from bayescale.errors import InputError

__all__ = ["Draws", "LawFamily", "cell_coords", "fit_runs", "flat_draws", "observed_cells", "partially_centred_normal",
           "self_mask_for"]


@runtime_checkable
class Draws(Protocol):
    """Posterior draws of one family, flattened over (chain, draw) into one axis of length ``n_draws``."""

    law: str
    sources: tuple[str, ...]
    targets: tuple[str, ...]

    @property
    def n_draws(self) -> int: ...


@runtime_checkable
class LawFamily(Protocol):
    """One law family. Registering an object with these members (:func:`bayescale.laws.register`)
    is all it takes for ``fit``, ``predict``, ``check``, ``compare``, ``sbc`` and ``report`` to serve it."""

    #: Registry key, the ``law`` attr of its posteriors and the value of ``--law``.
    name: str
    #: One line for help texts.
    summary: str
    #: Variables of the ``posterior`` group that are the law's parameters: validated when a
    #: posterior is loaded and diagnosed (r-hat, ESS) after a fit.
    parameters: tuple[str, ...]
    #: Likelihoods and fitting methods the family implements (the first is the default).
    likelihoods: tuple[str, ...]
    methods: tuple[str, ...]
    #: Dims of every sampled, deterministic, observed and constant variable.
    dims: Mapping[str, list[str]]
    #: Named coordinates (besides ``obs``) that label its variables.
    coords: tuple[str, ...]
    #: Draws of the initial point search (numpyro ``init_to_median(num_samples=...)``).
    init_samples: int
    #: Capabilities: loss is a convex function of data *amounts* at any budget (predict at new
    #: budgets, allocate), and the law has a transfer matrix T (hubs and islands).
    amounts: bool
    transfer: bool
    #: Families a stack mixes (empty for a family with a model of its own): ``fit`` then fits
    #: each member and stacks them (:mod:`bayescale.inference.stacking`) instead of sampling.
    members: tuple[str, ...]
    #: Sample sites drawn by :func:`partially_centred_normal`, whose centring ``fit`` chooses per
    #: grid (:mod:`bayescale.inference.reparam`); empty: the model has none.
    hierarchical_sites: tuple[str, ...]
    #: Groups of sample sites NUTS adapts a dense mass matrix over (numpyro's ``dense_mass``
    #: blocks): parameters the data tie together (a target's level, scale and exponent).
    dense_blocks: tuple[tuple[str, ...], ...]

    def model_data(self, grid: xr.Dataset, where: str = "grid") -> tuple[Any, dict]:
        """The grid's ``fit`` runs as the model's arrays, and the coordinates that label them."""

    def with_centring(self, data: Any, centring: dict[str, np.ndarray]) -> Any:
        """``data`` whose model draws each hierarchical site with the given centring (0: non-centred)."""

    def identification_warnings(self, data: Any, coords: dict, unit: str = "units") -> list[str]:
        """What the fit runs cannot tell apart, one line each (the fit still runs)."""

    def unsuited(self, grid: xr.Dataset) -> str | None:
        """Why the family cannot describe ``grid`` at all (a stack then leaves it out), or None."""

    def model(self, data: Any, **kwargs) -> None:
        """The NumPyro model; ``model_kwargs`` gives its keyword arguments."""

    def model_kwargs(self, likelihood: str) -> dict:
        """Keyword arguments of :meth:`model` for this likelihood."""

    def constant_data(self, data: Any, coords: dict) -> dict[str, Any]:
        """What the posterior's ``constant_data`` group stores beside the draws."""

    def posterior_attrs(self, coords: dict) -> dict[str, Any]:
        """Attrs of the family's own (besides law, likelihood, method, grid, seed...)."""

    def validate(self, idata, source: str) -> None:
        """Raise :class:`InputError` unless ``idata`` holds this family's variables, finite."""

    def draws(self, idata) -> Draws:
        """The posterior as flat NumPy draws."""

    def loss_draws(self, draws: Draws, amounts: np.ndarray, *, log: bool = False) -> np.ndarray:
        """Loss (or its log) of every target for each row of raw data ``amounts`` (N, I) over
        ``draws.sources`` under each draw: (S, N, J)."""

    def add_noise(self, log_loss: np.ndarray, draws: Draws, rng: np.random.Generator, amounts=None) -> np.ndarray:
        """One more run's observed log loss: ``log_loss`` (S, N, J) plus the law's noise, and,
        given the runs' raw data ``amounts`` (N, I), the law's error past its fit runs' data."""

    def example_grid(self, seed: int = 0) -> xr.Dataset:
        """A small grid drawn from this law with known parameters, with held-out runs: what the
        tests run every generic function on, so a family is tested the moment it is registered."""


def fit_runs(grid: xr.Dataset, where: str, what: str = "the law") -> tuple[xr.Dataset, np.ndarray]:
    """The grid's ``fit`` runs (validated), less targets never observed in them (with a warning),
    and their (run, target) loss array."""
    runs = grids.select_split(grid, "fit")
    if runs.sizes["run"] == 0:
        raise InputError(f"{where}: no runs with split == 'fit' to fit {what} to")
    runs = grids.validate_grid(runs, where)
    loss = runs["loss"].transpose("run", "target").values
    observed_targets = np.isfinite(loss).any(axis=0)
    if not observed_targets.all():
        missing = [str(t) for t, ok in zip(runs["target"].values, observed_targets) if not ok]
        warnings.warn(f"target(s) {', '.join(missing)} have no observed loss in the fit runs and are left out of the fit", stacklevel=3)
        runs = runs.isel(target=np.flatnonzero(observed_targets))
        loss = runs["loss"].transpose("run", "target").values
    return runs, loss


def observed_cells(fit_runs: xr.Dataset, loss: np.ndarray):
    """(run index, target index, loss, relative standard error) of every observed cell of (run, target)
    ``loss``; the relative error (loss_se / loss, the log-scale noise it adds) is 0 where the grid has none,
    or where its ``loss_se`` is the error of a fixed validation set (:func:`bayescale.data.grid.cell_noise_se`)."""
    obs_run, obs_target = np.nonzero(np.isfinite(loss))
    observed = loss[obs_run, obs_target]
    cell_se = grids.cell_noise_se(fit_runs)
    if cell_se is not None:
        se = cell_se[obs_run, obs_target]
        log_se = np.where(np.isfinite(se), se / observed, 0.0)
    else:
        log_se = np.zeros_like(observed)
    return obs_run, obs_target, observed, log_se


def cell_coords(fit_runs: xr.Dataset, targets: list[str], obs_run: np.ndarray, obs_target: np.ndarray) -> dict:
    """Coordinates that label the observed cells (``obs``, with the run and target of each)."""
    return {
        "obs": np.arange(obs_run.size),
        "obs_run": ("obs", fit_runs["run"].values[obs_run].astype(str)),
        "obs_target": ("obs", np.asarray(targets)[obs_target]),
    }


def flat_draws(post: xr.Dataset, name: str, dims: tuple[str, ...]) -> np.ndarray:
    """A posterior variable as float64 (chain * draw, *dims)."""
    da = post[name].transpose("chain", "draw", *dims)
    return np.asarray(da.values, dtype=np.float64).reshape((-1,) + da.shape[2:])


def partially_centred_normal(name: str, loc, scale, centring=0.0):
    """A ``Normal(loc, scale)`` value drawn at the sample site ``name`` with partial centring
    ``centring`` in [0, 1] (a scalar or an array of the site's shape; Papaspiliopoulos, Roberts and
    Sköld 2007; numpyro's ``LocScaleReparam`` does the same for a whole site).

    The site holds ``w ~ Normal(c loc, scale^c)`` and the value is ``loc + scale^(1-c) (w - c loc)``:
    at c = 0 the usual non-centred ``loc + scale z``, at c = 1 the value itself. The prior of the
    value is the same for every c; what changes is the geometry NUTS sees. Non-centred suits
    entries the data say little about (a funnel otherwise), centred those they pin down (a
    ridge between the entry and its hyperparameters otherwise)."""
    import numpyro
    import numpyro.distributions as dist

    if isinstance(centring, (int, float)) and centring == 0:
        # Non-centred, written as plainly as before centring existed: XLA's pow(scale, 1.0) is not
        # always exactly scale, and the default fit's draws are pinned bit for bit (tests/golden).
        return loc + scale * numpyro.sample(name, dist.Normal(0.0, 1.0))
    w = numpyro.sample(name, dist.Normal(centring * loc, scale**centring))
    return loc + scale ** (1.0 - centring) * (w - centring * loc)
