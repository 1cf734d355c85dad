"""The exponential data mixing law at one fixed budget: hierarchical model, NUTS fit,
prediction for new mixtures and held-out check.

Ye et al. 2024 ("Data Mixing Laws") model the validation loss on domain j of a model
trained, at a fixed budget, on a mixture with proportions r (r_i >= 0, sum r_i = 1) as::

    L_j(r) = c_j + k_j * exp(sum_i t_ij r_i)

(:func:`bayescale.laws.power.mixing_loss`). c_j >= 0 is the part no mixture removes, k_j > 0
the rest, t_ij how much (and in which direction) a share of source i moves target j.

**Identification.** Since every r sums to 1, adding δ to column j of t and dividing k_j
by e^δ changes nothing. The model fixes the representative with ``r_ref @ t = 0``, r_ref
the mean mixture of the fit runs: then ``L_j(r_ref) = c_j + k_j``, k_j is the reducible
loss at the reference mixture, and t_ij − t_i'j compares two sources for target j.

**Model** (priors adapt to each target's loss scale):

- ``c_j = m_j · sigmoid(e_j)`` with m_j the smallest observed loss on target j, so
  0 <= c_j < every observation;
- ``k_j = s_j · exp(w_j)``, s_j the median observed loss, w_j ~ Normal(log 0.2, 1.5);
- ``t_·j = scale_j · P(h + own · 1[i is j] + ε_·j)``, ε ~ Normal(0, 1): ``h_i`` is source
  i's general effect on every target (pooled, negative = lowers every loss), ``own`` the
  mean effect of a target's own domain, ``scale_j`` the size of target j's exponents
  (pooled log-normal: a target whose loss collapses at a trace of its own data needs
  exponents 20x those of a slowly varying one), and ``P x = x − (r_ref · x) 1``;
- ``sigma_j`` log-normal around 0.02 (not pooled: each target's runs pin it); likelihood
  Normal on log loss with scale ``sqrt(sigma_j^2 + (se/loss)^2)`` where the grid has
  ``loss_se``.

**Sampling.** t is sampled centred (hundreds of runs pin it) in the I − 1 coordinates of
a basis of ``{x: r_ref · x = 0}`` in which the fit runs' design is orthogonal
(:func:`slope_coordinates`, the QR trick of regression): the prior is the same, the
direction P removes is not sampled at all, and NUTS sees nearly uncorrelated coordinates.
On the 512-run RegMix grid this cut the leapfrog steps per draw from 1023 (the tree-depth
cap) to 127. See ``analyses/README.md`` for where the law itself fits the data badly.

The posterior is an ArviZ DataTree in the spirit of contract 2: groups ``posterior``
(``c``, ``k``, ``sigma``, ``scale_t`` over ``target``; ``t`` over ``(source, target)``;
``h`` over ``source``; hyperparameters and sampling coordinates), ``sample_stats``,
``log_likelihood``, ``observed_data``, ``constant_data`` (``r_ref`` over ``source``, ``budget``), attrs ``law = "mixing"``.
It is **not** a transfer-law posterior: :func:`bayescale.inference.posterior.law_draws` does not
apply; use :func:`mixing_draws`, :func:`predict_mixing` and :func:`check_holdout`.
"""

from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import xarray as xr

from bayescale.data import grid as grids
from bayescale.laws import power as laws
from bayescale.errors import InputError
from bayescale.inference.posterior import self_mask_for

LAW = "mixing"
PARAMS = ("c", "k", "t", "sigma")
#: Budgets of the fit runs may differ by this much (relative) before :func:`mixing_data`
#: warns that the grid is not at one fixed budget.
BUDGET_TOLERANCE = 0.05


