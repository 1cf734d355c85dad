"""The usual non-Bayesian alternative: a Huber-loss point fit of the law and a bootstrap.

This module is long because the fit is written out by hand for speed (a forward pass with
its hand-written gradient, batched BFGS over resamples), as the notes below explain.

This is the method of the Chinchilla scaling-law fits (Hoffmann et al. 2022, and the
replication of Besiroglu et al. 2024): minimise the Huber loss (δ = 1e-3) of the residuals of
*log* loss with a quasi-Newton method from a small grid of initialisations, keep the best, and
put intervals on the fit by refitting to bootstrap resamples. It fits the same law
(:func:`bayescale.laws.power.log_loss`, law units d = D / D0 with D0 = ``grid.data_scale`` of the
fit runs) to the same cells as :func:`bayescale.inference.fit.fit`, so the two can be compared on the
same held-out runs (``benchmarks/bench_fit.py``).

How it is computed:

- **Unconstrained parameters.** Per target j: ``E_j = floor_j * sigmoid(e_j)`` (floor = the
  smallest loss observed on j: the irreducible loss lies below every observation), ``A_j = scale_j * exp(a_j)`` (scale =
  the typical loss of j), ``alpha_j = exp(.)``, ``x0_j = exp(.)``, off a target's own source
  ``T_ij = exp(t_ij)`` and ``beta_ij = sigmoid(b_ij)``; each kept in [-25, 25] so that
  parameters the data do not pin down cannot underflow to exactly 0.
- **One small problem per target.** A target's loss depends only on its own parameters
  (E_j, A_j, alpha_j, x0_j and column j of T and beta), so the objective is a sum of
  independent per-target problems of 4 + 2I parameters (the entries of a target's own source
  are inert). Each is solved on its own, and the best initialisation is kept per target.
- **Optimiser.** BFGS with a dense inverse Hessian (at 4 + 2I parameters per problem L-BFGS's
  memory saving buys nothing), written in JAX with a fixed number of iterations per block and
  no data-dependent control flow, so one compiled kernel runs thousands of problems at once
  under :func:`jax.vmap` (targets × initialisations, targets × bootstrap replicates). Its
  line search tries a ladder of step lengths at once and keeps the best. Between blocks, the
  problems that stopped improving are dropped, so a batch costs the mean number of
  iterations, not the worst. Objective and gradient are written out by hand (measured: half
  the time of reverse mode through :func:`bayescale.laws.power.log_loss`); a test checks both
  against that function and :func:`jax.grad`. Batches are split across the host's XLA devices. Float64 throughout:
  with δ = 1e-3 float32 stalls measurably above the optimum.
- **Bootstrap.** ``resample="runs"`` (the default) draws whole runs with replacement: the
  losses of one run on its targets share that run's noise, so resampling cells would treat
  correlated cells as independent and make the intervals too narrow. ``resample="cells"``
  draws observed (run, target) cells instead. A resample is a vector of multiplicities, i.e.
  weights on the same arrays, so all refits have one shape. Each refit starts from the
  full-data optimum and its BFGS inverse Hessian, and runs until it stops improving.
- **Noise.** Each replicate's ``sigma_j`` is its residual standard deviation on the resampled
  cells, ``sqrt(sum w r^2 / (sum w - p_j))`` with p_j the target's free parameters.

What the intervals mean: the spread of the bootstrap draws is the sampling variability of the
*fitted curve* (plus, where predictions add ``sigma``, the residual noise). It is not a
posterior: there are no priors and no pooling across targets, parameters the data do not
identify (a transfer that never shows, beta where T is near 0) are wherever the optimiser
left them, and resamples of a small grid understate the uncertainty of an extrapolation.
The result is a :class:`bayescale.inference.posterior.LawDraws` with one draw per replicate, so
:mod:`bayescale.evaluate.predict` and :mod:`bayescale.evaluate.check` work on it unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from bayescale import laws as registry
from bayescale.data import grid as grids
from bayescale.errors import InputError
from bayescale.laws import power as laws
from bayescale.laws.transfer import LawDraws, TransferFamily, model_data

DELTA = 1e-3  # Huber threshold on log-loss residuals (Hoffmann et al. 2022; Besiroglu et al. 2024)
RESAMPLE = ("runs", "cells")
# The initialisation grid, per target (product of the three): own scaling rate, E as a
# share of the smallest observed loss, and the off-diagonal transfer coefficient. A is set
# from each so the initial curve passes near the target's typical loss; x0 = 0.1, beta = 0.7.
INIT_ALPHA = (0.2, 0.4, 0.8)
INIT_E_SHARE = (0.25, 0.75)
INIT_T = (0.03, 0.3)
INIT_X0 = 0.1
INIT_BETA = 0.7
# BFGS: step lengths tried at once along the search direction, the largest change of any
# unconstrained parameter in one step, iterations per block, and the relative improvement
# over a block below which a problem counts as converged and is dropped.
STEPS = (4.0, 1.0, 0.25, 0.0625, 0.015, 0.004, 0.001)
MAX_STEP = 3.0
# Every unconstrained parameter stays in [-BOUND, BOUND]: a parameter the data do not pin down
# (beta or T of a transfer that never shows, x0) would otherwise drift until beta, T or x0
# underflow to exactly 0 and leave the law's contract (beta in (0, 1], T >= 0, x0 > 0).
BOUND = 25.0
BLOCK = 50
RTOL = 1e-9
BUCKETS = (32, 128, 512, 2048)  # batch sizes compiled for (a batch is padded up to one)


@dataclasses.dataclass(frozen=True)
class PointFit:
    """The full-data Huber fit.

    ``draws`` holds the estimate as a one-draw :class:`LawDraws`. ``objective`` and
    ``initial_objective`` are the per-target objective at the optimum and at the kept
    initialisation: the mean Huber loss of the target's observed cells divided by delta
    (= mean |r| - delta / 2 when every residual exceeds delta). ``params`` are the
    unconstrained parameters per target, ``inverse_hessian`` BFGS's estimate at the optimum
    (refits start from both), ``iterations`` the BFGS iterations each target's kept start took.
    """

    draws: LawDraws
    objective: np.ndarray  # (J,)
    initial_objective: np.ndarray  # (J,)
    params: np.ndarray  # (J, P)
    inverse_hessian: np.ndarray  # (J, P, P)
    iterations: np.ndarray  # (J,)


@dataclasses.dataclass(frozen=True)
class FitProblem:
    """The grid's fit runs as dense per-target arrays (law units)."""

    d: np.ndarray  # (N, I)
    log_loss: np.ndarray  # (N, J), 0 where not observed
    observed: np.ndarray  # (N, J) 1.0 where observed
    floor: np.ndarray  # (J,)
    scale: np.ndarray  # (J,)
    self_mask: np.ndarray  # (I, J)
    sources: tuple[str, ...]
    targets: tuple[str, ...]
    data_scale: float


