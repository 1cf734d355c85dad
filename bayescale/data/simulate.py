"""Simulated worlds: known law parameters, a run design, noisy losses — a grid with its truth.

A world is K domains (each both a source and a target) with ground-truth parameters of
the transfer law, built so that it has structure to find: the first domain is a *hub*
(its data help every other domain), the last an *island* (it neither gives nor takes).
Worlds can be drawn at random (``draw_world``), read from TOML (``load_world``), or
both (TOML values override a random draw).

The true parameters travel with the grid as JSON in ``attrs["true_params"]`` so tests
and analyses can score recovery (``true_params``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from pathlib import Path

import numpy as np
import xarray as xr

from bayescale.data import grid as grids
from bayescale.errors import InputError
from bayescale.data.grid import self_mask_for

MEDICAL_DOMAINS = ("ct_abdomen", "ct_chest", "mri_t1_brain", "mri_t2_abdomen", "pet_wholebody")


@dataclasses.dataclass
class Design:
    """Which runs to simulate: single-domain ladders and Dirichlet mixtures at fit budgets,
    mixtures above every fit budget held out."""

    fit_budgets: tuple[float, ...] = (8.0, 16.0, 32.0, 64.0)
    holdout_budgets: tuple[float, ...] = (128.0, 256.0)
    mixtures_per_budget: int = 4
    holdout_mixtures_per_budget: int = 4
    dirichlet_concentration: float = 1.0
    seeds_per_run: int = 1


@dataclasses.dataclass
class World:
    domains: tuple[str, ...]
    E: np.ndarray  # (K,)
    A: np.ndarray
    alpha: np.ndarray
    x0: np.ndarray  # in law units (multiples of data_scale)
    sigma: np.ndarray
    T: np.ndarray  # (K, K) source x target, diagonal 1
    beta: np.ndarray  # (K, K), diagonal 1
    data_scale: float = 16.0
    data_unit: str = "volumes"
    hubs: tuple[str, ...] = ()
    islands: tuple[str, ...] = ()
    design: Design = dataclasses.field(default_factory=Design)
    # A world *outside* the law's family, for misspecification checks: past effective
    # data x_break (law units) each target's power law bends to exponent alpha * ratio
    # (a "broken" power law; ratio < 1 means scaling slows down). None: the law holds.
    broken: tuple[float, float] | None = None
    # Noise shared by all targets of one run (sd of log loss): one model and one seed per run.
    run_sigma: float = 0.0
    # Other domains' data raising a target's loss (K, K source x target, loss per law unit of data).
    interference: np.ndarray | None = None

    def loss(self, data: np.ndarray) -> np.ndarray:
        """Noise-free loss (N, K) of allocations (N, K) in raw data units."""
        d = np.atleast_2d(data) / self.data_scale
        mask = self_mask_for(self.domains, self.domains)
        with np.errstate(divide="ignore"):
            powered = np.where(d[:, :, None] > 0, d[:, :, None] ** self.beta[None], 0.0)
        x = self.x0 + d @ mask + np.einsum("ij,nij->nj", self.T * (1 - mask), powered)
        extra = 0.0 if self.interference is None else d @ (self.interference * (1 - mask))
        if self.broken is None:
            return self.E + self.A * x ** (-self.alpha) + extra
        x_break, ratio = self.broken
        bent = x_break ** (-self.alpha) * (np.maximum(x, x_break) / x_break) ** (-self.alpha * ratio)
        return self.E + self.A * np.where(x <= x_break, x ** (-self.alpha), bent) + extra

    def to_json(self) -> str:
        names = list(self.domains)
        per = lambda v: {n: float(x) for n, x in zip(names, v)}  # noqa: E731
        pair = lambda m: {s: {t: float(m[i, j]) for j, t in enumerate(names)} for i, s in enumerate(names)}  # noqa: E731
        return json.dumps(
            {
                "E": per(self.E), "A": per(self.A), "alpha": per(self.alpha), "x0": per(self.x0),
                "sigma": per(self.sigma), "T": pair(self.T), "beta": pair(self.beta),
                "data_scale": self.data_scale, "hubs": list(self.hubs), "islands": list(self.islands),
                **({"broken": list(self.broken)} if self.broken is not None else {}),
                **({"run_sigma": self.run_sigma} if self.run_sigma else {}),
                **({"interference": pair(self.interference)} if self.interference is not None else {}),
            }
        )


def draw_world(domains: int | tuple[str, ...] = 5, seed: int = 0, data_scale: float = 16.0) -> World:
    """A random world with one hub (first domain) and one island (last domain)."""
    if isinstance(domains, int):
        if domains < 2:
            raise InputError(f"domains must be >= 2, got {domains}", parameter="domains")
        names = MEDICAL_DOMAINS if domains == len(MEDICAL_DOMAINS) else tuple(f"d{k + 1}" for k in range(domains))
    else:
        names = tuple(domains)
    k = len(names)
    rng = np.random.default_rng(seed)
    hub, island = names[0], names[-1]
    # Transfer follows the model's own structure: log T = mu + hubness + receptivity + noise.
    hubness = rng.normal(0.0, 0.5, k)
    receptivity = rng.normal(0.0, 0.5, k)
    hubness[0] = 1.5
    hubness[-1], receptivity[-1] = -2.5, -2.5
    log_T = np.log(0.12) + hubness[:, None] + receptivity[None, :] + rng.normal(0.0, 0.3, (k, k))
    eye = np.eye(k)
    T = eye + (1 - eye) * np.exp(log_T)
    beta = eye + (1 - eye) * (1 / (1 + np.exp(-rng.normal(1.0, 0.5, (k, k)))))
    return World(
        domains=names,
        # Domains differ in loss scale (as CT, MRI and PET reconstruction losses do) by up
        # to 10x; run-to-run noise of 1-2.5 % of the loss, as between training seeds.
        E=np.exp(rng.uniform(np.log(0.1), np.log(1.0), k)),
        A=rng.uniform(0.4, 1.5, k),
        alpha=rng.uniform(0.25, 0.6, k),
        x0=np.exp(rng.uniform(np.log(0.04), np.log(0.2), k)),
        sigma=rng.uniform(0.01, 0.025, k),
        T=T,
        beta=beta,
        data_scale=data_scale,
        hubs=(hub,),
        islands=(island,),
    )


def load_world(path: str | os.PathLike, seed: int = 0) -> World:
    """A world from TOML; parameters the file leaves out are drawn at random with ``seed``.

    Layout::

        [world]
        domains = ["ct_abdomen", "mri_t2_abdomen", "pet_wholebody"]
        data_scale = 16            # D0, raw data units per law unit
        data_unit = "volumes"
        hubs = ["ct_abdomen"]      # labels only; the numbers below decide
        islands = ["pet_wholebody"]
        [targets.ct_abdomen]       # any of E, A, alpha, x0, sigma
        alpha = 0.4
        [transfer.ct_abdomen.mri_t2_abdomen]   # source . target
        T = 0.6
        beta = 0.8
        [design]                   # any field of Design
        fit_budgets = [8, 16, 32, 64]
    """
    path = Path(path)
    try:
        spec = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no such world file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid TOML ({exc})") from None
    world_spec = spec.get("world", {})
    domains = tuple(world_spec.get("domains", MEDICAL_DOMAINS))
    if len(set(domains)) != len(domains) or len(domains) < 2:
        raise InputError(f"{path}: [world] domains must list at least two distinct names")
    world = draw_world(domains, seed=seed, data_scale=float(world_spec.get("data_scale", 16.0)))
    world.data_unit = str(world_spec.get("data_unit", world.data_unit))
    world.hubs = tuple(world_spec.get("hubs", world.hubs))
    world.islands = tuple(world_spec.get("islands", world.islands))
    for name, params in spec.get("targets", {}).items():
        j = _domain_index(path, domains, name, "targets")
        for key, value in params.items():
            if key not in ("E", "A", "alpha", "x0", "sigma"):
                raise InputError(f"{path}: [targets.{name}] has unknown parameter {key!r}")
            getattr(world, key)[j] = _positive(path, f"targets.{name}.{key}", value)
    for src, row in spec.get("transfer", {}).items():
        i = _domain_index(path, domains, src, "transfer")
        for tgt, params in row.items():
            j = _domain_index(path, domains, tgt, f"transfer.{src}")
            if i == j:
                raise InputError(f"{path}: [transfer.{src}.{tgt}] sets a domain's own transfer, which is fixed at 1")
            if "T" in params:
                world.T[i, j] = _positive(path, f"transfer.{src}.{tgt}.T", params["T"], allow_zero=True)
            if "beta" in params:
                b = _positive(path, f"transfer.{src}.{tgt}.beta", params["beta"])
                if b > 1:
                    raise InputError(f"{path}: transfer.{src}.{tgt}.beta must lie in (0, 1], got {b}")
                world.beta[i, j] = b
    design = spec.get("design", {})
    known = {f.name for f in dataclasses.fields(Design)}
    for key in design:
        if key not in known:
            raise InputError(f"{path}: [design] has unknown field {key!r}")
    world.design = Design(**{k: tuple(v) if isinstance(v, list) else v for k, v in design.items()})
    return world


def _domain_index(path, domains, name, table) -> int:
    if name not in domains:
        raise InputError(f"{path}: [{table}.{name}] names a domain not in [world] domains")
    return domains.index(name)


def _positive(path, where, value, allow_zero=False) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{path}: {where} must be a number, got {value!r}") from None
    if not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise InputError(f"{path}: {where} must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    return value


def design_runs(world: World, rng: np.random.Generator) -> tuple[list[str], np.ndarray, list[str], list[int]]:
    """Run ids, data (N, K), splits and seeds of the world's design."""
    design, k = world.design, len(world.domains)
    if design.holdout_budgets and min(design.holdout_budgets) <= max(design.fit_budgets):
        raise InputError("design: every holdout budget must lie above every fit budget")
    runs, data, splits = [], [], []

    def add(run_id, vector, split):
        for s in range(design.seeds_per_run):
            runs.append(run_id if design.seeds_per_run == 1 else f"{run_id}-s{s}")
            data.append(vector)
            splits.append(split)

    for budget in design.fit_budgets:
        for i, name in enumerate(world.domains):
            add(f"single-{name}-{budget:g}", budget * np.eye(k)[i], "fit")
        for m in range(design.mixtures_per_budget):
            add(f"mix{m}-{budget:g}", budget * rng.dirichlet(np.full(k, design.dirichlet_concentration)), "fit")
    for budget in design.holdout_budgets:
        add(f"uniform-{budget:g}", np.full(k, budget / k), "holdout")
        for m in range(design.holdout_mixtures_per_budget):
            add(f"holdout-mix{m}-{budget:g}", budget * rng.dirichlet(np.full(k, design.dirichlet_concentration)), "holdout")
    seeds = [s % max(design.seeds_per_run, 1) for s in range(len(runs))]
    return runs, np.array(data), splits, seeds


