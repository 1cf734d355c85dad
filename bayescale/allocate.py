"""Choose how much of each data domain to pretrain on: a convex program over posterior draws.

Decision: raw data amounts ``D`` (one per source domain) with ``D >= 0``, a budget
``sum(D) <= B``, optional availability caps ``D_i <= U_i`` (``--max``) and minimums
``D_i >= L_i`` (``--min``). Each posterior draw ``s`` gives the weighted loss

    f_s(D) = sum_j w_j * L_j(D / D0; theta_s)

which is convex in ``D`` (see :mod:`bayescale.laws`). Two objectives over the draws:

- ``mean``: the average of ``f_s`` (posterior expected loss);
- ``cvar:GAMMA``: the exact Rockafellar-Uryasev CVaR of the empirical distribution of
  ``f_s`` at level GAMMA, ``min_eta eta + sum_s max(f_s - eta, 0) / ((1 - GAMMA) S)``,
  i.e. the mean of the worst ``(1 - GAMMA)`` share of draws (with fractional weighting).

The program is written with vectorised 3D power cones in law units ``d = D / D0``:
``u_sij <= d_i ** beta_ij`` for the transferred data (linear where ``beta == 1``),
``x_sj = x0_sj + d_j + sum_i T_sij u_sij`` and ``t_sj >= x_sj ** (-alpha_sj)``. Every
variable is scaled to be O(1): each source's amount by a unit (the uniform split, or a
pilot solve on a few draws), ``u`` by ``unit ** beta``, ``t`` by its value at the uniform
split and the loss by the objective there. By default the program uses at most
``max_draws`` draws (a fixed-seed subset); predictions use all of them.

Solvers: Clarabel (a few tries, with different scalings and step lengths: its power-cone
steps stall now and then), then SCS. Every try that falls short is listed in
``solver_notes``; the status is ``optimal`` only if one of them reached it and the
solver's optimum agrees with an independent NumPy evaluation, and ``optimal_inaccurate``
otherwise (with the best inexact allocation).

:func:`objective_values` evaluates an objective at an allocation with plain NumPy,
independently of the solver, and is what ``objective_value`` in the result reports.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import time

import numpy as np

from bayescale.errors import InputError
from bayescale.posterior import LawDraws
from bayescale.predict import summarise

OBJECTIVES = ("mean", "cvar:GAMMA")
# Relative tolerances: an allocation within this of a bound counts as binding, and a
# solver objective further than GAP_TOL from the NumPy evaluation is reported.
BINDING_TOL = 1e-5
GAP_TOL = 1e-5
BETA_LINEAR = 1.0 - 1e-9  # beta at or above this is treated as exactly 1 (linear transfer)
CLARABEL_SETTINGS = {"max_iter": 300}
# Step lengths of the Clarabel tries (its default 0.99 stalls often on these power cones).
CLARABEL_STEPS = (0.8, 0.9)
MAX_CLARABEL_TRIES = 4  # on the full problem, before SCS
SCS_SETTINGS = {"eps_abs": 1e-8, "eps_rel": 1e-8, "max_iters": 100_000}
PILOT_DRAWS = 64  # draws of the pilot solve whose answer sets the variables' scale
FIXED_TOL = 1e-9  # a source whose cap is within this share of the budget of its minimum is fixed there
UNIT_FLOOR = 1e-4  # smallest rescaled unit, relative to the uniform split


# --------------------------------------------------------------------------------------
# Parsing and NumPy evaluation


def parse_objective(text) -> tuple[str, float | None]:
    """``"mean"`` -> ("mean", None); ``"cvar:0.9"`` -> ("cvar", 0.9). InputError otherwise."""
    raw = str(text).strip()
    lowered = raw.lower()
    if lowered == "mean":
        return "mean", None
    if lowered.startswith("cvar"):
        rest = lowered[4:]
        if not rest.startswith(":") or not rest[1:].strip():
            raise InputError(f"--objective: {raw!r} needs a level, e.g. 'cvar:0.9' (0 < level < 1)")
        try:
            gamma = float(rest[1:])
        except ValueError:
            raise InputError(f"--objective: CVaR level in {raw!r} is not a number; use e.g. 'cvar:0.9'") from None
        if not (math.isfinite(gamma) and 0.0 < gamma < 1.0):
            raise InputError(f"--objective: CVaR level must lie strictly between 0 and 1, got {rest[1:].strip()}")
        return "cvar", gamma
    raise InputError(f"--objective: unknown objective {raw!r}; use 'mean' or 'cvar:GAMMA' with 0 < GAMMA < 1")


def _objective_name(kind: str, gamma: float | None) -> str:
    return "mean" if kind == "mean" else f"cvar:{gamma:g}"


def law_losses(draws: LawDraws, allocation_raw) -> np.ndarray:
    """Law loss of every target under every draw, in float64: (I,) raw allocation -> (S, J)."""
    D = np.asarray(allocation_raw, dtype=np.float64).reshape(-1)
    if D.shape[0] != len(draws.sources):
        raise ValueError(f"allocation has {D.shape[0]} entries, the posterior has {len(draws.sources)} sources")
    d = np.maximum(D, 0.0) / float(draws.data_scale)
    mask = np.asarray(draws.self_mask, dtype=np.float64)
    T = np.asarray(draws.T, dtype=np.float64) * (1.0 - mask)
    powered = np.where(d[None, :, None] > 0, d[None, :, None] ** np.asarray(draws.beta, dtype=np.float64), 0.0)
    x = np.asarray(draws.x0, dtype=np.float64) + (d @ mask)[None, :] + np.einsum("sij,sij->sj", T, powered)
    with np.errstate(divide="ignore"):
        return np.asarray(draws.E, dtype=np.float64) + np.asarray(draws.A, dtype=np.float64) * x ** (
            -np.asarray(draws.alpha, dtype=np.float64)
        )


def empirical_cvar(values, gamma: float) -> float:
    """Exact CVaR of the empirical distribution of ``values`` at level ``gamma``.

    Evaluates the Rockafellar-Uryasev function ``eta + mean(max(v - eta, 0)) / (1 - gamma)``
    at every candidate ``eta = v_k``; it is convex and piecewise linear with kinks only
    there, so the smallest of these is its exact minimum.
    """
    v = np.sort(np.asarray(values, dtype=np.float64).reshape(-1))
    n = v.size
    # sum_m max(v_m - v_k, 0) = (sum of v above position k) - (n - 1 - k) v_k  (ties add 0)
    above = np.concatenate([np.cumsum(v[::-1])[::-1][1:], [0.0]])
    excess = above - (n - 1 - np.arange(n)) * v
    ru = v + np.maximum(excess, 0.0) / ((1.0 - gamma) * n)
    return float(np.min(ru))


def objective_values(draws: LawDraws, allocation_raw, objective="mean", weights_vector=None) -> float:
    """The objective at one raw allocation, evaluated with NumPy over all of ``draws``.

    ``objective``: a string (``"mean"``, ``"cvar:0.9"``) or a parsed (kind, gamma) pair;
    ``weights_vector``: (J,) target weights (default 1 each).
    """
    kind, gamma = parse_objective(objective) if isinstance(objective, str) else objective
    w = np.ones(len(draws.targets)) if weights_vector is None else np.asarray(weights_vector, dtype=np.float64)
    losses = law_losses(draws, allocation_raw)
    # Targets with weight 0 do not count, even where their loss is infinite.
    f = np.sum(np.where(w > 0, losses * w, 0.0), axis=1)
    if kind == "mean":
        return float(np.mean(f))
    return empirical_cvar(f, gamma)


# --------------------------------------------------------------------------------------
# Input checks


def _number(flag: str, what: str, name: str, value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not math.isfinite(number) or number < 0:
        raise InputError(f"{flag}: {what} for {name!r} must be a finite number >= 0, got {value}")
    return number


def weights_vector(draws: LawDraws, weights: dict | None) -> np.ndarray:
    """Target weights as a vector: 1 each, except the targets that ``weights`` names."""
    w = np.ones(len(draws.targets))
    if weights is None:
        return w
    for name, value in weights.items():
        w[draws.target_index(name, "--weights")] = _number("--weights", "weight", name, value)
    if not np.any(w > 0):
        raise InputError("--weights: all target weights are zero; give at least one target a weight > 0")
    return w


def _bounds(draws: LawDraws, budget: float, upper: dict | None, lower: dict | None):
    n = len(draws.sources)
    U = np.full(n, np.inf)
    L = np.zeros(n)
    for name, value in (upper or {}).items():
        U[draws.source_index(name, "--max")] = _number("--max", "cap", name, value)
    for name, value in (lower or {}).items():
        L[draws.source_index(name, "--min")] = _number("--min", "minimum", name, value)
    for i, name in enumerate(draws.sources):
        if L[i] > U[i]:
            raise InputError(f"--min: minimum for {name!r} ({L[i]:g}) exceeds its --max cap ({U[i]:g})")
    if L.sum() > budget * (1 + 1e-12):
        raise InputError(f"--min: minimums sum to {L.sum():g} > budget {budget:g}")
    return L, U


def _check_budget(budget) -> float:
    try:
        value = float(budget)
    except (TypeError, ValueError):
        raise InputError(f"--budget must be a number > 0, got {budget}") from None
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"--budget must be > 0, got {value:g}")
    return value


def _check_law_domain(draws: LawDraws) -> None:
    """The program is convex (and the cones valid) only for T >= 0, 0 < beta <= 1, alpha > 0, x0 >= 0, A >= 0."""
    off = np.broadcast_to(~(np.asarray(draws.self_mask) > 0)[None], draws.T.shape)  # transfer entries
    checks = [
        ("T", np.all(draws.T[off] >= 0), "T >= 0"),
        ("beta", np.all((draws.beta[off] > 0) & (draws.beta[off] <= 1 + 1e-9)), "0 < beta <= 1"),
        ("alpha", np.all(draws.alpha > 0), "alpha > 0"),
        ("x0", np.all(draws.x0 >= 0), "x0 >= 0"),
        ("A", np.all(draws.A >= 0), "A >= 0"),
    ]
    for name, ok, rule in checks:
        if not ok:
            raise InputError(f"posterior: draws of {name!r} break {rule}; the allocation program needs a convex law")
    for name in ("E", "A", "alpha", "x0", "T", "beta"):
        values = getattr(draws, name)
        if not np.all(np.isfinite(values[off] if name in ("T", "beta") else values)):
            raise InputError(f"posterior: draws of {name!r} are not all finite")
    if not (math.isfinite(draws.data_scale) and draws.data_scale > 0):
        raise InputError(f"posterior: data_scale must be > 0, got {draws.data_scale}")


def optimisation_draws(draws: LawDraws, max_draws: int | None = 400, seed: int = 0) -> LawDraws:
    """The draws the program is solved on: all of them, or a fixed-seed subset of ``max_draws``."""
    if max_draws is None or draws.n_draws <= max_draws:
        return draws
    index = np.sort(np.random.default_rng(seed).choice(draws.n_draws, size=int(max_draws), replace=False))
    return draws.subset(index)


# --------------------------------------------------------------------------------------
# Baselines


def fill(budget: float, lower, upper, shape=None) -> np.ndarray:
    """Spend ``budget`` as ``clip(level * shape, lower, upper)`` (water-filling).

    ``shape`` = 1 gives the uniform split, re-spread where caps or minimums bind; where
    the caps sum to less than the budget, everything available (``upper``) is used.
    """
    L = np.asarray(lower, dtype=np.float64)
    U = np.asarray(upper, dtype=np.float64)
    g = np.ones_like(L) if shape is None else np.asarray(shape, dtype=np.float64)
    if np.sum(U) <= budget:
        return U.copy()

    def spent(level):
        return np.sum(np.clip(level * g, L, U))

    lo, hi = 0.0, 1.0
    while spent(hi) < budget:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if spent(mid) <= budget:
            lo = mid
        else:
            hi = mid
    return np.clip(lo * g, L, U)


# --------------------------------------------------------------------------------------
# The cone program


def _build_problem(draws: LawDraws, w: np.ndarray, kind: str, gamma, L, U, budget, scale):
    """The cone program on ``draws``, with the loss divided by ``scale["loss"]``.

    The variable is ``delta = d / k`` with ``d = D / D0`` the law units and ``k`` the law-unit
    amount of the uniform split (``scale["unit"]``), so the cone entries are O(1). Returns
    (problem, d expression in law units, budget constraint).
    """
    import cvxpy as cp
    import scipy.sparse as sp

    D0 = float(draws.data_scale)
    S, n_src = draws.n_draws, len(draws.sources)
    keep = np.flatnonzero(w > 0)  # targets that count
    K = keep.size
    mask = np.asarray(draws.self_mask, dtype=np.float64)[:, keep]  # (I, K)
    E, A = draws.E[:, keep], draws.A[:, keep]
    alpha, x0 = draws.alpha[:, keep], draws.x0[:, keep]
    T = np.asarray(draws.T, dtype=np.float64)[:, :, keep] * (1.0 - mask)[None]
    beta = np.asarray(draws.beta, dtype=np.float64)[:, :, keep]
    row = np.arange(S)[:, None, None] * K + np.arange(K)[None, None, :]  # row of (s, j) in x
    row = np.broadcast_to(row, T.shape)
    src = np.broadcast_to(np.arange(n_src)[None, :, None], T.shape)

    k = np.broadcast_to(np.asarray(scale["unit"], dtype=np.float64), (n_src,)).copy()
    delta = cp.Variable(n_src, name="delta")
    d = cp.multiply(k, delta)
    # Linear part of x: own data (self mask, coefficient 1) and transfers with beta == 1.
    linear = (T > 0) & (beta >= BETA_LINEAR)
    own_i, own_j = np.nonzero(mask)
    own_rows = (np.arange(S)[:, None] * K + own_j[None, :]).ravel()
    own_cols = np.tile(own_i, S)
    G = sp.csr_matrix(
        (
            np.concatenate([T[linear], np.ones(own_rows.size)]),
            (np.concatenate([row[linear], own_rows]), np.concatenate([src[linear], own_cols])),
        ),
        shape=(S * K, n_src),
    )
    x = x0.ravel() + G @ d
    constraints = []
    # Sources held fixed by their bounds (a cap of 0, or minimum = cap) enter as constants:
    # a power cone pinned at its apex stalls the solvers.
    fixed = np.isfinite(U) & (U - L <= FIXED_TOL * budget)
    U = np.where(fixed, L, U)
    pinned = (T > 0) & (beta < BETA_LINEAR) & fixed[src]
    if np.any(pinned):
        amount = (L / D0)[src[pinned]]
        x = x + np.bincount(row[pinned], weights=T[pinned] * amount ** beta[pinned], minlength=S * K)
    cones = (T > 0) & (beta < BETA_LINEAR) & ~fixed[src]
    if np.any(cones):
        n_u = int(cones.sum())
        u = cp.Variable(n_u, name="u")
        # u = (transferred data) / k ** beta <= delta_i ** beta, i.e. delta_i ** beta * 1 ** (1 - beta) >= |u|
        M = sp.csr_matrix((T[cones] * k[src[cones]] ** beta[cones], (row[cones], np.arange(n_u))), shape=(S * K, n_u))
        x = x + M @ u
        constraints.append(cp.constraints.PowCone3D(delta[src[cones]], np.ones(n_u), u, beta[cones]))
        constraints.append(u >= 0)  # redundant (x grows with u) but steadies Clarabel
    # c * t >= x ** (-alpha), with c = x ** (-alpha) at the uniform split so that t is O(1):
    # (c t) ** a * x ** (1 - a) >= 1, i.e. t ** a * x ** (1 - a) >= c ** (-a), a = 1 / (1 + alpha).
    t = cp.Variable(S * K, name="t")
    a = 1.0 / (1.0 + alpha.ravel())
    c = scale["entry"].ravel()
    constraints.append(cp.constraints.PowCone3D(t, x, c ** (-a), a))
    # f_s / scale = (sum_j w_j E_sj + sum_j w_j A_sj c_sj t_sj) / scale
    F = sp.csr_matrix(
        ((w[keep][None, :] * A).ravel() * c / scale["loss"], (np.repeat(np.arange(S), K), np.arange(S * K))),
        shape=(S, S * K),
    )
    f = (E @ w[keep]) / scale["loss"] + F @ t
    budget_con = k @ delta <= budget / D0
    constraints += [budget_con, delta >= L / (D0 * k)]
    finite_cap = np.isfinite(U)
    if np.any(finite_cap):
        constraints.append(delta[np.flatnonzero(finite_cap)] <= U[finite_cap] / (D0 * k[finite_cap]))
    if kind == "mean":
        objective = cp.sum(f) / S
    else:
        eta = cp.Variable(name="eta")
        objective = eta + cp.sum(cp.pos(f - eta)) / ((1.0 - gamma) * S)
    problem = cp.Problem(cp.Minimize(objective), constraints)
    return problem, d, budget_con


def _project(D, L, U, budget) -> np.ndarray:
    """Remove solver round-off: clip to [L, U] and shrink the excess over L to fit the budget."""
    D = np.clip(np.asarray(D, dtype=np.float64), L, U)
    total = D.sum()
    if total > budget:
        spare = D - L
        D = L + spare * ((budget - L.sum()) / spare.sum())
        D = np.clip(D, L, U)
    return D


def _solve(problem, solver: str, settings: dict):
    """Solve with one solver; returns (status, seconds, error text or None)."""
    import cvxpy as cp

    start = time.perf_counter()
    try:
        problem.solve(solver=solver, **settings)
        return problem.status, time.perf_counter() - start, None
    except (cp.error.SolverError, ArithmeticError, ValueError) as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "Try another solver" in text:  # cvxpy's generic message: the solver stalled
            text = "stalled without a solution"
        return "solver_error", time.perf_counter() - start, text


@dataclasses.dataclass
class _Attempt:
    solver: str
    status: str
    seconds: float
    error: str | None
    allocation: np.ndarray | None = None  # raw units, projected onto the feasible set
    shadow: float = float("nan")  # d objective / d budget per raw unit
    solver_objective: float = float("nan")  # the solver's optimum in loss units
    detail: str = ""


def _attempt(draws, w, kind, gamma, L, U, budget, scale, solver, settings) -> _Attempt:
    import warnings

    problem, d, budget_con = _build_problem(draws, w, kind, gamma, L, U, budget, scale)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "solution may be inaccurate": reported via status
        status, seconds, error = _solve(problem, solver, settings)
    result = _Attempt(solver, status, seconds, error)
    if d.value is not None and status in ("optimal", "optimal_inaccurate", "user_limit"):
        D0 = float(draws.data_scale)
        result.allocation = _project(np.asarray(d.value, dtype=np.float64).reshape(-1) * D0, L, U, budget)
        dual = budget_con.dual_value  # = -d (objective / loss scale) / d (B / D0) at the optimum
        if dual is not None:
            result.shadow = -float(np.asarray(dual).reshape(-1)[0]) * scale["loss"] / D0
        if problem.value is not None:
            result.solver_objective = float(problem.value) * scale["loss"]
    return result


def _optimise(draws, w, kind, gamma, L, U, budget, scale):
    """Clarabel, re-solved with rescaled variables and other step lengths if it falls short, then SCS.

    Clarabel's power-cone steps stall now and then, above all when an optimal amount is
    tiny next to the uniform split (near the apex of ``d ** beta``). Rescaling each
    source's variable to an approximate solution (Clarabel's own inexact answer, or one
    on a few draws) and changing the step length fixes that in practice. Returns
    (attempts, the attempt to use or None).
    """
    D0 = float(draws.data_scale)
    base_unit = np.asarray(scale["unit"], dtype=np.float64)
    attempts: list[_Attempt] = []

    def unit_at(allocation):
        return np.where(allocation / D0 > UNIT_FLOOR * base_unit, allocation / D0, base_unit)

    # Tries, in order: variables scaled to a pilot solve on a few draws, or to the uniform
    # split, at two step lengths. An inexact answer from one try is what the next is scaled to.
    units = {}
    if draws.n_draws > 2 * PILOT_DRAWS:
        index = np.linspace(0, draws.n_draws - 1, PILOT_DRAWS).astype(int)
        pilot = _attempt(
            draws.subset(index), w, kind, gamma, L, U, budget, dict(scale, entry=scale["entry"][index]), "CLARABEL",
            dict(CLARABEL_SETTINGS, max_step_fraction=CLARABEL_STEPS[0]),
        )  # fmt: skip
        pilot.detail = f"pilot on {PILOT_DRAWS} draws"
        attempts.append(pilot)
        if pilot.allocation is not None:
            units["scaled to the pilot"] = unit_at(pilot.allocation)
    units["uniform scale"] = base_unit
    first, second = CLARABEL_STEPS
    labels = list(units)
    plan = [(labels[0], first), (labels[-1], second), (labels[-1], first), (labels[0], second)]
    plan = list(dict.fromkeys(plan))  # without repeats (one scale only: two tries)
    best_unit = (labels[0], units[labels[0]])
    tries = 0
    while plan and tries < MAX_CLARABEL_TRIES:
        label, step = plan.pop(0)
        tries += 1
        settings = dict(CLARABEL_SETTINGS, max_step_fraction=step)
        attempt = _attempt(draws, w, kind, gamma, L, U, budget, dict(scale, unit=units[label]), "CLARABEL", settings)
        attempt.detail = f"{label}, step {step}"
        attempts.append(attempt)
        if attempt.status == "optimal":
            return attempts, attempt
        if attempt.allocation is not None:  # inexact: try again scaled to it, at the other step length
            units["scaled to the previous try"] = unit_at(attempt.allocation)
            plan.insert(0, ("scaled to the previous try", second if step == first else first))
            best_unit = ("scaled to the previous try", units["scaled to the previous try"])
    attempt = _attempt(draws, w, kind, gamma, L, U, budget, dict(scale, unit=best_unit[1]), "SCS", SCS_SETTINGS)
    attempt.detail = best_unit[0]
    attempts.append(attempt)
    return attempts, attempt if attempt.status == "optimal" else None


# --------------------------------------------------------------------------------------
# The public entry point


def allocate(
    draws: LawDraws,
    budget,
    *,
    objective="mean",
    weights: dict | None = None,
    upper: dict | None = None,
    lower: dict | None = None,
    interval: float = 0.9,
    max_draws: int | None = 400,
    seed: int = 0,
) -> dict:
    """The allocation of ``budget`` raw data units over the sources that minimises ``objective``.

    ``weights`` {target: w >= 0} (every target not named keeps weight 1),
    ``upper`` {source: cap} (``--max``), ``lower`` {source: minimum} (``--min``).
    Returns a JSON-able dict:

    - ``status``: "optimal" or "optimal_inaccurate" (see ``solver_notes``);
    - ``objective``: the normalised objective ("mean", "cvar:0.9");
    - ``objective_value``: the objective at ``allocation`` on the ``draws_used`` draws
      the program was solved on (equal to :func:`objective_values` there);
    - ``allocation`` {source: raw amount}; ``fractions`` {source: share of the amount spent};
    - ``predicted`` {target: {mean, lo, hi}}: the law loss over all draws, central ``interval``;
    - ``baselines``: ``uniform`` (even split, water-filled around caps and minimums) and,
      when every source has a cap, ``proportional`` (to the caps); each with
      ``allocation``, ``objective_value`` (same draws) and ``predicted``;
    - ``budget``; ``shadow_price``: d objective_value / d budget in loss per raw data unit
      (<= 0; 0 where the budget is slack; None if the solver gave no dual);
    - ``binding``: active constraints ("budget", "max:<source>", "min:<source>");
    - ``draws_used``, ``solver`` ("CLARABEL" or "SCS") and ``solver_notes`` (every try
      that fell short, empty when the first one succeeded).
    """
    B = _check_budget(budget)
    kind, gamma = parse_objective(objective)
    if not (isinstance(interval, numbers.Real) and 0 < interval < 1):
        raise InputError(f"--interval must lie strictly between 0 and 1, got {interval}")
    if max_draws is not None and (not isinstance(max_draws, numbers.Integral) or max_draws < 1):
        raise InputError(f"--max-draws must be a whole number >= 1, got {max_draws}")
    w = weights_vector(draws, weights)
    L, U = _bounds(draws, B, upper, lower)
    _check_law_domain(draws)

    name = _objective_name(kind, gamma)
    sub = optimisation_draws(draws, max_draws, seed)
    D0 = float(draws.data_scale)

    def value(D):
        return objective_values(sub, D, (kind, gamma), w)

    uniform = fill(B, L, U)
    # Scales for the solver: the loss at the uniform split (per entry and in total).
    keep = w > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        entry = (law_losses(sub, uniform)[:, keep] - sub.E[:, keep]) / sub.A[:, keep]  # x ** -alpha
    entry = np.clip(np.nan_to_num(entry, nan=1.0, posinf=1e8), 1e-8, 1e8)
    loss_scale = abs(value(uniform))
    loss_scale = loss_scale if math.isfinite(loss_scale) and loss_scale > 1e-12 else 1.0
    # Per-source variable units (law units): the uniform split, but not below a small share.
    even = B / (D0 * len(draws.sources))
    unit = np.maximum(uniform / D0, UNIT_FLOOR * even)
    scale = {"entry": entry, "loss": loss_scale, "unit": unit}

    attempts, chosen = _optimise(sub, w, kind, gamma, L, U, B, scale)
    notes = [
        f"{a.solver}{f' ({a.detail})' if a.detail else ''} returned {a.status}"
        + (f": {a.error}" if a.error else "")
        + f" after {a.seconds:.2f}s"
        for a in attempts
        if a is not chosen and not (a.detail.startswith("pilot") and a.status == "optimal")
    ]
    if chosen is not None:
        status = "optimal"
        if notes:
            notes.append(f"solved by {chosen.solver} ({chosen.detail})" if chosen.detail else f"solved by {chosen.solver}")
    else:
        usable = [a for a in attempts if a.allocation is not None and not a.detail.startswith("pilot")]
        if not usable:
            raise RuntimeError(f"allocate: no solver produced an allocation ({'; '.join(notes)})")
        chosen = min(usable, key=lambda a: value(a.allocation))
        status = "optimal_inaccurate"
        notes.append(f"no solver reached 'optimal'; using the best inexact allocation ({chosen.solver}, {chosen.status})")
    D, solver_used, shadow, solver_obj = chosen.allocation, chosen.solver, chosen.shadow, chosen.solver_objective
    obj = value(D)
    gap = abs(solver_obj - obj) / max(abs(obj), 1e-12)
    if gap > GAP_TOL:
        notes.append(f"solver objective {solver_obj:.6g} differs from the NumPy evaluation {obj:.6g} (rel {gap:.1e})")
        status = "optimal_inaccurate"

    # Baselines (feasible by construction) on the same optimisation draws; predictions on all draws.
    baselines = {"uniform": uniform}
    if upper is not None and np.all(np.isfinite(U)):
        baselines["proportional"] = fill(B, L, U, shape=U)
    baseline_out = {}
    for key, Db in baselines.items():
        baseline_out[key] = {
            "allocation": _named(draws.sources, Db),
            "objective_value": value(Db),
            "predicted": _predicted(draws, Db, interval),
        }
        if baseline_out[key]["objective_value"] < obj - 1e-6 * max(abs(obj), 1e-12):
            status = "optimal_inaccurate"
            notes.append(f"the {key} baseline beats the solver's allocation; the solution is not optimal")

    total = D.sum()
    tol = BINDING_TOL * B
    binding = []
    if total >= B - tol:
        binding.append("budget")
    for i, src in enumerate(draws.sources):
        if np.isfinite(U[i]) and D[i] >= U[i] - tol:
            binding.append(f"max:{src}")
    for i, src in enumerate(draws.sources):
        if lower is not None and src in lower and D[i] <= L[i] + tol:
            binding.append(f"min:{src}")
    if "budget" not in binding:
        shadow = 0.0

    return {
        "status": status,
        "objective": name,
        "objective_value": obj,
        "allocation": _named(draws.sources, D),
        "fractions": _named(draws.sources, D / total if total > 0 else np.zeros_like(D)),
        "predicted": _predicted(draws, D, interval),
        "baselines": baseline_out,
        "budget": B,
        "shadow_price": float(min(shadow, 0.0)) if math.isfinite(shadow) else None,
        "binding": binding,
        "draws_used": sub.n_draws,
        "solver": solver_used,
        "solver_notes": notes,
    }


def _named(names, values) -> dict[str, float]:
    return {n: float(v) for n, v in zip(names, values)}


def _predicted(draws: LawDraws, D, interval: float) -> dict:
    losses = law_losses(draws, D)
    out = {}
    for j, target in enumerate(draws.targets):
        s = summarise(losses[:, j], interval)
        out[target] = {"mean": s["mean"], "lo": s["lo"], "hi": s["hi"]}
    return out