def point_fit(grid: xr.Dataset, *, law: str = "transfer", delta: float = DELTA, max_iterations: int = 2000) -> PointFit:
    """Fit the law to the grid's fit runs by minimising the Huber loss of log-loss residuals.

    Every target is fitted from each of the ``len(INIT_ALPHA) * len(INIT_E_SHARE) *
    len(INIT_T)`` initialisations (at most ``max_iterations`` BFGS iterations each) and the
    one with the lowest objective is kept.
    """
    _check_law(law)
    _check_delta(delta)
    _check_positive_int("max_iterations", max_iterations)
    problem = fit_problem(grid)
    n_targets = len(problem.targets)
    starts = initial_params(problem, law)  # (K, J, P)
    k = starts.shape[0]
    weights = np.broadcast_to(problem.observed.T, (k, n_targets, problem.d.shape[0]))
    result = _minimise(
        problem, law, delta, starts.reshape(k * n_targets, -1), weights.reshape(k * n_targets, -1),
        np.tile(np.arange(n_targets), k), max_iterations=max_iterations,
    )
    fun = np.where(np.isfinite(result["f"]), result["f"], np.inf).reshape(k, n_targets)
    best = np.argmin(fun, axis=0)
    pick = best * n_targets + np.arange(n_targets)  # flat index of (best start, target)
    params = result["x"][pick]
    if not np.isfinite(params).all() or not np.isfinite(fun[best, np.arange(n_targets)]).all():
        raise InputError("the Huber fit failed (non-finite objective) from every initialisation")
    sigma = _residual_sigma(problem, law, params[None], problem.observed.T[None])[0]
    return PointFit(
        draws=_law_draws(problem, law, params[None], sigma[None]),
        objective=result["f"][pick],
        initial_objective=result["f0"][pick],
        params=params,
        inverse_hessian=result["H"][pick],
        iterations=result["iterations"][pick],
    )