def simulate_runs(world: World, amounts, seed: int | np.random.Generator = 0) -> np.ndarray:
    """Observed losses (N, K) of runs with data ``amounts`` (N, K) in raw units: the world's law
    times log-normal noise (sd ``world.sigma`` per target), and the run effect shared by a run's
    targets (sd ``world.run_sigma``) where the world has one. ``seed``: an int or a Generator
    (drawn from, not copied: :func:`simulate_grid` passes the one that made its design)."""
    rng = np.random.default_rng(seed)
    amounts = np.atleast_2d(np.asarray(amounts, dtype=float))
    if amounts.shape[1] != len(world.domains):
        raise InputError(f"amounts has {amounts.shape[1]} columns; the world has {len(world.domains)} domains",
                         parameter="amounts")
    mean = world.loss(amounts)
    loss = mean * np.exp(world.sigma * rng.standard_normal(mean.shape))
    if world.run_sigma:
        loss = loss * np.exp(world.run_sigma * rng.standard_normal((mean.shape[0], 1)))
    return loss


def simulate_grid(world: World, seed: int = 0) -> xr.Dataset:
    """Evaluate the world's design on every domain with log-normal noise; truth in attrs."""
    rng = np.random.default_rng(seed)
    runs, data, splits, seeds = design_runs(world, rng)
    loss = simulate_runs(world, data, rng)
    # The trivial predictor's loss: the law with no data at all.
    baseline = world.loss(np.zeros((1, len(world.domains))))[0]
    return grids.make_grid(
        run=runs,
        source=list(world.domains),
        target=list(world.domains),
        data=data,
        loss=loss,
        seed=seeds,
        split=splits,
        baseline_loss=baseline,
        attrs={
            "loss_name": "simulated_loss",
            "data_unit": world.data_unit,
            "description": f"simulated world ({len(world.domains)} domains, seed {seed}, hub {', '.join(world.hubs)}, island {', '.join(world.islands)})",
            "true_params": world.to_json(),
        },
    )


