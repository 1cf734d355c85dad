"""The transfer-law families (``transfer``, ``linear``, ``independent``): the hierarchical
Bayesian power law in effective data, how it reads a grid, its draws and predictions.

Everything the model needs from a grid is packed into :class:`ModelData` (arrays in
law units), so the model itself is a pure function of arrays and can be sampled,
prior-sampled or simulated from without touching xarray.

Parameterisation (chosen so NUTS sees a well-conditioned posterior):

- ``alpha_j``, ``sigma_j`` and ``x0_j`` are log-normal around shared means (partial
  pooling), written non-centred.
- Each target's curve is pinned where its data are: ``level_j``, the log of the law's loss at
  target j's reference allocation (the fit run of the most data that observes j), is
  ``Normal(log median loss_j, 1)``, and ``E_j = L_ref_j sigmoid(e_j)`` is a share of it, the logits
  ``e_j`` pooled across targets around ``mu_e ~ Normal(0, 1.5)`` (half in the prior median). ``A_j`` follows: the rest of ``L_ref_j`` at the
  reference's effective data. So ``E_j`` lies below the law's own loss, not below a noisy
  observed minimum, and the prior leans on the data only through a centre far wider than the
  data pin the level (see :data:`LEVEL_SD`).
- ``log T_ij = mu_T + tau_h h_i + tau_r r_j + tau_u u_ij`` off a target's own source:
  ``h_i`` is source i's hubness, ``r_j`` target j's receptivity. ``T_jj = 1``.
- ``beta_ij = sigmoid(mu_b + tau_b b_ij)`` in (0, 1).
- (``bend`` only) ``delta_j ~ HalfNormal(0.25)``, centred on no bend, and the break
  ``log xb_j ~ Normal(log of the largest fit budget, 1.5)``: a break may lie inside the fitted
  budgets (then the data place it) or beyond them, so intervals widen with distance past them.

The likelihood is on log loss: Normal or Student-t around the law plus a run effect
``sigma_run * z_run`` shared by every target of one run (one model, one seed: its errors on
all targets move together) where the fit runs replicate an allocation (seeds: the run effect is
told apart from the law's own misfit only by runs of the same data; without them it would soak
up the curve's shape, measured as r-hat ~2 on the OpenLM grids), with scale ``sqrt(sigma_j^2 + (se / loss)^2)`` where the grid
gives a per-run standard error (a ``shared`` ``loss_se`` is one offset per target that
the law absorbs; see :func:`bayescale.data.grid.cell_noise_se`). ``sigma_j`` is the misfit of a run
at the largest fit budget; a run of total data B has ``sigma_j (B / B_max)^-noise_slope``
(:data:`NOISE_SLOPE_SCALE`), and its run effect ``sigma_run (B / B_max)^-noise_slope``: seeds of one
allocation differ less the more a run trains (on the phantom grid of recipe 2 their spread of log
loss falls from ~0.06 at 2-16 volumes to ~0.02 at 32-144).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import xarray as xr

from bayescale.data import grid as grids
from bayescale.data import simulate
from bayescale.errors import InputError
from bayescale.laws import power as laws
from bayescale.laws.base import cell_coords, fit_runs, flat_draws, observed_cells, partially_centred_normal, self_mask_for
from bayescale.laws.draws import (  # noqa: F401 (re-exported: the draws of these families)
    BEND_PARAMS,
    CHUNK_BYTES,
    OPTIONAL_PARAMS,
    PAIR_PARAMS,
    TARGET_PARAMS,
    LawDraws,
    loss_draws,
)
from bayescale.laws.identification import identification_warnings
from bayescale.laws.noise import add_observation_noise, extrapolation_distance, with_extrapolation_error  # noqa: F401 (re-exported)
from bayescale.laws.noise import log_budgets, noise_slope_draws

LIKELIHOODS = ("normal", "student_t")
#: E_j = L_ref_j * sigmoid(e_j), L_ref_j the law's loss at target j's reference allocation, e_j ~
#: Normal(mu_e, tau_e), mu_e ~ Normal(*E_PRIOR), tau_e ~ HalfNormal(E_SHARE_SPREAD): half of L_ref in
#: the prior median.
#: E stays capped (without a cap E and A trade off in a second mode, r-hat ~2 on OpenLM grids,
#: measured), but by the law's own loss, not by the smallest *observed* loss (1.1 m_j until
#: 2026-12): a prior scaled by the data cannot be the one worlds are drawn from, and simulation-based
#: calibration of that prior put 81-82 % of true E and A inside 90 % intervals. A prior median of a
#: fifth cut the phantom grid's error (8.2 -> 7.1 %) but doubled OpenLM's (1.1 -> 4.0 % on rpj
#: d=512) whose floors sit near their losses: the prior stays neutral and the bending law is what
#: lets curves keep falling.
E_PRIOR = (0.0, 1.5)
E_SHARE_SPREAD = 1.0
#: level_j = log L_ref_j ~ Normal(log median observed loss_j, LEVEL_SD). The data pin a level to
#: a posterior sd of 0.01-0.05 (phantom, closed-loop and OpenLM grids), so a centre taken from the data moves
#: the posterior by a negligible amount while the prior stays one a world can be drawn from.
LEVEL_SD = 1.0
#: Sites drawn by partially_centred_normal (centring chosen per grid): per-target E share, alpha, x0,
#: sigma; hubness h, receptivity r, log T (u) and logit beta (b). The run effect stays non-centred.
HIERARCHICAL_SITES = ("z_e", "z_alpha", "z_x0", "z_sigma", "h", "r", "u", "b")
#: Scale of the HalfNormal prior on sigma_run, the sd of the run effect on log loss.
RUN_EFFECT_SCALE = 0.05
#: Scale of the HalfNormal prior on ``noise_slope`` (gamma): a fit run's misfit sd is
#: ``sigma_j (B_run / B_max)^-gamma``, B its total data, B_max the largest fit run's. Centred on a
#: constant sd; at the prior's 90 % point (0.82) a run at 1/32 of B_max has 17x the sd. It can only
#: fall with data: a run trained on less is further from the regime the law describes (OpenLM's
#: most under-trained runs lie off it on every target; a signed gamma did not converge where the
#: misfit rose with data, which is the law failing at the large end, for the error past the data to
#: carry). Measured with benchmarks/bench_openlm_ablation.py.
NOISE_SLOPE_SCALE = 0.5


@dataclasses.dataclass(frozen=True)
class ModelData:
    """Arrays the model is conditioned on (all NumPy; law units)."""

    d: np.ndarray  # (N, I) data per run and source, divided by D0
    obs_run: np.ndarray  # (M,) run index of each observed cell
    obs_target: np.ndarray  # (M,) target index of each observed cell
    log_loss: np.ndarray | None  # (M,) observed log loss (None: prior predictive)
    log_se: np.ndarray  # (M,) standard error of log loss (0 where unknown)
    self_mask: np.ndarray  # (I, J)
    loss_floor: np.ndarray  # (J,) smallest observed loss per target (the bootstrap's cap on E)
    loss_scale: np.ndarray  # (J,) typical observed loss per target (prior centre of the level)
    reference_d: np.ndarray  # (J, I) each target's reference allocation (law units): where its level is
    break_centre: np.ndarray  # () log of the largest fit budget (law units): prior centre of a bend
    log_budget: np.ndarray  # (N,) log(B_run / B_max) <= 0 of each run (B_max the largest fit run's): where its misfit sd is set
    run_effect: bool = False  # model a run effect: the fit runs replicate an allocation (static: shapes the model)
    # Centring in [0, 1] of each hierarchical site (HIERARCHICAL_SITES; absent: 0, non-centred),
    # chosen per grid by bayescale.inference.reparam; the draws of those sites are read with it.
    centring: dict | None = None


# A pytree, so a compiled sampler can take new data of the same shapes without
# recompiling (MCMC(jit_model_args=True), as simulation-based calibration does).
jax.tree_util.register_dataclass(ModelData, data_fields=[f.name for f in dataclasses.fields(ModelData) if f.name != "run_effect"],
                                 meta_fields=["run_effect"])


def transfer_law_model(data: ModelData, law: str = "transfer", likelihood: str = "normal"):
    n_sources, n_targets = data.self_mask.shape
    self_mask = jnp.asarray(data.self_mask)
    off_self = 1.0 - self_mask

    centring = data.centring or {}

    def hierarchical(name, loc, scale):
        return partially_centred_normal(name, loc, scale, centring.get(name, 0.0))

    def pooled_lognormal(name, loc, scale, tau_scale):
        """Per-target positive parameter, log-normal around a shared mean."""
        mu = numpyro.sample(f"mu_{name}", dist.Normal(loc, scale))
        tau = numpyro.sample(f"tau_{name}", dist.HalfNormal(tau_scale))
        with numpyro.plate("target_plate", n_targets):
            return jnp.exp(hierarchical(f"z_{name}", mu, tau))

    alpha = numpyro.deterministic("alpha", pooled_lognormal("alpha", jnp.log(0.35), 0.6, 0.4))
    x0 = numpyro.deterministic("x0", pooled_lognormal("x0", jnp.log(0.1), 1.0, 0.5))
    sigma = numpyro.deterministic("sigma", pooled_lognormal("sigma", jnp.log(0.03), 1.0, 0.5))
    # The logit of E's share of the level, pooled across targets: on the OpenLM grids (one corpus
    # scored on 8 validation sets) unpooled shares let E, A and alpha of each target wander
    # (C4 d=512: 7.7 % error and 36 divergences, against 2.8 % and none pooled).
    mu_e = numpyro.sample("mu_e", dist.Normal(*E_PRIOR))
    tau_e = numpyro.sample("tau_e", dist.HalfNormal(E_SHARE_SPREAD))
    with numpyro.plate("target_plate", n_targets):
        level = numpyro.sample("level", dist.Normal(jnp.log(jnp.asarray(data.loss_scale)), LEVEL_SD))
        e = hierarchical("z_e", mu_e, tau_e)
    if law == "bend":
        with numpyro.plate("target_plate", n_targets):
            delta = numpyro.sample("delta", dist.HalfNormal(0.25))
            log_xb = numpyro.sample("log_xb", dist.Normal(jnp.asarray(data.break_centre), 1.5))
    else:
        delta, log_xb = 0.0, 0.0
    kappa = None
    if law == "interference":
        # kappa_ij: loss added to target j per law unit of source i's data, as a share rho_ij of
        # the target's typical loss per largest fit budget; rho ~ HalfNormal(tau), centred on none.
        tau_rho = numpyro.sample("tau_rho", dist.HalfNormal(0.05))
        k = numpyro.sample("k", dist.HalfNormal(1.0).expand([n_sources, n_targets]).to_event(2))
        per_unit = jnp.asarray(data.loss_scale)[None, :] * jnp.exp(-jnp.asarray(data.break_centre))
        kappa = numpyro.deterministic("kappa", off_self * tau_rho * k * per_unit)

    if law == "independent":
        T = self_mask
        beta = jnp.ones((n_sources, n_targets))
    else:
        mu_T = numpyro.sample("mu_T", dist.Normal(jnp.log(0.1), 1.5))
        tau_h = numpyro.sample("tau_h", dist.HalfNormal(1.0))
        tau_r = numpyro.sample("tau_r", dist.HalfNormal(1.0))
        tau_u = numpyro.sample("tau_u", dist.HalfNormal(0.5))
        with numpyro.plate("source_plate", n_sources):
            hubness = hierarchical("h", 0.0, tau_h)
        with numpyro.plate("target_plate", n_targets):
            receptivity = hierarchical("r", 0.0, tau_r)
        with numpyro.plate("pair_source", n_sources, dim=-2), numpyro.plate("pair_target", n_targets, dim=-1):
            log_T = hierarchical("u", mu_T + hubness[:, None] + receptivity[None, :], tau_u)
        T = self_mask + off_self * jnp.exp(log_T)
        numpyro.deterministic("hubness", hubness)
        numpyro.deterministic("receptivity", receptivity)
        if law == "linear":
            beta = jnp.ones((n_sources, n_targets))
        else:
            mu_b = numpyro.sample("mu_beta", dist.Normal(1.0, 1.0))
            tau_b = numpyro.sample("tau_beta", dist.HalfNormal(0.5))
            with numpyro.plate("pair_source", n_sources, dim=-2), numpyro.plate("pair_target", n_targets, dim=-1):
                logit_beta = hierarchical("b", mu_b, tau_b)
            beta = self_mask + off_self * jax_sigmoid(logit_beta)
    T = numpyro.deterministic("T", T)
    beta = numpyro.deterministic("beta", beta)
    # E and A from the level at each target's reference allocation: E a share of it, A the rest
    # divided by the reducible curve there (log(1 - sigmoid(e)) = -softplus(e)).
    reference_x = jnp.diagonal(laws.effective_data(jnp.asarray(data.reference_d), T, beta, x0, self_mask))
    E = numpyro.deterministic("E", jnp.exp(level - jax.nn.softplus(-e)))
    A = numpyro.deterministic("A", jnp.exp(level - jax.nn.softplus(e) - laws.log_reducible(jnp.log(reference_x), 0.0, alpha, delta, log_xb)))

    log_mean = laws.log_loss(jnp.asarray(data.d), E, A, alpha, x0, T, beta, self_mask, delta, log_xb, kappa)
    loc = log_mean[data.obs_run, data.obs_target]
    # The law's misfit and the run effect fall with a run's data (NOISE_SLOPE_SCALE): sigma_j and
    # sigma_run are a run's at the largest fit budget.
    noise_slope = numpyro.sample("noise_slope", dist.HalfNormal(NOISE_SLOPE_SCALE))
    if data.run_effect and n_targets > 1:
        # One run's losses on every target come from one model and one seed.
        sigma_run = numpyro.sample("sigma_run", dist.HalfNormal(RUN_EFFECT_SCALE))
        with numpyro.plate("run_plate", data.d.shape[0]):
            z_run = numpyro.sample("z_run", dist.Normal(0.0, 1.0))
        loc = loc + sigma_run * (jnp.exp(-noise_slope * jnp.asarray(data.log_budget)) * z_run)[data.obs_run]
    misfit = sigma[data.obs_target] * jnp.exp(-noise_slope * jnp.asarray(data.log_budget)[data.obs_run])
    scale = jnp.sqrt(misfit ** 2 + jnp.asarray(data.log_se) ** 2)
    if likelihood == "student_t":
        nu = numpyro.sample("nu", dist.Gamma(2.0, 0.1))
        noise = dist.StudentT(nu, loc, scale)
    else:
        noise = dist.Normal(loc, scale)
    with numpyro.plate("obs", loc.shape[0]):
        numpyro.sample("log_loss", noise, obs=None if data.log_loss is None else jnp.asarray(data.log_loss))


def jax_sigmoid(x):
    return 1.0 / (1.0 + jnp.exp(-x))


# ---------------------------------------------------------------------------
# reading a grid


def model_data(grid: xr.Dataset, where: str = "grid") -> tuple[ModelData, dict]:
    """Turn the fit runs of a grid into model arrays (law units) and the coordinates to label them.

    ``where`` names the grid (its file) in error messages."""
    runs, loss = fit_runs(grid, where)
    scale = grids.data_scale(runs, where)
    sources = [str(s) for s in runs["source"].values]
    targets = [str(t) for t in runs["target"].values]
    obs_run, obs_target, observed, log_se = observed_cells(runs, loss)
    totals = runs["data"].sum("source").values  # data_scale has checked that one is positive
    data = ModelData(
        d=runs["data"].transpose("run", "source").values / scale,
        obs_run=obs_run,
        obs_target=obs_target,
        log_loss=np.log(observed),
        log_se=log_se,
        self_mask=self_mask_for(sources, targets),
        loss_floor=loss_scales(loss)[0],
        loss_scale=loss_scales(loss)[1],
        reference_d=reference_allocations(runs["data"].transpose("run", "source").values / scale, obs_run, obs_target,
                                          self_mask_for(sources, targets)),
        break_centre=break_centre(runs["data"].values / scale),
        log_budget=log_budgets(totals, totals),
        run_effect=replicated(runs["data"].transpose("run", "source").values),
    )
    coords = {"source": sources, "target": targets, "run": runs["run"].values.astype(str),
              **cell_coords(runs, targets, obs_run, obs_target), "data_scale": scale, "run_effect": data.run_effect,
              "noise_reach": float(totals.max()), "noise_low": float(totals[totals > 0].min())}
    return data, coords


def replicated(d: np.ndarray) -> bool:
    """Whether two runs of ``d`` (N, I) have the same data (replicates, e.g. seeds)."""
    return bool(np.unique(np.round(np.asarray(d, dtype=np.float64), 12), axis=0).shape[0] < len(d))


def loss_scales(loss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(floor, scale) of the priors per target from (run, target) losses: the smallest observed
    loss (scale of E) and the median (scale of A)."""
    return np.nanmin(loss, axis=0), np.nanmedian(loss, axis=0)