def bootstrap_fit(
    grid: xr.Dataset,
    *,
    resamples: int = 1000,
    resample: str = "runs",
    law: str = "transfer",
    delta: float = DELTA,
    seed: int = 0,
    max_iterations: int = 2000,
    point: PointFit | None = None,
) -> LawDraws:
    """Bootstrap the Huber fit: ``resamples`` refits, each to a resample of the fit runs
    (``resample="runs"``) or of the observed cells (``"cells"``), started from the full-data
    optimum (``point``, computed with :func:`point_fit` if not given).

    Returns :class:`LawDraws` with one draw per replicate: intervals of the fitted curve under
    resampling (plus the residual noise ``sigma`` where predictions add it), not a posterior.
    """
    _check_law(law)
    _check_delta(delta)
    _check_positive_int("resamples", resamples)
    _check_positive_int("max_iterations", max_iterations)
    if resample not in RESAMPLE:
        raise InputError(f"resample must be one of {', '.join(RESAMPLE)}, got {resample!r}", parameter="resample")
    problem = fit_problem(grid)
    if point is None:
        point = point_fit(grid, law=law, delta=delta)
    elif point.draws.targets != problem.targets or point.draws.sources != problem.sources or point.draws.law != law:
        raise InputError("point: the point fit was made on another grid or with another law")
    weights = resample_weights(problem.observed, resamples, resample, np.random.default_rng(seed))  # (B, J, N)
    n_targets, n_params = point.params.shape
    result = _minimise(
        problem, law, delta,
        np.broadcast_to(point.params, (resamples, n_targets, n_params)).reshape(-1, n_params),
        weights.reshape(resamples * n_targets, -1),
        np.tile(np.arange(n_targets), resamples),
        inverse_hessian=np.broadcast_to(point.inverse_hessian, (resamples, n_targets, n_params, n_params)).reshape(-1, n_params, n_params),
        max_iterations=max_iterations,
    )
    params = result["x"].reshape(resamples, n_targets, n_params)
    # A refit that broke (non-finite) keeps the full-data optimum for that target.
    broken = ~np.isfinite(params).all(axis=-1)
    params = np.where(broken[..., None], point.params[None], params)
    sigma = _residual_sigma(problem, law, params, weights)
    return _law_draws(problem, law, params, sigma)