def true_params(grid: xr.Dataset, data_scale: float | None = None) -> dict[str, xr.DataArray]:
    """The simulator's true parameters of a grid, labelled like the posterior's variables.

    ``data_scale``: express them in the law units of that D0 (a fit's
    ``constant_data.data_scale``), which need not be the world's own. With
    c = D0_new / D0_world: x0' = x0 / c, A' = A c^-alpha and T' = T c^(beta - 1)
    leave every loss unchanged.
    """
    if "true_params" not in grid.attrs:
        raise InputError("grid carries no true parameters (it was not made by bayescale simulate)")
    truth = json.loads(grid.attrs["true_params"])
    names = list(truth["E"])
    out = {k: xr.DataArray([truth[k][n] for n in names], coords={"target": names}, dims="target") for k in ("E", "A", "alpha", "x0", "sigma")}
    for k in ("T", "beta"):
        out[k] = xr.DataArray(
            [[truth[k][s][t] for t in names] for s in names], coords={"source": names, "target": names}, dims=("source", "target")
        )
    if data_scale is not None:
        c = data_scale / truth["data_scale"]
        out["x0"] = out["x0"] / c
        out["A"] = out["A"] * c ** (-out["alpha"])
        out["T"] = out["T"] * c ** (out["beta"] - 1.0)
    return out