def reference_allocations(d: np.ndarray, obs_run: np.ndarray, obs_target: np.ndarray, self_mask: np.ndarray) -> np.ndarray:
    """(J, I): per target, the run observing it with the most data (ties: the most of its own),
    where its level is defined. A design choice, not a loss: the prior stays one a world can be
    drawn from, and the law's loss there is what the target's data pin best."""
    d = np.asarray(d, dtype=np.float64)
    total, own = d.sum(axis=1), d @ np.asarray(self_mask, dtype=np.float64)
    out = np.zeros((self_mask.shape[1], d.shape[1]))
    for j in range(self_mask.shape[1]):
        runs = np.unique(obs_run[obs_target == j])
        if runs.size:
            out[j] = d[runs[np.lexsort((-own[runs, j], -total[runs]))[0]]]
    return out


def break_centre(d: np.ndarray) -> np.ndarray:
    """Log of the largest total data of the runs ``d`` (N, I) in law units: where a bend's prior is centred."""
    budgets = np.asarray(d, dtype=np.float64).sum(axis=1)
    return np.asarray(np.log(budgets.max()) if (budgets > 0).any() else 0.0)


DIMS = {
    "E": ["target"], "A": ["target"], "alpha": ["target"], "x0": ["target"], "sigma": ["target"],
    "z_e": ["target"], "level": ["target"], "z_alpha": ["target"], "z_x0": ["target"], "z_sigma": ["target"],
    "r": ["target"], "receptivity": ["target"], "h": ["source"], "hubness": ["source"],
    "delta": ["target"], "log_xb": ["target"], "z_run": ["run"], "kappa": ["source", "target"], "k": ["source", "target"],
    "T": ["source", "target"], "beta": ["source", "target"], "u": ["source", "target"], "b": ["source", "target"],
    "log_loss": ["obs"],
}