def resample_weights(observed: np.ndarray, resamples: int, resample: str, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap multiplicities (B, J, N) of the (run, target) cells; 0 where not observed.

    ``runs``: every replicate draws N runs with replacement and a run's count weights all of
    its cells. ``cells``: every replicate draws, per target, as many observed cells as it has.
    """
    n_runs, n_targets = observed.shape
    if resample == "runs":
        counts = rng.multinomial(n_runs, np.full(n_runs, 1.0 / n_runs), size=resamples).astype(np.float64)  # (B, N)
        return counts[:, None, :] * observed.T[None]
    weights = np.zeros((resamples, n_targets, n_runs))
    for j in range(n_targets):
        cells = np.flatnonzero(observed[:, j])
        weights[:, j, cells] = rng.multinomial(cells.size, np.full(cells.size, 1.0 / cells.size), size=resamples)
    return weights


def huber(residual, delta: float = DELTA):
    """Huber loss: r^2 / 2 where |r| <= delta, delta (|r| - delta / 2) beyond."""
    a = jnp.abs(residual)
    return jnp.where(a <= delta, 0.5 * residual**2, delta * (a - 0.5 * delta))


# ---------------------------------------------------------------------------------------------
# the problem


def _check_law(law: str) -> None:
    """The bootstrap point-fits the transfer-law families (their parameterisation is written out below)."""
    if not isinstance(registry.get(law), TransferFamily):
        transfer_laws = [name for name, f in registry.FAMILIES.items() if isinstance(f, TransferFamily)]
        raise InputError(f"law: the bootstrap fits the transfer laws ({', '.join(transfer_laws)}), not {law!r}", parameter="law")


def _check_delta(delta):
    if not np.isfinite(delta) or delta <= 0:
        raise InputError(f"delta must be a positive number, got {delta}", parameter="delta")


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name} must be an integer >= 1, got {value!r}", parameter=name)


def fit_problem(grid: xr.Dataset) -> FitProblem:
    """The grid's fit runs as the dense per-target arrays the Huber fit works on."""
    if not isinstance(grid, xr.Dataset) or "run" not in grid.dims or grid.sizes["run"] == 0:
        raise InputError("grid has no runs to fit the law to")
    data, coords = model_data(grids.validate_grid(grid))
    n_runs, n_targets = data.d.shape[0], data.self_mask.shape[1]
    log_loss = np.zeros((n_runs, n_targets))
    observed = np.zeros((n_runs, n_targets))
    log_loss[data.obs_run, data.obs_target] = data.log_loss
    observed[data.obs_run, data.obs_target] = 1.0
    return FitProblem(
        d=np.asarray(data.d, np.float64),
        log_loss=log_loss,
        observed=observed,
        floor=np.asarray(data.loss_floor, np.float64),
        scale=np.asarray(data.loss_scale, np.float64),
        self_mask=np.asarray(data.self_mask, np.float64),
        sources=tuple(coords["source"]),
        targets=tuple(coords["target"]),
        data_scale=float(coords["data_scale"]),
    )


def _n_free(problem: FitProblem, law: str) -> np.ndarray:
    """Free parameters per target: E, A, alpha, x0 and, per other source, T (and beta)."""
    others = (1.0 - problem.self_mask).sum(axis=0)
    per_source = {"transfer": 2, "linear": 1, "independent": 0}[law]
    return 4 + per_source * others


def _logit(p):
    return np.log(p) - np.log1p(-p)


def initial_params(problem: FitProblem, law: str) -> np.ndarray:
    """(K, J, P) unconstrained starting points: the product grid of INIT_* per target."""
    n_sources, n_targets = problem.self_mask.shape
    starts = []
    for alpha, share, t in itertools.product(INIT_ALPHA, INIT_E_SHARE, INIT_T):
        E = share * problem.floor
        # Initial curve through the typical loss at d = 1 of the target's own data.
        A = np.maximum(problem.scale - E, 0.1 * problem.scale) * (INIT_X0 + 1.0) ** alpha
        head = np.stack(
            [np.full(n_targets, _logit(share)), np.log(A / problem.scale), np.full(n_targets, np.log(alpha)), np.full(n_targets, np.log(INIT_X0))],
            axis=1,
        )
        log_T = np.full((n_targets, n_sources), np.log(t))
        b = np.full((n_targets, n_sources), _logit(INIT_BETA))
        starts.append(np.concatenate([head, log_T, b], axis=1))
    return np.stack(starts)


def _unpack(theta, floor, scale, self_col, law):
    """One target's unconstrained vector -> E, A, alpha, x0 (scalars) and its T, beta columns (I,)."""
    n_sources = self_col.shape[0]
    off = 1.0 - self_col
    E = floor * jax.nn.sigmoid(theta[0])
    A = scale * jnp.exp(theta[1])
    alpha = jnp.exp(theta[2])
    x0 = jnp.exp(theta[3])
    T = self_col if law == "independent" else self_col + off * jnp.exp(theta[4 : 4 + n_sources])
    if law == "transfer":
        beta = self_col + off * jax.nn.sigmoid(theta[4 + n_sources : 4 + 2 * n_sources])
    else:
        beta = jnp.ones(n_sources, theta.dtype)
    return E, A, alpha, x0, T, beta


def _predict_log(theta, d, floor, scale, self_col, law):
    """Log loss (N,) of one target at the runs d (N, I), by :func:`bayescale.laws.power.log_loss` itself."""
    E, A, alpha, x0, T, beta = _unpack(theta, floor, scale, self_col, law)
    return laws.log_loss(d, E[None], A[None], alpha[None], x0[None], T[:, None], beta[:, None], self_col[:, None])[:, 0]


def huber_objective(theta, d, y, w, floor, scale, self_col, law, delta):
    """Weighted mean Huber loss of one target's log-loss residuals, divided by delta
    (the reference definition; the optimiser uses the equal, faster :func:`_value`)."""
    r = _predict_log(theta, d, floor, scale, self_col, law) - y
    return jnp.sum(w * huber(r, delta)) / (delta * jnp.sum(w))


# The same law and objective written out for speed: log d is taken once for all problems
# (it is shared under vmap), and the gradient is assembled by hand from the forward pass.


def _forward(theta, log_d, has_d, d, self_col, floor, scale, law):
    n_sources = self_col.shape[0]
    off = 1.0 - self_col
    sig_e = jax.nn.sigmoid(theta[0])
    log_E = jnp.log(floor) + jnp.log(sig_e)
    alpha = jnp.exp(theta[2])
    x0 = jnp.exp(theta[3])
    T_off = jnp.zeros(n_sources, theta.dtype) if law == "independent" else off * jnp.exp(theta[4 : 4 + n_sources])
    sig_b = jax.nn.sigmoid(theta[4 + n_sources : 4 + 2 * n_sources])
    beta = sig_b if law == "transfer" else jnp.ones(n_sources, theta.dtype)
    powered = jnp.where(has_d, jnp.exp(beta[None] * log_d), 0.0)  # (N, I): d^beta, 0 at d = 0
    x = x0 + d @ self_col + powered @ T_off
    log_x = jnp.log(x)
    pred = jnp.logaddexp(log_E, jnp.log(scale) + theta[1] - alpha * log_x)
    return {"sig_e": sig_e, "log_E": log_E, "alpha": alpha, "x0": x0, "T_off": T_off, "sig_b": sig_b, "powered": powered, "x": x, "log_x": log_x, "pred": pred}


def _huber_mean(r, w, delta):
    return jnp.sum(w * huber(r, delta)) / (delta * jnp.sum(w))


def _value(theta, y, w, log_d, has_d, d, self_col, floor, scale, law, delta):
    fw = _forward(theta, log_d, has_d, d, self_col, floor, scale, law)
    return _huber_mean(fw["pred"] - y, w, delta)


def huber_value_and_grad(theta, y, w, log_d, has_d, d, self_col, floor, scale, law, delta):
    """:func:`huber_objective` and its gradient in theta, by hand (one forward pass, no autodiff)."""
    fw = _forward(theta, log_d, has_d, d, self_col, floor, scale, law)
    r = fw["pred"] - y
    g_pred = w * jnp.clip(r, -delta, delta) / (delta * jnp.sum(w))  # d objective / d pred
    share_E = jnp.exp(fw["log_E"] - fw["pred"])  # d pred / d log E; 1 - share_E = d pred / d log(A x^-alpha)
    g_u = g_pred * (1.0 - share_E)
    g_x = g_u * (-fw["alpha"] / fw["x"])  # d objective / d x
    zeros = jnp.zeros(self_col.shape[0], theta.dtype)
    g_T = zeros if law == "independent" else (g_x @ fw["powered"]) * fw["T_off"]
    g_b = (g_x @ (fw["powered"] * log_d)) * fw["T_off"] * fw["sig_b"] * (1.0 - fw["sig_b"]) if law == "transfer" else zeros
    head = jnp.stack(
        [
            jnp.sum(g_pred * share_E) * (1.0 - fw["sig_e"]),
            jnp.sum(g_u),
            jnp.sum(g_u * (-fw["alpha"] * fw["log_x"])),
            jnp.sum(g_x) * fw["x0"],
        ]
    )
    return _huber_mean(r, w, delta), jnp.concatenate([head, g_T, g_b])


# ---------------------------------------------------------------------------------------------
# the optimiser


def _bfgs(value, value_and_grad, x, H, fresh, iterations: int):
    """``iterations`` BFGS iterations from ``x`` with inverse Hessian ``H`` (``fresh``: H is
    a placeholder to be replaced by a scaled identity at the first update).

    Each iteration takes the quasi-Newton direction (steepest descent where that is not a
    descent direction), caps it at MAX_STEP in every coordinate, evaluates the objective at
    all of STEPS times it (projected into the box [-BOUND, BOUND]) and moves to the best if
    that improves on the current value. H gets
    the BFGS update where the curvature condition holds and is reset where no step improved.
    """
    steps = jnp.asarray(STEPS, x.dtype)
    eye = jnp.eye(x.shape[0], dtype=x.dtype)
    f, g = value_and_grad(x)

    def body(carry, _):
        x, f, g, H, fresh = carry
        p = -H @ g
        p = jnp.where(g @ p < 0, p, -g)
        p = p * jnp.minimum(1.0, MAX_STEP / jnp.maximum(jnp.max(jnp.abs(p)), 1e-30))
        candidates = jnp.clip(x[None] + steps[:, None] * p[None], -BOUND, BOUND)
        values = jax.vmap(value)(candidates)
        values = jnp.where(jnp.isfinite(values), values, jnp.inf)
        best = jnp.argmin(values)
        improved = values[best] < f
        x_new = jnp.where(improved, candidates[best], x)
        f_new, g_new = value_and_grad(x_new)
        s, y = x_new - x, g_new - g
        sy = s @ y
        curved = improved & (sy > 1e-12 * jnp.sqrt((s @ s) * (y @ y)))
        # First update after a (re)start: the identity scaled to the observed curvature.
        H_base = jnp.where(fresh, eye * sy / jnp.where(curved, y @ y, 1.0), H)
        rho = 1.0 / jnp.where(curved, sy, 1.0)
        V = eye - rho * jnp.outer(s, y)
        H_new = jnp.where(curved, V @ H_base @ V.T + rho * jnp.outer(s, s), jnp.where(improved, H, eye))
        fresh_new = jnp.where(curved, False, jnp.logical_not(improved) | fresh)
        return (x_new, f_new, g_new, H_new, fresh_new), None

    (x_end, f_end, _, H_end, fresh_end), _ = jax.lax.scan(body, (x, f, g, H, fresh), None, length=iterations)
    return x_end, f_end, H_end, fresh_end, f


@functools.partial(jax.jit, static_argnames=("law", "delta", "iterations"))
def _bfgs_batch(x, H, fresh, w, y, floor, scale, self_col, d, *, law, delta, iterations):
    """:func:`_bfgs` on a batch of problems (leading axis); d (N, I) is shared."""
    has_d = d > 0
    log_d = jnp.log(jnp.where(has_d, d, 1.0))

    def one(x1, H1, fresh1, w1, y1, floor1, scale1, col1):
        args = (y1, w1, log_d, has_d, d, col1, floor1, scale1, law, delta)
        return _bfgs(lambda t: _value(t, *args), lambda t: huber_value_and_grad(t, *args), x1, H1, fresh1, iterations)

    return jax.vmap(one)(x, H, fresh, w, y, floor, scale, self_col)


@functools.cache
def _shardings():
    """Batches are split across the host's XLA devices (bayescale/__init__ exposes several
    for NUTS's parallel chains), one per CPU core at most; the shared data are replicated."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    n = max(1, min(jax.local_device_count(), os.cpu_count() or 1))
    n = max(k for k in range(1, n + 1) if BUCKETS[0] % k == 0)
    mesh = Mesh(np.array(jax.local_devices()[:n]), ("batch",))
    return NamedSharding(mesh, PartitionSpec("batch")), NamedSharding(mesh, PartitionSpec())


def _minimise(problem: FitProblem, law, delta, x0, weights, target_of, *, inverse_hessian=None, max_iterations=2000) -> dict:
    """Minimise one problem per row (start x0 (n, P), weights (n, N), target index (n,)) in
    blocks of BLOCK iterations, dropping the problems that stopped improving after each block
    (so ``max_iterations`` is rounded up to whole blocks).

    Returns the final x, objective f, inverse Hessian H, the objective at the start f0 and
    the iterations each problem ran.
    """
    n, n_params = x0.shape
    x = np.array(x0, np.float64)
    H = np.broadcast_to(np.eye(n_params), (n, n_params, n_params)).copy() if inverse_hessian is None else np.array(inverse_hessian, np.float64)
    fresh = np.full(n, inverse_hessian is None)
    f = np.full(n, np.inf)
    f0 = np.full(n, np.nan)
    iterations = np.zeros(n, dtype=int)
    active = np.arange(n)
    batch_sharding, shared_sharding = _shardings()
    with jax.enable_x64(True):
        d = jax.device_put(problem.d, shared_sharding)
        while active.size and iterations[active].max() < max_iterations:
            launched = []
            for lo in range(0, active.size, BUCKETS[-1]):
                rows = active[lo : lo + BUCKETS[-1]]
                size = next(b for b in BUCKETS if b >= rows.size)
                padded = np.concatenate([rows, np.full(size - rows.size, rows[0])])
                tgt = target_of[padded]
                args = (
                    x[padded], H[padded], fresh[padded], np.asarray(weights[padded], np.float64), problem.log_loss.T[tgt],
                    problem.floor[tgt], problem.scale[tgt], problem.self_mask.T[tgt],
                )
                # Dispatch is asynchronous: every batch is queued before any result is read.
                out = _bfgs_batch(*(jax.device_put(a, batch_sharding) for a in args), d, law=law, delta=float(delta), iterations=BLOCK)
                launched.append((rows, out))
            improving = []
            for rows, out in launched:
                x_new, f_new, H_new, fresh_new, f_start = (np.asarray(a)[: rows.size] for a in out)
                x[rows], H[rows], fresh[rows], f[rows] = x_new, H_new, fresh_new, f_new
                f0[rows] = np.where(np.isnan(f0[rows]), f_start, f0[rows])
                iterations[rows] += BLOCK
                improving.append(np.isfinite(f_new) & (f_start - f_new > RTOL * np.abs(f_new)))
            active = active[np.concatenate(improving)]
    return {"x": x, "f": f, "H": H, "f0": f0, "iterations": iterations}


# ---------------------------------------------------------------------------------------------
# back to the law


def _constrained(problem: FitProblem, law: str, params: np.ndarray) -> dict[str, np.ndarray]:
    """(S, J, P) unconstrained -> law parameters with S leading: E, A, alpha, x0 (S, J); T, beta (S, I, J)."""
    s, j, p = params.shape
    floor = np.broadcast_to(problem.floor, (s, j)).reshape(-1)
    scale = np.broadcast_to(problem.scale, (s, j)).reshape(-1)
    cols = np.broadcast_to(problem.self_mask.T, (s,) + problem.self_mask.T.shape).reshape(s * j, -1)
    with jax.enable_x64(True):
        unpack = jax.vmap(functools.partial(_unpack, law=law))
        E, A, alpha, x0, T, beta = (np.asarray(a) for a in unpack(jnp.asarray(params.reshape(s * j, p)), jnp.asarray(floor), jnp.asarray(scale), jnp.asarray(cols)))
    out = {name: v.reshape(s, j) for name, v in (("E", E), ("A", A), ("alpha", alpha), ("x0", x0))}
    out["T"] = T.reshape(s, j, -1).transpose(0, 2, 1)
    out["beta"] = beta.reshape(s, j, -1).transpose(0, 2, 1)
    return out


def _residual_sigma(problem: FitProblem, law: str, params: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(S, J) residual sd of log loss per replicate and target on that replicate's cells,
    with the law evaluated by :func:`bayescale.laws.power.log_loss`."""
    c = _constrained(problem, law, params)
    with jax.enable_x64(True):
        d, mask = jnp.asarray(problem.d), jnp.asarray(problem.self_mask)
        log_pred = jax.vmap(lambda E, A, alpha, x0, T, beta: laws.log_loss(d, E, A, alpha, x0, T, beta, mask))(
            *(jnp.asarray(c[k]) for k in ("E", "A", "alpha", "x0", "T", "beta"))
        )
        log_pred = np.asarray(log_pred)  # (S, N, J)
    r = (log_pred - problem.log_loss[None]) * problem.observed[None]
    w = np.swapaxes(weights, 1, 2)  # (S, N, J)
    dof = np.maximum(w.sum(axis=1) - _n_free(problem, law)[None], 1.0)
    return np.sqrt((w * r**2).sum(axis=1) / dof)


def _law_draws(problem: FitProblem, law: str, params: np.ndarray, sigma: np.ndarray) -> LawDraws:
    c = _constrained(problem, law, params)
    return LawDraws(
        sources=problem.sources,
        targets=problem.targets,
        self_mask=problem.self_mask.copy(),
        sigma=np.asarray(sigma, np.float64),
        data_scale=problem.data_scale,
        law=law,
        likelihood="normal",
        **{k: np.asarray(v, np.float64) for k, v in c.items()},
    )
