"""The exponential data mixing law at one fixed budget (the ``mixing`` family).

Its hierarchical model, how it reads a fixed-budget grid, its draws and its prediction of
new mixtures; fitting and checking are the generic ones.

Ye et al. 2024 ("Data Mixing Laws") model the validation loss on domain j of a model
trained, at a fixed budget, on a mixture with proportions r (r_i >= 0, sum r_i = 1) as::

    L_j(r) = c_j + k_j * exp(sum_i t_ij r_i)

(:func:`mixing_loss`). c_j >= 0 is the part no mixture removes, k_j > 0
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
It is the ``mixing`` family of the registry (:data:`MIXING`): ``fit(grid, law="mixing")``
fits it and ``check`` scores it like any other law. A law of proportions at one budget, it
does not predict other budgets nor allocate (``amounts = False``); :func:`predict_mixing`
predicts new mixtures.
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
from bayescale.errors import InputError
from bayescale.laws.base import cell_coords, fit_runs, flat_draws, observed_cells, self_mask_for

LAW = "mixing"
PARAMS = ("c", "k", "t", "sigma")
#: Budgets of the fit runs may differ by this much (relative) before :func:`mixing_data`
#: warns that the grid is not at one fixed budget.
BUDGET_TOLERANCE = 0.05


def mixing_log_loss(r, c, k, t):
    """log L_j(r) of the exponential mixing law, computed stably.

    ``L_j(r) = c_j + k_j * exp(sum_i t_ij r_i)``; r: (N, I) proportions, c >= 0 and k > 0:
    (J,), t: (I, J) real. Returns (N, J): ``logaddexp(log c_j, log k_j + (r @ t)_j)``.
    Because every r sums to 1, adding a constant to column j of t and dividing k_j by
    its exponential leaves the law unchanged; the model reports the representative with
    ``r_ref @ t = 0``.
    """
    return jnp.logaddexp(jnp.log(c), jnp.log(k) + r @ t)


def mixing_loss(r, c, k, t):
    """L_j(r) = c_j + k_j * exp(sum_i t_ij r_i): (N, I) proportions -> (N, J) loss."""
    return c + k * jnp.exp(r @ t)


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
    runs, loss = fit_runs(grid, where, "the mixing law")
    data = runs["data"].transpose("run", "source").values
    budget = data.sum(axis=1)
    empty = np.flatnonzero(budget <= 0)
    if empty.size:
        raise InputError(f"{where}: run {str(runs['run'].values[empty[0]])!r} has no data; a mixture needs some")
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
    sources = [str(s) for s in runs["source"].values]
    targets = [str(t) for t in runs["target"].values]
    obs_run, obs_target, observed, log_se = observed_cells(runs, loss)
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
        **cell_coords(runs, targets, obs_run, obs_target),
        "contrast": np.arange(len(sources) - 1),
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

    log_mean = mixing_log_loss(jnp.asarray(data.r), c, k, t)
    mu = log_mean[data.obs_run, data.obs_target]
    noise = jnp.sqrt(sigma[data.obs_target] ** 2 + jnp.asarray(data.log_se) ** 2)
    with numpyro.plate("obs", mu.shape[0]):
        numpyro.sample("log_loss", dist.Normal(mu, noise), obs=None if data.log_loss is None else jnp.asarray(data.log_loss))


DIMS = {
    "c": ["target"], "k": ["target"], "sigma": ["target"], "e": ["target"], "w_k": ["target"], "log_sigma": ["target"],
    "z_scale": ["target"], "scale_t": ["target"], "h": ["source"], "z_h": ["contrast"], "t": ["source", "target"],
    "y_t": ["target", "contrast"], "log_loss": ["obs"],
}


# ---------------------------------------------------------------------------
# draws and prediction


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
    law: str = LAW

    @property
    def n_draws(self) -> int:
        return self.c.shape[0]

    def subset(self, index) -> MixingDraws:
        """The draws at ``index`` (an index array or slice along the draw axis)."""
        return dataclasses.replace(self, c=self.c[index], k=self.k[index], t=self.t[index], sigma=self.sigma[index])


def mixing_draws(idata) -> MixingDraws:
    """Flatten a mixing-law posterior into :class:`MixingDraws`."""
    law = idata.attrs.get("law")
    if law != LAW:
        raise InputError(f"not a mixing-law posterior (law = {law!r}); fit it with law='mixing'")
    post = idata["posterior"].to_dataset()
    for name in PARAMS:
        if name not in post.data_vars:
            raise InputError(f"mixing posterior has no {name!r} variable")
    const = idata["constant_data"].to_dataset()
    return MixingDraws(
        sources=tuple(str(s) for s in post["source"].values),
        targets=tuple(str(t) for t in post["target"].values),
        c=flat_draws(post, "c", ("target",)),
        k=flat_draws(post, "k", ("target",)),
        t=flat_draws(post, "t", ("source", "target")),
        sigma=flat_draws(post, "sigma", ("target",)),
        r_ref=np.asarray(const["r_ref"].values, dtype=np.float64),
        budget=float(const["budget"].values),
    )


_vmapped_log_loss = jax.jit(jax.vmap(mixing_log_loss, in_axes=(None, 0, 0, 0)))


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
        raise InputError(f"interval must lie strictly between 0 and 1, got {interval}", parameter="interval")
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


def amounts_loss_draws(draws: MixingDraws, amounts, *, log: bool = False, where: str = "amounts") -> np.ndarray:
    """Loss (or log loss) under each draw for rows of raw data ``amounts`` (N, I): the law sees only
    their proportions, so rows away from the fitted budget are warned about (it does not extrapolate
    in budget)."""
    single = np.ndim(amounts) == 1
    amounts = np.atleast_2d(np.asarray(amounts, dtype=np.float64))
    budget = amounts.sum(axis=1)
    if np.any(np.abs(budget - draws.budget) > BUDGET_TOLERANCE * draws.budget):
        warnings.warn(f"{where}: some runs are not at the fitted budget {draws.budget:g}; "
                      "the mixing law does not extrapolate in budget", stacklevel=3)
    log_l = log_loss_draws(draws, proportions(amounts, where))
    log_l = log_l[:, 0, :] if single else log_l
    return log_l if log else np.exp(log_l)


@dataclasses.dataclass(frozen=True)
class MixingFamily:
    """The exponential mixing law at one fixed budget (:class:`bayescale.laws.base.LawFamily`)."""

    name: str = LAW
    summary: str = "exponential law of mixture proportions at one fixed budget (Ye et al. 2024)"
    parameters: tuple[str, ...] = PARAMS
    likelihoods: tuple[str, ...] = ("normal",)
    methods: tuple[str, ...] = ("nuts",)
    dims: dict = dataclasses.field(default_factory=lambda: {**DIMS, "r_ref": ["source"]})
    coords: tuple[str, ...] = ("source", "target", "contrast")
    init_samples: int = 15
    amounts: bool = False  # a law of proportions: no prediction at other budgets, no allocation
    members: tuple[str, ...] = ()
    transfer: bool = False
    hierarchical_sites: tuple[str, ...] = ()
    dense_blocks: tuple[tuple[str, ...], ...] = ()

    def model_data(self, grid: xr.Dataset, where: str = "grid") -> tuple[MixingData, dict]:
        return mixing_data(grid, where)

    def with_centring(self, data: MixingData, centring: dict) -> MixingData:
        return data  # no hierarchical site to centre

    def unsuited(self, grid: xr.Dataset) -> str | None:
        return None  # model_data refuses a grid the law cannot read, with the reason

    def identification_warnings(self, data: MixingData, coords: dict, unit: str = "units") -> list[str]:
        return []  # mixing_data warns of budgets that are not one fixed budget

    def model(self, data: MixingData, **kwargs) -> None:
        mixing_law_model(data)

    def model_kwargs(self, likelihood: str) -> dict:
        return {}

    def constant_data(self, data: MixingData, coords: dict) -> dict:
        return {"r_ref": np.asarray(data.r_ref), "budget": np.float64(coords["budget"])}

    def posterior_attrs(self, coords: dict) -> dict:
        return {"budget": coords["budget"],
                "parameters": "c, k, sigma (target); t (source, target): L_j(r) = c_j + k_j exp(sum_i t_ij r_i), r_ref @ t = 0"}

    def validate(self, idata, source: str) -> None:
        post = idata["posterior"]
        for name in PARAMS:
            if name not in post.data_vars or not np.all(np.isfinite(post[name].values)):
                raise InputError(f"{source}: mixing-law posterior variable {name!r} is missing or non-finite")

    def draws(self, idata) -> MixingDraws:
        return mixing_draws(idata)

    def loss_draws(self, draws: MixingDraws, amounts, *, log: bool = False) -> np.ndarray:
        return amounts_loss_draws(draws, amounts, log=log)

    def example_grid(self, seed: int = 0) -> xr.Dataset:
        names = ["web", "code", "books"]
        t = np.array([[-1.0, 0.4, 0.2], [0.3, -1.5, 0.1], [0.2, 0.3, -0.8]])
        return simulate_mixing_grid([1.5, 0.8, 1.1], [0.9, 0.6, 0.5], t, [0.01, 0.01, 0.01], sources=names, targets=names,
                                    runs=40, holdout=8, seed=seed)

    def add_noise(self, log_loss: np.ndarray, draws: MixingDraws, rng: np.random.Generator, amounts=None) -> np.ndarray:
        # One fixed budget: nothing to extrapolate to, so ``amounts`` adds nothing.
        sigma = draws.sigma.reshape(draws.sigma.shape[:1] + (1,) * (log_loss.ndim - 2) + draws.sigma.shape[1:])
        return log_loss + sigma * rng.standard_normal(log_loss.shape)


MIXING = MixingFamily()


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
    log_l = np.asarray(mixing_log_loss(jnp.asarray(r), jnp.asarray(c), jnp.asarray(k), jnp.asarray(t)))
    loss = np.exp(log_l + sigma[None, :] * rng.standard_normal(log_l.shape))
    split = ["fit"] * (runs - holdout) + ["holdout"] * holdout
    return grids.make_grid(
        [f"mix{n:03d}" for n in range(runs)], sources, targets, r * budget, loss, split=split,
        attrs={"loss_name": "simulated", "data_unit": "units", "description": f"simulated mixing-law grid (seed {seed})",
               "true_c": c.tolist(), "true_k": k.tolist(), "true_t": t.ravel().tolist()},
    )