# ---------------------------------------------------------------------------
# the families


@dataclasses.dataclass(frozen=True)
class TransferFamily:
    """A transfer-law family (:class:`bayescale.laws.base.LawFamily`): ``transfer`` (T and beta
    free), ``linear`` (beta = 1) or ``independent`` (T = 0, transfer-unaware)."""

    name: str
    summary: str
    parameters: tuple[str, ...] = TARGET_PARAMS + PAIR_PARAMS + ("nu", "sigma_run", "noise_slope")
    likelihoods: tuple[str, ...] = LIKELIHOODS
    methods: tuple[str, ...] = ("nuts", "svi")
    dims: dict = dataclasses.field(default_factory=lambda: dict(DIMS))
    coords: tuple[str, ...] = ("source", "target", "run")
    init_samples: int = 25
    amounts: bool = True
    members: tuple[str, ...] = ()
    hierarchical_sites: tuple[str, ...] = HIERARCHICAL_SITES
    # A target's level E (e), scale A and exponent alpha and its offset x0 are tied by the data
    # along a ridge (a fixed loss at the fitted amounts): the stiffest directions of the
    # posterior, measured on RegMix (Hessian eigenvalues ~1e4 against ~1 for the rest under a
    # diagonal mass matrix). A dense block over them lets NUTS take steps 3-10x larger. A second
    # block over mu_T, h and r (whose sum the data pin) cut a K = 8 world's condition number under
    # the mass matrix from 970 to 118, yet over 4 seeds not the cost: median 330 against 380 steps
    # per draw, median bulk ESS 199 against 196 in 4 x 300 draws. The cost left is not linear.
    dense_blocks: tuple[tuple[str, ...], ...] = (("z_e", "level", "z_alpha", "z_x0"),)

    @property
    def transfer(self) -> bool:
        return self.name != "independent"

    def unsuited(self, grid: xr.Dataset) -> str | None:
        """Why this family cannot describe ``grid`` (a stack leaves it out), or None.

        ``independent`` sees only a target's own data: on a grid where no target is a source
        (one training corpus scored on other validation sets, as OpenLM's) it predicts flat curves."""
        if not self.transfer and not set(map(str, grid["target"].values)) & set(map(str, grid["source"].values)):
            return "no target is a source, so each target would see no data of its own"
        return None

    def model_data(self, grid: xr.Dataset, where: str = "grid") -> tuple[ModelData, dict]:
        return model_data(grid, where)

    def with_centring(self, data: ModelData, centring: dict) -> ModelData:
        return dataclasses.replace(data, centring={k: np.asarray(v, dtype=np.float32) for k, v in centring.items()} or None)

    def identification_warnings(self, data: ModelData, coords: dict, unit: str = "units") -> list[str]:
        return identification_warnings(data, coords, self.name, unit)

    def model(self, data: ModelData, **kwargs) -> None:
        transfer_law_model(data, **kwargs)

    def model_kwargs(self, likelihood: str) -> dict:
        return {"law": self.name, "likelihood": likelihood}

    def constant_data(self, data: ModelData, coords: dict) -> dict:
        # The fit runs' largest and smallest positive total data (raw units): where a new run's
        # misfit sd is read (noise_slope; bayescale.laws.noise).
        # run_effect_falls: the run effect falls with a run's data like the misfit (posteriors since
        # 2026-12-07; before, a constant sd).
        return {"data_scale": np.float64(coords["data_scale"]), "noise_reach": np.float64(coords["noise_reach"]),
                "noise_low": np.float64(coords["noise_low"]), "run_effect_falls": np.float64(1.0)}

    def posterior_attrs(self, coords: dict) -> dict:
        # run_effect: 1 where the fit runs replicate an allocation and a run effect was modelled
        return {"data_scale": float(coords["data_scale"]), "run_effect": int(coords.get("run_effect", False))}

    def validate(self, idata, source: str) -> None:
        post = idata["posterior"]
        for name in TARGET_PARAMS:
            if name not in post.data_vars or "target" not in post[name].dims:
                raise InputError(f"{source}: posterior variable {name!r} with dim 'target' is missing")
        for name in PAIR_PARAMS:
            if name not in post.data_vars or set(post[name].dims) != {"chain", "draw", "source", "target"}:
                raise InputError(f"{source}: posterior variable {name!r} with dims (source, target) is missing")
        if "data_scale" not in idata["constant_data"].data_vars:
            raise InputError(f"{source}: constant_data has no 'data_scale'")
        for name in BEND_PARAMS:
            if name in post.data_vars and set(post[name].dims) != {"chain", "draw", "target"}:
                raise InputError(f"{source}: posterior variable {name!r} must have dims (chain, draw, target)")
        if "kappa" in post.data_vars and (set(post["kappa"].dims) != {"chain", "draw", "source", "target"} or np.any(post["kappa"].values < 0)):
            raise InputError(f"{source}: posterior variable 'kappa' must have dims (source, target) and draws >= 0")
        if "slope_error" in post.data_vars:
            if set(post["slope_error"].dims) != {"chain", "draw", "target"}:
                raise InputError(f"{source}: posterior variable 'slope_error' must have dims (chain, draw, target)")
            reach = post.attrs.get("extrapolation_reach")
            if reach is None or not np.isfinite(float(reach)) or float(reach) <= 0:
                raise InputError(f"{source}: posterior variable 'slope_error' needs the attr 'extrapolation_reach' > 0 "
                                 "(the fit runs' largest total data)")
        if "noise_slope" in post.data_vars:
            const = idata["constant_data"]
            for name in ("noise_reach", "noise_low"):
                value = float(const[name].values) if name in const.data_vars else np.nan
                if not np.isfinite(value) or value <= 0:
                    raise InputError(f"{source}: posterior variable 'noise_slope' needs constant_data {name!r} > 0 "
                                     "(the fit runs' largest and smallest total data)")
        if "delta" in post.data_vars and np.any(post["delta"].values < 0):
            raise InputError(f"{source}: posterior variable 'delta' holds negative draws (a bend must steepen the law)")
        for name in TARGET_PARAMS + PAIR_PARAMS + tuple(n for n in OPTIONAL_PARAMS if n in post.data_vars):
            if not np.all(np.isfinite(post[name].values)):
                raise InputError(f"{source}: posterior variable {name!r} holds non-finite draws")

    def draws(self, idata) -> LawDraws:
        post = idata["posterior"].to_dataset()
        sources = tuple(str(s) for s in post["source"].values)
        targets = tuple(str(t) for t in post["target"].values)
        params = {name: flat_draws(post, name, ("target",)) for name in TARGET_PARAMS}
        params.update({name: flat_draws(post, name, ("source", "target")) for name in PAIR_PARAMS})
        return LawDraws(
            sources=sources,
            targets=targets,
            self_mask=self_mask_for(sources, targets),
            data_scale=float(idata["constant_data"].to_dataset()["data_scale"].values),
            law=str(post.attrs.get("law", idata.attrs.get("law", "transfer"))),
            likelihood=str(idata.attrs.get("likelihood", "normal")),
            nu=flat_draws(post, "nu", ()) if "nu" in post else None,
            sigma_run=flat_draws(post, "sigma_run", ()) if "sigma_run" in post else None,
            delta=flat_draws(post, "delta", ("target",)) if "delta" in post else None,
            log_xb=flat_draws(post, "log_xb", ("target",)) if "log_xb" in post else None,
            kappa=flat_draws(post, "kappa", ("source", "target")) if "kappa" in post else None,
            slope_error=flat_draws(post, "slope_error", ("target",)) if "slope_error" in post else None,
            reach=float(post.attrs["extrapolation_reach"]) if "slope_error" in post else None,
            **noise_slope_draws(post, idata),
            **params,
        )

    def loss_draws(self, draws: LawDraws, amounts, *, log: bool = False) -> np.ndarray:
        return loss_draws(draws, amounts, log=log)

    def add_noise(self, log_loss: np.ndarray, draws: LawDraws, rng: np.random.Generator, amounts=None) -> np.ndarray:
        return add_observation_noise(log_loss, draws, rng, amounts)

    def example_grid(self, seed: int = 0) -> xr.Dataset:
        world = simulate.draw_world(3, seed=seed)
        if not self.transfer:
            world = dataclasses.replace(world, T=np.eye(3))
        elif self.name == "linear":
            world = dataclasses.replace(world, beta=np.ones_like(world.beta))
        return simulate.simulate_grid(world, seed=seed)