@dataclasses.dataclass(frozen=True)
class MixingData:
    """Arrays the mixing model is conditioned on (NumPy)."""

    r: np.ndarray  # (N, I) mixture proportions of each fit run (rows sum to 1)
    obs_run: np.ndarray  # (M,) run index of each observed cell
    obs_target: np.ndarray  # (M,) target index of each observed cell
    log_loss: np.ndarray | None  # (M,) observed log loss (None: prior predictive)
    log_se: np.ndarray  # (M,) standard error of log loss (0 where unknown)
    self_mask: np.ndarray  # (I, J) 1 where source i is target j
    r_ref: np.ndarray  # (I,) reference mixture: mean of the fit runs' proportions
    basis: np.ndarray  # (I, I-1) contrast basis (:func:`contrast_basis`) of r_ref
    slope_basis: np.ndarray  # (I, I-1) design-whitened basis of t (:func:`slope_coordinates`)
    slope_loc: np.ndarray  # (I-1, I) maps a prior mean of t to the mean of its coordinates y
    slope_tril: np.ndarray  # (I-1, I-1) Cholesky factor of the prior covariance of y / scale^2
    loss_floor: np.ndarray  # (J,) smallest observed loss per target (upper bound of c)
    loss_scale: np.ndarray  # (J,) median observed loss per target (scale of k)


def proportions(data, where: str = "grid") -> np.ndarray:
    """Rows of non-negative amounts (or weights) as mixture proportions (rows sum to 1)."""
    data = np.asarray(data, dtype=np.float64)
    total = data.sum(axis=-1, keepdims=True)
    if np.any(~np.isfinite(data)) or np.any(data < 0):
        raise InputError(f"{where}: mixture amounts must be finite and >= 0")
    if np.any(total <= 0):
        raise InputError(f"{where}: a mixture with no data at all has no proportions (row {int(np.flatnonzero(total <= 0)[0])})")
    return data / total


def mixing_data(grid: xr.Dataset, where: str = "grid") -> tuple[MixingData, dict]:
    """The fit runs of a fixed-budget grid as model arrays, and the coordinates to label them."""
    fit_runs = grids.select_split(grid, "fit")
    if fit_runs.sizes["run"] == 0:
        raise InputError(f"{where}: no runs with split == 'fit' to fit the mixing law to")
    loss = fit_runs["loss"].transpose("run", "target").values
    observed_targets = np.isfinite(loss).any(axis=0)
    if not observed_targets.all():
        missing = [str(t) for t, ok in zip(fit_runs["target"].values, observed_targets) if not ok]
        warnings.warn(f"target(s) {', '.join(missing)} have no observed loss in the fit runs and are left out of the fit",
                      stacklevel=2)
        fit_runs = fit_runs.isel(target=np.flatnonzero(observed_targets))
        loss = fit_runs["loss"].transpose("run", "target").values
    data = fit_runs["data"].transpose("run", "source").values
    budget = data.sum(axis=1)
    empty = np.flatnonzero(budget <= 0)
    if empty.size:
        raise InputError(f"{where}: run {str(fit_runs['run'].values[empty[0]])!r} has no data; a mixture needs some")
    spread = (budget.max() - budget.min()) / np.median(budget)
    if spread > BUDGET_TOLERANCE:
        warnings.warn(
            f"{where}: fit-run budgets range {budget.min():g}-{budget.max():g} {grid.attrs.get('data_unit', '')}; "
            "the mixing law holds at one fixed budget, so budget effects end up in the noise",
            stacklevel=2,
        )
    r = proportions(data, where)
    if r.shape[1] < 2:
        raise InputError(f"{where}: the mixing law needs at least 2 sources to mix; the grid has {r.shape[1]}")
    r_ref = r.mean(axis=0)
    basis = contrast_basis(r_ref)
    slope_basis, slope_loc, slope_tril = slope_coordinates(r, basis)
    sources = [str(s) for s in fit_runs["source"].values]
    targets = [str(t) for t in fit_runs["target"].values]
    from bayescale.inference.fit import observed_cells

    obs_run, obs_target, observed, log_se = observed_cells(fit_runs, loss)
    model_data = MixingData(
        r=r,
        obs_run=obs_run,
        obs_target=obs_target,
        log_loss=np.log(observed),
        log_se=log_se,
        self_mask=self_mask_for(sources, targets),
        r_ref=r_ref,
        basis=basis,
        slope_basis=slope_basis,
        slope_loc=slope_loc,
        slope_tril=slope_tril,
        loss_floor=np.array([np.nanmin(loss[:, j]) for j in range(len(targets))]),
        loss_scale=np.array([np.nanmedian(loss[:, j]) for j in range(len(targets))]),
    )
    coords = {
        "source": sources,
        "target": targets,
        "obs": np.arange(observed.size),
        "contrast": np.arange(len(sources) - 1),
        "obs_run": ("obs", fit_runs["run"].values[obs_run].astype(str)),
        "obs_target": ("obs", np.asarray(targets)[obs_target]),
        "budget": float(np.median(budget)),
    }
    return model_data, coords