@dataclasses.dataclass(frozen=True)
class BendFamily(TransferFamily):
    """The transfer law with a smooth break per target (``delta``, ``log_xb``): curves may steepen."""

    parameters: tuple[str, ...] = TARGET_PARAMS + PAIR_PARAMS + BEND_PARAMS + ("nu", "sigma_run", "noise_slope")

    def example_grid(self, seed: int = 0) -> xr.Dataset:
        world = simulate.draw_world(3, seed=seed)
        return simulate.simulate_grid(dataclasses.replace(world, broken=(1.0, 2.0)), seed=seed)


TRANSFER = TransferFamily("transfer", "hierarchical power law in effective data with asymmetric transfer T and exponents beta")
LINEAR = TransferFamily("linear", "the transfer law with beta = 1 (a linear exchange rate between domains)")
INDEPENDENT = TransferFamily("independent", "each target sees only its own data (T = 0, transfer-unaware)")
@dataclasses.dataclass(frozen=True)
class InterferenceFamily(TransferFamily):
    """The transfer law in which other domains' data may also raise a target's loss (``kappa``)."""

    parameters: tuple[str, ...] = TARGET_PARAMS + PAIR_PARAMS + ("kappa", "nu", "sigma_run", "noise_slope")

    def example_grid(self, seed: int = 0) -> xr.Dataset:
        world = simulate.draw_world(3, seed=seed)
        kappa = np.zeros((3, 3))
        kappa[0, 2] = 0.01  # the hub's data crowd out the island
        return simulate.simulate_grid(dataclasses.replace(world, interference=kappa), seed=seed)


@dataclasses.dataclass(frozen=True)
class StackFamily(BendFamily):
    """Bayesian stacking of transfer-law families: draws of each member in proportion to its
    leave-future-out weight (:mod:`bayescale.inference.stacking`); read like any transfer law."""

    # Not interference: its linear term extrapolates badly (measured on the phantom grid: 20.5 %
    # held-out error, 58 % of cells in 90 % intervals), yet it won the leave-future-out score
    # there (weight 1.0) and dragged the stack down with it.
    members: tuple[str, ...] = ("transfer", "linear", "independent", "bend")
    parameters: tuple[str, ...] = TARGET_PARAMS + PAIR_PARAMS + BEND_PARAMS + ("kappa", "sigma_run", "noise_slope")
    methods: tuple[str, ...] = ("nuts",)
    likelihoods: tuple[str, ...] = ("normal",)

    def model(self, data: ModelData, **kwargs) -> None:
        raise InputError(f"law: the {self.name} law has no model of its own; fit stacks its members "
                         f"({', '.join(self.members)})", parameter="law")

    def example_grid(self, seed: int = 0) -> xr.Dataset:
        return TRANSFER.example_grid(seed)


BEND = BendFamily("bend", "the transfer law whose curves may steepen past a smooth break (delta >= 0, centred on none)")
INTERFERENCE = InterferenceFamily("interference", "the transfer law in which other domains' data may also raise a target's loss "
                                  "(kappa >= 0, linear in d, centred on none)")
STACK = StackFamily("stack", "transfer, linear, independent and bend mixed by Bayesian stacking on leave-future-out scores")