def identify_t(t_raw, r_ref):
    """The representative of t with ``r_ref @ t = 0`` in every column (see the module doc)."""
    return t_raw - (r_ref @ t_raw)[None, :]


def contrast_basis(r_ref: np.ndarray) -> np.ndarray:
    """G (I, I-1) with ``G z ~ P eps`` for z ~ N(0, I_{I-1}) and eps ~ N(0, I_I), where
    ``P x = x - (r_ref . x) 1`` maps a vector to its representative with ``r_ref . x = 0``.

    Sampling ``G z`` instead of ``P eps`` gives the same prior on the identified part of t
    without the direction P removes (which NUTS would have to wander along for nothing).
    """
    n = r_ref.size
    P = np.eye(n) - np.outer(np.ones(n), r_ref)
    values, vectors = np.linalg.eigh(P @ P.T)
    keep = np.argsort(values)[1:]  # drop the one zero eigenvalue (the direction 1)
    return vectors[:, keep] * np.sqrt(np.clip(values[keep], 0.0, None))


def slope_coordinates(r: np.ndarray, basis: np.ndarray, ridge: float = 1e-3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A basis of the exponents t (one column of t at a time) in which the fit runs' design
    is orthogonal (the QR trick of regression): ``(slope_basis, slope_loc, slope_tril)``.

    With X = r @ basis = Q R (thin QR, ridge-regularised so that a source absent from every
    run keeps R invertible) and M = sqrt(N) R^-1: ``slope_basis = basis @ M`` (so r @ slope_basis
    = sqrt(N) Q, orthogonal columns), and the prior t = mean + basis @ z, z ~ N(0, tau^2 I),
    becomes y ~ N(slope_loc @ mean, tau^2 slope_tril slope_tril^T) with
    slope_loc = M^-1 pinv(basis) and slope_tril = chol(M^-1 M^-T).
    """
    n, m = r.shape[0], basis.shape[1]
    X = r @ basis
    # a ridge of `ridge` times the mean squared column norm: negligible unless a column is empty
    design = np.vstack([X, np.sqrt(ridge * max(float(np.mean(np.sum(X**2, axis=0))), 1e-12)) * np.eye(m)])
    _, R = np.linalg.qr(design)
    M_inv = R / np.sqrt(n)
    slope_basis = basis @ np.linalg.inv(M_inv)
    slope_loc = M_inv @ np.linalg.pinv(basis)
    slope_tril = np.linalg.cholesky(M_inv @ M_inv.T)
    return slope_basis, slope_loc, slope_tril


def mixing_law_model(data: MixingData):
    """The hierarchical exponential mixing law (see the module doc)."""
    n_sources, n_targets = data.self_mask.shape
    basis = jnp.asarray(data.basis)
    r_ref = jnp.asarray(data.r_ref)
    with numpyro.plate("target_plate", n_targets):
        e = numpyro.sample("e", dist.Normal(0.0, 1.5))
        w_k = numpyro.sample("w_k", dist.Normal(jnp.log(0.2), 1.5))
    c = numpyro.deterministic("c", jnp.asarray(data.loss_floor) / (1.0 + jnp.exp(-e)))
    k = numpyro.deterministic("k", jnp.asarray(data.loss_scale) * jnp.exp(w_k))
    # Each target's exponents have their own scale (a target whose loss collapses at a
    # trace of its own data needs exponents 20x those of a slowly varying one), pooled
    # and non-centred (a handful of targets inform the pool). The noise is not pooled:
    # every target has dozens to hundreds of runs that pin its own.
    mu_scale = numpyro.sample("mu_scale", dist.Normal(jnp.log(2.0), 1.5))
    tau_scale = numpyro.sample("tau_scale", dist.HalfNormal(1.0))
    with numpyro.plate("target_plate", n_targets):
        log_sigma = numpyro.sample("log_sigma", dist.Normal(jnp.log(0.02), 1.5))
        z_scale = numpyro.sample("z_scale", dist.Normal(0.0, 1.0))
    sigma = numpyro.deterministic("sigma", jnp.exp(log_sigma))
    scale_t = numpyro.deterministic("scale_t", jnp.exp(mu_scale + tau_scale * z_scale))

    # Standardised structure shared by the targets: h_i, source i's general effect
    # (non-centred: informed only through the mean over targets), and own, the effect of a
    # target's own domain.
    tau_h = numpyro.sample("tau_h", dist.HalfNormal(0.5))
    z_h = numpyro.sample("z_h", dist.Normal(0.0, 1.0).expand([n_sources - 1]).to_event(1))
    h = numpyro.deterministic("h", tau_h * (basis @ z_h))
    mean = h[:, None] * jnp.ones((1, n_targets))
    if data.self_mask.any():
        own = numpyro.sample("own", dist.Normal(-1.0, 1.0))
        mean = mean + own * identify_t(jnp.asarray(data.self_mask), r_ref)
    # t_.j = scale_j (mean_.j + basis @ z), z ~ N(0, I), written centred in the coordinates y
    # of the design-whitened basis (t = slope_basis @ y): the same prior, but the data
    # inform the coordinates of y about equally and independently.
    loc = scale_t[:, None] * (jnp.asarray(data.slope_loc) @ mean).T
    tril = scale_t[:, None, None] * jnp.asarray(data.slope_tril)[None]
    y_t = numpyro.sample("y_t", dist.MultivariateNormal(loc, scale_tril=tril).to_event(1))
    t = numpyro.deterministic("t", jnp.asarray(data.slope_basis) @ y_t.T)

    log_mean = laws.mixing_log_loss(jnp.asarray(data.r), c, k, t)
    mu = log_mean[data.obs_run, data.obs_target]
    noise = jnp.sqrt(sigma[data.obs_target] ** 2 + jnp.asarray(data.log_se) ** 2)
    with numpyro.plate("obs", mu.shape[0]):
        numpyro.sample("log_loss", dist.Normal(mu, noise), obs=None if data.log_loss is None else jnp.asarray(data.log_loss))


DIMS = {
    "c": ["target"], "k": ["target"], "sigma": ["target"], "e": ["target"], "w_k": ["target"], "log_sigma": ["target"],
    "z_scale": ["target"], "scale_t": ["target"], "h": ["source"], "z_h": ["contrast"], "t": ["source", "target"],
    "y_t": ["target", "contrast"], "log_loss": ["obs"],
}


def fit_mixing(
    grid: xr.Dataset,
    *,
    chains: int = 2,
    warmup: int = 500,
    draws: int = 500,
    seed: int = 0,
    target_accept: float = 0.9,
    dense_mass: bool = False,
    max_tree_depth: int = 10,
    progress: bool = False,
    grid_name: str = "",
    likelihood: str = "normal",
    method: str = "nuts",
):
    """Fit the exponential mixing law to the grid's fit runs with NUTS.

    The grid's ``data`` are read as mixture amounts at one budget (each run's row is
    normalised to proportions). Returns an ArviZ DataTree (see the module doc) whose
    attrs say ``law = "mixing"``. ``likelihood`` and ``method`` exist so that
    :func:`bayescale.inference.fit.fit` can hand its arguments over; only ``"normal"`` / ``"nuts"``
    are implemented.
    """
    from numpyro.infer import MCMC, NUTS, init_to_median

    if likelihood != "normal":
        raise InputError(f"the mixing law has a normal likelihood only, got --likelihood {likelihood!r}")
    if method != "nuts":
        raise InputError(f"the mixing law is fitted with NUTS only, got --method {method!r}")
    for flag, value in (("--chains", chains), ("--warmup", warmup), ("--draws", draws)):
        if value < 1:
            raise InputError(f"{flag} must be >= 1, got {value}")
    if not 0 < target_accept < 1:
        raise InputError(f"--target-accept must lie strictly between 0 and 1, got {target_accept}")
    where = grid_name or "grid"
    grid = grids.validate_grid(grid, where)
    data, coords = mixing_data(grid, where)
    chain_method = "parallel" if jax.local_device_count() >= chains else "sequential"
    kernel = NUTS(mixing_law_model, target_accept_prob=target_accept, dense_mass=dense_mass, max_tree_depth=max_tree_depth,
                  init_strategy=init_to_median(num_samples=15))
    mcmc = MCMC(kernel, num_warmup=warmup, num_samples=draws, num_chains=chains, chain_method=chain_method, progress_bar=progress)
    from bayescale.inference.fit import interruptible

    def sample():  # in a thread, so that Ctrl-C stops a long fit at once (see bayescale.inference.fit.interruptible)
        mcmc.run(jax.random.PRNGKey(seed), data, extra_fields=("diverging", "energy", "num_steps"))
        samples = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
        extra = mcmc.get_extra_fields(group_by_chain=True)
        return samples, {"diverging": np.asarray(extra["diverging"]), "energy": np.asarray(extra["energy"]),
                         "n_steps": np.asarray(extra["num_steps"])}

    samples, stats = interruptible(sample)
    idata = _to_datatree(samples, stats, data, coords)
    from bayescale.inference.fit import grid_fingerprint

    idata.attrs.update(
        {
            "law": LAW,
            "likelihood": "normal",
            "method": "nuts",
            "data_unit": str(grid.attrs.get("data_unit", "units")),
            "loss_name": str(grid.attrs.get("loss_name", "loss")),
            "budget": coords["budget"],
            "grid": grid_name,
            "grid_fingerprint": grid_fingerprint(grid),
            "grid_description": str(grid.attrs.get("description", "")),
            "seed": seed,
            "parameters": "c, k, sigma (target); t (source, target): L_j(r) = c_j + k_j exp(sum_i t_ij r_i), r_ref @ t = 0",
        }
    )
    return idata


def _to_datatree(samples: dict, stats: dict, data: MixingData, coords: dict):
    import arviz as az
    from numpyro.infer import log_likelihood

    chains, draws = next(iter(samples.values())).shape[:2]
    flat = {k: v.reshape((chains * draws,) + v.shape[2:]) for k, v in samples.items()}
    loglik = np.asarray(log_likelihood(mixing_law_model, flat, data)["log_loss"])
    groups = {
        "posterior": samples,
        "sample_stats": stats,
        "log_likelihood": {"log_loss": loglik.reshape(chains, draws, -1)},
        "observed_data": {"log_loss": np.asarray(data.log_loss)},
        "constant_data": {"r_ref": np.asarray(data.r_ref), "budget": np.float64(coords["budget"])},
    }
    dims = {k: v for k, v in DIMS.items() if k in samples or k == "log_loss"}
    dims["r_ref"] = ["source"]
    idata = az.from_dict(groups, coords={k: coords[k] for k in ("source", "target", "obs", "contrast")}, dims=dims)
    for group in ("observed_data", "log_likelihood"):
        ds = idata[group].to_dataset().assign_coords(obs_run=coords["obs_run"], obs_target=coords["obs_target"])
        idata[group] = xr.DataTree(ds)
    post = idata["posterior"].to_dataset()
    post.attrs["law"] = LAW
    idata["posterior"] = xr.DataTree(post)
    return idata


# ---------------------------------------------------------------------------
# draws, prediction, check


@dataclasses.dataclass(frozen=True)
class MixingDraws:
    """Posterior draws of the mixing law, flattened over (chain, draw) into S."""

    sources: tuple[str, ...]
    targets: tuple[str, ...]
    c: np.ndarray  # (S, J)
    k: np.ndarray  # (S, J)
    t: np.ndarray  # (S, I, J)
    sigma: np.ndarray  # (S, J) noise sd of log loss
    r_ref: np.ndarray  # (I,)
    budget: float

    @property
    def n_draws(self) -> int:
        return self.c.shape[0]


def mixing_draws(idata) -> MixingDraws:
    """Flatten a mixing-law posterior (from :func:`fit_mixing`) into :class:`MixingDraws`."""
    law = idata.attrs.get("law")
    if law != LAW:
        raise InputError(f"not a mixing-law posterior (law = {law!r}); fit it with law='mixing'")
    post = idata["posterior"].to_dataset()
    for name in PARAMS:
        if name not in post.data_vars:
            raise InputError(f"mixing posterior has no {name!r} variable")

    def flat(name, dims):
        da = post[name].transpose("chain", "draw", *dims)
        return np.asarray(da.values, dtype=np.float64).reshape((-1,) + da.shape[2:])

    const = idata["constant_data"].to_dataset()
    return MixingDraws(
        sources=tuple(str(s) for s in post["source"].values),
        targets=tuple(str(t) for t in post["target"].values),
        c=flat("c", ("target",)),
        k=flat("k", ("target",)),
        t=flat("t", ("source", "target")),
        sigma=flat("sigma", ("target",)),
        r_ref=np.asarray(const["r_ref"].values, dtype=np.float64),
        budget=float(const["budget"].values),
    )


_vmapped_log_loss = jax.jit(jax.vmap(laws.mixing_log_loss, in_axes=(None, 0, 0, 0)))


def log_loss_draws(draws: MixingDraws, r) -> np.ndarray:
    """log L of every target for each mixture (rows of proportions) under each draw: (S, N, J)."""
    r = np.atleast_2d(np.asarray(r, dtype=np.float64))
    return np.asarray(_vmapped_log_loss(jnp.asarray(r), jnp.asarray(draws.c), jnp.asarray(draws.k), jnp.asarray(draws.t)))


def mixtures_matrix(draws: MixingDraws, mixtures, where: str = "mixture") -> np.ndarray:
    """Mixtures as (N, I) proportions over the posterior's sources.

    ``mixtures``: a {source: weight} dict, a list of them (missing sources get 0), or an
    (N, I) / (I,) array in the posterior's source order. Rows are normalised to sum to 1,
    so amounts and weights both work.
    """
    if isinstance(mixtures, dict):
        mixtures = [mixtures]
    if isinstance(mixtures, (list, tuple)) and mixtures and isinstance(mixtures[0], dict):
        rows = np.zeros((len(mixtures), len(draws.sources)))
        for n, mixture in enumerate(mixtures):
            for name, weight in mixture.items():
                if name not in draws.sources:
                    raise InputError(f"{where}: unknown source domain {name!r}; "
                                     f"the posterior's sources are {', '.join(draws.sources)}")
                rows[n, draws.sources.index(name)] = weight
        return proportions(rows, where)
    rows = np.atleast_2d(np.asarray(mixtures, dtype=np.float64))
    if rows.shape[-1] != len(draws.sources):
        raise InputError(f"{where}: {rows.shape[-1]} weights per mixture; the posterior has {len(draws.sources)} sources")
    return proportions(rows, where)


def predict_mixing(draws: MixingDraws, mixtures, *, interval: float = 0.9, noise: bool = False, seed: int = 0) -> xr.Dataset:
    """Predicted loss per (mixture, target): mean, median and the central ``interval``.

    ``noise=False``: the credible interval of the law's loss; ``noise=True``: the
    predictive interval of one more run's observed loss.
    """
    if not 0 < interval < 1:
        raise InputError(f"--interval must lie strictly between 0 and 1, got {interval}")
    r = mixtures_matrix(draws, mixtures)
    log_l = log_loss_draws(draws, r)
    if noise:
        log_l = log_l + draws.sigma[:, None, :] * np.random.default_rng(seed).standard_normal(log_l.shape)
    samples = np.exp(log_l)
    lo, med, hi = np.quantile(samples, [(1 - interval) / 2, 0.5, (1 + interval) / 2], axis=0)
    coords = {"mixture": np.arange(r.shape[0]), "target": list(draws.targets)}
    dims = ("mixture", "target")
    return xr.Dataset(
        {
            "mean": (dims, samples.mean(axis=0)),
            "median": (dims, med),
            "lo": (dims, lo),
            "hi": (dims, hi),
            "proportions": (("mixture", "source"), r),
        },
        coords={**coords, "source": list(draws.sources)},
        attrs={"interval": interval, "noise": int(noise), "budget": draws.budget},
    )


def holdout_predictions(
    draws: MixingDraws, grid: xr.Dataset, *, split: str = "holdout", seed: int = 0, where: str = "grid"
) -> xr.Dataset:
    """Posterior predictive of every observed (run, target) cell of the grid's ``split`` runs,
    in the layout of :func:`bayescale.evaluate.check.holdout_predictions` (``observed``, ``median``,
    ``mean_law``, ``lo50``/``hi50``, ``lo90``/``hi90``), observation noise included."""
    runs = grids.select_split(grid, split)
    if runs.sizes["run"] == 0:
        raise InputError(f"{where}: no runs with split == {split!r} to check against")
    grid_targets = [str(x) for x in runs["target"].values]
    targets = [t for t in draws.targets if t in grid_targets]
    if not targets:
        raise InputError(f"{where}: none of the posterior's targets ({', '.join(draws.targets)}) is in the grid")
    from bayescale.evaluate.check import allocations_for, predictive_bands

    data = allocations_for(draws, runs, where)
    budget = data.sum(axis=1)
    if np.any(np.abs(budget - draws.budget) > BUDGET_TOLERANCE * draws.budget):
        warnings.warn(f"{where}: some {split} runs are not at the fitted budget {draws.budget:g}; "
                      "the mixing law does not extrapolate in budget", stacklevel=2)
    log_pred = log_loss_draws(draws, proportions(data, where))
    rng = np.random.default_rng(seed)
    predictive = log_pred + draws.sigma[:, None, :] * rng.standard_normal(log_pred.shape)
    return predictive_bands(runs, targets, draws.targets, log_pred, predictive, rng)


def check_holdout(draws: MixingDraws, grid: xr.Dataset, *, split: str = "holdout", seed: int = 0, where: str = "grid") -> dict:
    """Score the mixing law's predictions of the grid's held-out runs: the dict of
    :func:`bayescale.evaluate.check.score_predictions` (n, Pearson r, median |relative error|,
    50 % / 90 % coverage)."""
    from bayescale.evaluate.check import score_predictions

    return score_predictions(holdout_predictions(draws, grid, split=split, seed=seed, where=where))


def diagnostics(idata) -> dict:
    """Convergence summary over c, k, t and sigma (:func:`bayescale.inference.posterior.sampler_diagnostics`)."""
    from bayescale.inference.posterior import sampler_diagnostics

    return sampler_diagnostics(idata, PARAMS)


# ---------------------------------------------------------------------------
# simulation


def identified(c, k, t, r_ref) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The representative (c, k', t') of a mixing law with ``r_ref @ t' = 0``: the same law,
    in the parameters a posterior from :func:`fit_mixing` reports."""
    t = np.asarray(t, dtype=np.float64)
    shift = np.asarray(r_ref) @ t
    return np.asarray(c, dtype=np.float64), np.asarray(k) * np.exp(shift), t - shift[None, :]


def simulate_mixing_grid(
    c,
    k,
    t,
    sigma,
    *,
    sources: list[str],
    targets: list[str],
    runs: int = 80,
    holdout: int = 20,
    concentration: float = 1.0,
    budget: float = 1.0,
    seed: int = 0,
) -> xr.Dataset:
    """A fixed-budget loss grid drawn from a known mixing law: ``runs`` Dirichlet mixtures
    (the last ``holdout`` of them held out), log loss = law + Normal(0, sigma_j). The true
    parameters are stored in the attrs (``true_c``, ``true_k``, ``true_t`` as flat lists)."""
    rng = np.random.default_rng(seed)
    c, k, sigma = (np.asarray(x, dtype=np.float64) for x in (c, k, sigma))
    t = np.asarray(t, dtype=np.float64)
    r = rng.dirichlet(np.full(len(sources), concentration), size=runs)
    log_l = np.asarray(laws.mixing_log_loss(jnp.asarray(r), jnp.asarray(c), jnp.asarray(k), jnp.asarray(t)))
    loss = np.exp(log_l + sigma[None, :] * rng.standard_normal(log_l.shape))
    split = ["fit"] * (runs - holdout) + ["holdout"] * holdout
    return grids.make_grid(
        [f"mix{n:03d}" for n in range(runs)], sources, targets, r * budget, loss, split=split,
        attrs={"loss_name": "simulated", "data_unit": "units", "description": f"simulated mixing-law grid (seed {seed})",
               "true_c": c.tolist(), "true_k": k.tolist(), "true_t": t.ravel().tolist()},
    )
