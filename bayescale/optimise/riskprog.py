"""The exact risk program over posterior draws: SQP with cvxpy quadratic subproblems, and a certificate.

Every objective and constraint that ``bayescale allocate`` offers is built from *risk terms*:
for a vector ``v`` of target weights, the per-draw value ``f_s(D) = sum_j v_j L_j(D; theta_s)``
(convex in the raw data amounts ``D``), and a risk over the draws — the mean, or the exact
Rockafellar-Uryasev CVaR with tail size ``n = (1 - gamma) S`` (``n = 1``: the worst draw)::

    CVaR(f) = min_eta  eta + (1 / n) * sum_s max(f_s - eta, 0)

The program ``min obj(D)  s.t.  risk_c(D) <= 1 (chance constraints, scaled),  D in P``
(``P`` the polytope of budget, caps, minimums, fixed domains and groups; ``obj`` one
term, the max over several (minimax), or the spend ``c . D`` (the least budget)) is solved
by sequential quadratic programming (a prox-linear / Sl1QP method):

1. at the iterate ``D_k``, each term's per-draw values are replaced by their linearisations
   ``f_s(D_k) + grad f_s(D_k) . (D - D_k)``, kept *per draw* (so the CVaR of the model is
   exact in the RU form, with one hinge per draw), plus the quadratic
   ``1/2 (D - D_k)' H (D - D_k)`` with ``H`` the Hessian of the Lagrangian (draws weighted
   by the last subproblem's multipliers);
2. that quadratic program is solved by cvxpy. It is compiled **once** (Disciplined
   Parametrized Programming: gradients, values, Hessian factor, budget, bounds and penalty
   are :class:`cvxpy.Parameter` values), so every later iteration, re-solve with a new
   budget, new weights or a new budget on the path only updates parameters;
3. a backtracking line search on the exact merit ``obj + rho * sum max(risk_c - 1, 0)``,
   evaluated with NumPy on every draw, accepts the step.

Two devices make it fast and robust. A source whose marginal value is infinite at zero
(``d ** beta`` with ``beta < 1``) may shrink at most ``KAPPA`` times per iteration (a ratio
trust region: the quadratic model underestimates how fast such a loss rises near zero).
Large problems start from the solution on a fixed subset of ``PILOT_DRAWS`` draws, solved
by the same compiled program. Only the ``TAIL_FACTOR * n + ...`` draws with the largest
values enter a CVaR term's subproblem (the rest lie far below the tail); the line search
and the certificate use every draw.

**Certificate.** Optimality is not taken from the solver. For any multipliers ``nu`` (per
draw and term, in the CVaR dual sets), ``mu >= 0`` and polytope duals ``u >= 0``, the
Lagrangian ``l(D)`` is convex and below the objective on the feasible set, so
``LB = l(D^) + min_{D in P} grad l(D^) . (D - D^) <= optimum``. The multipliers that make
this bound largest at the returned ``D^`` come from one LP (SciPy HiGHS), and the bound is
then recomputed in NumPy from multipliers clipped into their sets, with the LP's residual
charged against the box the polytope implies. ``gap = obj(D^) - LB`` is a certified
duality gap; the status is ``optimal`` only when it is small.

The compiled quadratic subproblem and the projection onto the polytope are in
:mod:`bayescale.optimise.qp`. This module is long because the SQP
iterations, the polishing and the certificate all work on one :class:`RiskProgram`'s state
(its free sources, scaling, compiled subproblems and last linearisation), and the certificate
is only sound for exactly the program the iterations solved, so they are kept in one place.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

from bayescale.inference.posterior import LawDraws
from bayescale.laws.noise import extrapolation_distance
from bayescale.laws.power import reducible_and_slopes
from bayescale.optimise.qp import QP_SETTINGS, QP_SOLVERS, Projector, QPSubproblem

__all__ = ["FEAS_TOL", "GAP_TOL", "KAPPA", "QP_SETTINGS", "QP_SOLVERS", "LawEval", "Projector", "QPSubproblem",
           "RiskProgram", "Solution", "Term", "risk_value", "tail_mean", "tail_weights"]

KAPPA = 10.0  # a source with infinite marginal value at 0 shrinks at most this factor per iteration
TAIL_FACTOR = 1.5  # candidate draws in a CVaR subproblem: TAIL_FACTOR * tail size + TAIL_EXTRA
TAIL_EXTRA = 32
CERT_FACTOR = 1.5  # candidate draws in the certificate: CERT_FACTOR * tail size + ...
POLISH_ABOVE = 1e-8  # relative gap above which Newton steps on the active piece polish the solution
REFINE_ABOVE = 1e-6  # relative gap above which the bound is tightened by Kelley cuts
REFINE_ITER = 25
#: Relative excess of the lower bound over the objective put down to rounding. The bound is weak
#: duality evaluated in NumPy from multipliers clipped into their sets, so it is valid for any
#: multipliers; only floating-point error (~1e-13 relative) can lift it above the objective.
CERT_SLACK = 1e-9
CERT_LP_OPTIONS = {"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10}
PILOT_DRAWS = 256  # problems on more than 2x this many draws start from a solve on this many
MAX_ITER = 80
DEC_TOL = 1e-10  # stop when the subproblem predicts less decrease than this (relative to the merit)
GAP_TOL = 1e-5  # certified relative gap under which a solution is "optimal"
FEAS_TOL = 1e-7  # relative violation of a chance constraint's CVaR that still counts as met
PAD = -1e3  # value of unused candidate rows (never in the tail)


# ------------------------------------------------------------------------------------ the law


class LawEval:
    """Law losses of every draw, their gradients and Hessians in the raw data amounts (float64).

    ``noisy = (targets, log_noise)`` adds one column per entry of ``targets`` after the J
    targets: column ``J + k`` is target ``targets[k]``'s loss times ``exp(log_noise[:, k])``,
    the loss one run observes under each draw (:mod:`bayescale.optimise.predictive`). It is
    the same law with ``E`` and ``A`` scaled per draw, so it stays convex in the amounts.
    ``log_noise`` is an (S, K) array, or a function of an allocation's total raw data giving one
    (the noise of a run of that total, where the misfit falls with a run's data).

    Past the fit runs' data the draws' slope error scales every column too, by
    ``exp(slope_error_j * max(0, log(total / reach)))``, as :func:`bayescale.evaluate.predict.predict`
    has it. Both factors depend on the allocation's total only. With ``total=None`` each allocation gets them at its own
    total (exact, for evaluating and checking); with a ``total`` every allocation gets them at that
    one (:meth:`at_total`), which keeps each draw's loss convex: the programs are solved at a fixed
    total, and :class:`~bayescale.optimise.problem.AllocationProblem` moves it to the solution's."""

    def __init__(self, draws: LawDraws, noisy=None, total: float | None = None):
        f = lambda a: np.asarray(a, dtype=np.float64)
        self.draws = draws
        self.noisy = noisy
        self.total = None if total is None else float(total)
        self.noise_at = None  # total -> (S, K) log noise of the noisy columns, when it depends on the total
        self._factors: dict = {}  # total -> (S, J) factor (or None): the last few totals
        self.D0 = float(draws.data_scale)
        self.mask = f(draws.self_mask)
        self.E, self.A, self.alpha, self.x0 = f(draws.E), f(draws.A), f(draws.alpha), f(draws.x0)
        self.T = f(draws.T) * (1.0 - self.mask)[None]
        self.beta = np.where(self.T > 0, f(draws.beta), 1.0)
        # A bend (law "bend", or a stack holding it) steepens the reducible loss past xb; zero delta is none.
        delta = getattr(draws, "delta", None)
        self.delta = np.zeros_like(self.E) if delta is None else f(delta)
        self.xb = np.ones_like(self.E) if delta is None else np.exp(f(draws.log_xb))
        # Interference (law "interference"): other sources' data add kappa_ij per law unit, linearly.
        kappa = getattr(draws, "kappa", None)
        self.kappa = np.zeros_like(self.T) if kappa is None else f(kappa) * (1.0 - self.mask)[None]
        if noisy is not None:
            cols = list(noisy[0])
            if callable(noisy[1]):  # the noise is a column factor at each total (see factor())
                self.noise_at, factor = noisy[1], np.ones((self.E.shape[0], len(cols)))
            else:
                factor = np.exp(f(noisy[1]).reshape(self.E.shape[0], -1))
            self.E = np.concatenate([self.E, self.E[:, cols] * factor], axis=1)
            self.A = np.concatenate([self.A, self.A[:, cols] * factor], axis=1)
            self.alpha = np.concatenate([self.alpha, self.alpha[:, cols]], axis=1)
            self.x0 = np.concatenate([self.x0, self.x0[:, cols]], axis=1)
            self.delta = np.concatenate([self.delta, self.delta[:, cols]], axis=1)
            self.xb = np.concatenate([self.xb, self.xb[:, cols]], axis=1)
            self.kappa = np.concatenate([self.kappa, self.kappa[:, :, cols] * factor[:, None, :]], axis=2)
            self.mask = np.concatenate([self.mask, self.mask[:, cols]], axis=1)
            self.T = np.concatenate([self.T, self.T[:, :, cols]], axis=2)
            self.beta = np.concatenate([self.beta, self.beta[:, :, cols]], axis=2)
        self.S, self.I, self.J = self.T.shape[0], self.T.shape[1], self.T.shape[2]
        self._Tb = self._Tbb = None
        # The law's error past the fit runs' data, per column (a noisy column has its target's).
        slope_error = getattr(draws, "slope_error", None)
        self.slope_error = None
        if slope_error is not None and getattr(draws, "reach", None):
            cols = list(noisy[0]) if noisy is not None else []
            self.slope_error = np.concatenate([f(slope_error), f(slope_error)[:, cols]], axis=1)
        # Terms that are exactly zero (no bend, no interference) are skipped: the same numbers, to the
        # bit (x + 0 = x, y ** -0 = 1), for less time in every SQP iteration (benchmarks/bench_allocate.py).
        self._bend = bool(np.any(self.delta != 0))
        self._interference = bool(np.any(self.kappa != 0))

    def subset(self, index) -> LawEval:
        noisy = None
        if self.noisy is not None:
            noise = self.noisy[1]
            noisy = (self.noisy[0], (lambda total: noise(total)[index]) if callable(noise) else np.asarray(noise)[index])
        return LawEval(self.draws.subset(index), noisy, self.total)

    @property
    def depends_on_total(self) -> bool:
        """Whether the losses depend on the allocation's total beyond the law (slope error or noise at the total)."""
        return self.slope_error is not None or self.noise_at is not None

    def at_total(self, total: float | None) -> LawEval:
        """The same law with the factors of every allocation taken at ``total`` (None: at its own)."""
        return LawEval(self.draws, self.noisy, total)

    def _total(self, D) -> float:
        return self.total if self.total is not None else float(D.sum())

    def factor(self, total: float) -> np.ndarray | None:
        """(S, J) what every column's loss is multiplied by for an allocation of ``total`` raw data:
        ``exp`` of the slope error past the fit runs' data and, on the noisy columns, of one run's
        noise at that total (when it depends on it); None where both are absent."""
        total = float(total)
        if total in self._factors:
            return self._factors[total]
        log_f = None
        if self.slope_error is not None:  # per column already (a noisy column has its target's)
            distance = float(extrapolation_distance(np.array([total]), self.draws.reach))
            log_f = self.slope_error * distance if distance > 0.0 else None
        if self.noise_at is not None:
            noise = np.asarray(self.noise_at(total), dtype=np.float64).reshape(self.S, -1)
            pad = np.concatenate([np.zeros((self.S, self.J - noise.shape[1])), noise], axis=1)
            log_f = pad if log_f is None else log_f + pad
        out = None if log_f is None else np.exp(log_f)
        if len(self._factors) >= 8:
            self._factors.clear()
        self._factors[total] = out
        return out

    def concave_sources(self, targets_used) -> np.ndarray:
        """(I,) True where some used target gets transfer ``T d ** beta`` with ``beta < 1`` (infinite slope at 0)."""
        used = np.zeros(self.J, dtype=bool)
        used[list(targets_used)] = True
        hit = (self.T[:, :, used] > 0) & (self.beta[:, :, used] < 1.0)
        return hit.any(axis=(0, 2))

    def _x(self, d):
        pos = d > 0
        logd = np.log(np.where(pos, d, 1.0))
        pw = np.where(pos[None, :, None], np.exp(self.beta * logd[None, :, None]), 0.0)
        return self.x0 + (d @ self.mask)[None] + np.einsum("sij,sij->sj", self.T, pw), pw

    def _reducible(self, x) -> np.ndarray:
        """R(x), as :func:`reducible_and_slopes` has it, without the slopes (and the bend only where there is one)."""
        R = self.A * x ** (-self.alpha)
        return R * (1.0 + x / self.xb) ** (-self.delta) if self._bend else R

    def _interference_at(self, d):
        return np.einsum("i,sij->sj", d, self.kappa) if self._interference else 0.0

    def row_factors(self, Dm) -> np.ndarray | None:
        """(N, J) row ``n`` of raw allocations ``Dm`` under draw ``n``: :meth:`factor` at the row's total."""
        Dm = np.maximum(np.asarray(Dm, dtype=np.float64), 0.0)
        totals = np.full(Dm.shape[0], self.total) if self.total is not None else Dm.sum(axis=1)
        rows = [self.factor(t) for t in np.unique(totals)]
        if all(r is None for r in rows):
            return None
        out = np.ones((totals.size, self.J))
        for t, r in zip(np.unique(totals), rows):
            if r is not None:
                hit = np.flatnonzero(totals == t)
                out[hit] = r[hit]
        return out

    def values(self, D) -> np.ndarray:
        """(S, J) losses at one raw allocation."""
        D = np.maximum(np.asarray(D, dtype=np.float64), 0.0)
        d = D / self.D0
        with np.errstate(divide="ignore"):
            L = self.E + self._reducible(self._x(d)[0]) + self._interference_at(d)
        m = self.factor(self._total(D))
        return L if m is None else L * m

    def reducible(self, D) -> np.ndarray:
        """(S, J) reducible losses (the loss above ``E``, both at the allocation's total) at one raw allocation."""
        D = np.maximum(np.asarray(D, dtype=np.float64), 0.0)
        m = self.factor(self._total(D))
        return self.values(D) - (self.E if m is None else self.E * m)

    def many(self, allocations) -> np.ndarray:
        """(S, N, J) losses at N raw allocations."""
        Dm = np.atleast_2d(np.asarray(allocations, dtype=np.float64))
        out = np.empty((self.S, Dm.shape[0], self.J))
        for n in range(Dm.shape[0]):
            out[:, n] = self.values(Dm[n])
        return out

    def point(self, D, free) -> dict:
        """Losses and what gradients (:meth:`term_grad`) and Hessians (:meth:`hessian`) need, at a raw allocation
        (the factor of :meth:`factor` held fixed: exact at a fixed ``total``)."""
        D = np.maximum(np.asarray(D, dtype=np.float64), 0.0)
        m = self.factor(self._total(D))
        d = D / self.D0
        free = np.asarray(free)
        x, pw = self._x(d)
        if self._bend:
            R, c1, a = reducible_and_slopes(x, self.A, self.alpha, self.delta, self.xb)  # R, dL/dx, d2L/dx2 >= 0
        else:  # the same formulas with delta = 0
            R = self.A * x ** (-self.alpha)
            g = -self.alpha / x
            c1, a = R * g, R * (g * g + self.alpha / x**2)
        L = self.E + R + self._interference_at(d)
        ds = np.maximum(d[free], 1e-12)  # the slope of d ** beta is infinite at 0: evaluate just inside
        if self._Tb is None:
            self._Tb = self.T * self.beta
            self._Tbb = self._Tb * (self.beta - 1.0)
        # every source free, in order (the usual case): views instead of copies
        sel = slice(None) if np.array_equal(free, np.arange(self.I)) else free
        if np.all(d[free] > 0):
            pwm1 = pw[:, sel, :] / ds[None, :, None]  # d ** (beta - 1)
        else:
            pwm1 = np.exp((self.beta[:, sel, :] - 1.0) * np.log(ds)[None, :, None])
        dx = self.mask[sel][None] + self._Tb[:, sel, :] * pwm1  # (S, n, J)
        pwm1 /= ds[None, :, None]
        d2x = self._Tbb[:, sel, :] * pwm1  # (S, n, J), <= 0
        kappa = self.kappa[:, sel, :] if self._interference else None
        if m is not None:  # every column times its factor: L, its slopes in x and the interference
            L, c1, a = L * m, c1 * m, a * m
            kappa = None if kappa is None else kappa * m[:, None, :]
        return {"L": L, "dx": dx, "d2x": d2x, "c1": c1, "a": a, "kappa": kappa}

    def term_grad(self, pt, v) -> np.ndarray:
        """(S, n_free) gradients of f_s = L_s . v in the free raw amounts."""
        v = np.asarray(v)
        grad = np.einsum("snj,sj->sn", pt["dx"], pt["c1"] * v[None, :])
        return (grad if pt["kappa"] is None else grad + pt["kappa"] @ v) / self.D0

    def hessian(self, pt, W) -> np.ndarray:
        """sum_s sum_j W_sj * Hessian of L_sj in the free raw amounts (W >= 0, shape (S, J))."""
        rows = np.flatnonzero(np.any(W != 0, axis=1))
        n = pt["dx"].shape[1]
        if rows.size == 0 or n == 0:  # nothing weighted, or no free source (every cap 0)
            return np.zeros((n, n))
        W = W[rows]
        dx = pt["dx"][rows]
        n = dx.shape[1]
        X = np.transpose(dx, (0, 2, 1)).reshape(-1, n)  # (s j, n)
        H = X.T @ (X * (W * pt["a"][rows]).reshape(-1, 1))
        H += np.diag(np.einsum("sj,sij->i", W * pt["c1"][rows], pt["d2x"][rows]))
        return H / self.D0**2


# ------------------------------------------------------------------------------------ risk terms


@dataclasses.dataclass
class Term:
    """``risk`` over draws of ``f_s = L_s . v``; a constraint term asks ``risk <= 1`` (``v`` scaled by 1/tau)."""

    v: np.ndarray  # (J,)
    risk: str  # "mean" | "cvar" | "worst"
    gamma: float | None = None
    name: str = ""

    def tail(self, S: int) -> float:
        if self.risk == "worst":
            return 1.0
        if self.risk == "cvar":
            return max((1.0 - self.gamma) * S, 1.0)
        return float(S)

    def candidates(self, S: int, n_free: int) -> int:
        if self.risk == "mean":
            return 0
        return int(min(S, math.ceil(TAIL_FACTOR * self.tail(S)) + 2 * n_free + TAIL_EXTRA))


def tail_mean(f, n: float) -> float:
    """Exact CVaR of the empirical distribution with tail size n = (1 - gamma) S (>= 1): the mean of the
    n largest values, the last one counted fractionally."""
    f = np.asarray(f, dtype=np.float64)
    S = f.size
    if n >= S:
        return float(np.mean(f))
    k = int(math.floor(n + 1e-12))
    top = -np.partition(-f, min(k, S - 1))[: k + 1]
    top = np.sort(top)[::-1]
    total = top[:k].sum() + (n - k) * (top[k] if k < top.size else 0.0)
    return float(total / n)


def tail_weights(f, n: float) -> np.ndarray:
    """Weights (sum 1) of the CVaR as a weighted mean: 1/n on the n largest values, fractional at the edge."""
    S = f.size
    lam = np.zeros(S)
    if n >= S:
        lam[:] = 1.0 / S
        return lam
    order = np.argsort(-f, kind="stable")
    k = int(math.floor(n + 1e-12))
    lam[order[:k]] = 1.0 / n
    if k < S and n - k > 1e-12:
        lam[order[k]] = (n - k) / n
    return lam


def risk_value(term: Term, f) -> float:
    if term.risk == "mean":
        return float(np.mean(f))
    return tail_mean(f, term.tail(f.size))


# ------------------------------------------------------------------------------------ the program


@dataclasses.dataclass
class Solution:
    D: np.ndarray  # raw allocation over all sources
    objective: float  # unscaled objective (loss units, or spend)
    merit: float
    violation: float  # max relative violation of the chance constraints' CVaR (<= 0: met)
    iterations: int
    qp_solves: int
    seconds: float
    solver: str
    converged: bool
    notes: list
    lower_bound: float = float("nan")
    gap: float = float("nan")
    rel_gap: float = float("nan")
    duals: dict = dataclasses.field(default_factory=dict)  # polytope row name -> multiplier (objective units)
    term_values: dict = dataclasses.field(default_factory=dict)


class RiskProgram:
    """One compiled program: ``solve()`` any number of times with new budgets, weights or bounds.

    ``obj_terms``: the objective terms (one for mean/cvar/worst, one per target for minimax,
    none for ``mode="spend"``); ``con_terms``: chance terms, ``v`` already divided by tau.
    ``A_lin, b_lin``: the polytope rows *other than* bounds (budget, groups) over all sources;
    ``budget_row``: index of the budget row in them (or None); ``lower, upper``: bounds;
    ``fixed``: sources held at ``lower``.
    """

    def __init__(self, law: LawEval, obj_terms, con_terms, mode, *, A_lin, b_lin, row_names, lower, upper, fixed,
                 costs, unit, pilot: bool = True, rhs=None):
        self.law = law
        self.obj_terms = list(obj_terms)
        self.con_terms = list(con_terms)
        self.mode = mode  # "single" | "minimax" | "spend"
        self.costs = np.asarray(costs, dtype=np.float64)
        self.fixed = np.asarray(fixed, dtype=bool)
        self.free = np.flatnonzero(~self.fixed)
        self.n = self.free.size
        self.A_lin = np.asarray(A_lin, dtype=np.float64).reshape(-1, law.I)
        self.b_lin = np.asarray(b_lin, dtype=np.float64)
        self.row_names = list(row_names)
        self._rhs_fn = rhs  # budget -> right-hand sides of the linear rows (default: replace the budget row)
        self.lower = np.asarray(lower, dtype=np.float64)
        self.upper = np.asarray(upper, dtype=np.float64)
        self.unit = np.asarray(unit, dtype=np.float64)[self.free]  # y = D_free / unit
        used = {j for t in self.obj_terms + self.con_terms for j in np.flatnonzero(t.v)}
        self.concave = law.concave_sources(sorted(used))[self.free]
        self.use_pilot = pilot and law.S > 2 * PILOT_DRAWS
        self.set_law(law)
        self.obj_scale = 1.0
        self.rho = 10.0
        self._qps = {}

    # -- evaluation ------------------------------------------------------------------------


    def set_law(self, law: LawEval) -> None:
        """Solve under ``law`` from now on (the same draws and columns, e.g. at another total)."""
        self.law = law
        self.pilot_law = law.subset(np.linspace(0, law.S - 1, PILOT_DRAWS).astype(int)) if self.use_pilot else None
    def term_values(self, law: LawEval, L) -> list[float]:
        return [risk_value(t, L @ t.v) for t in self.obj_terms + self.con_terms]

    def objective_of(self, D, values) -> float:
        """Unscaled objective from the term values (or the spend)."""
        if self.mode == "spend":
            return float(self.costs @ D)
        k = len(self.obj_terms)
        return float(max(values[:k])) if self.mode == "minimax" else float(values[0])

    def merit(self, D, values) -> tuple[float, float]:
        """(scaled merit, max chance violation) at D."""
        obj = self.objective_of(D, values) / self.obj_scale
        viol = [values[len(self.obj_terms) + c] - 1.0 for c in range(len(self.con_terms))]
        worst = max(viol) if viol else 0.0
        return obj + self.rho * sum(max(v, 0.0) for v in viol), worst

    # -- the subproblem --------------------------------------------------------------------

    def _ensure_qp(self, S: int):
        """The compiled subproblem for problems on S draws (the full set, or the pilot subset)."""
        if S not in self._qps:
            A = self.A_lin[:, self.free] * self.unit[None, :] if self.A_lin.size else np.zeros((0, self.n))
            sizes = [t.candidates(S, self.n) for t in self.obj_terms + self.con_terms]
            self._qps[S] = (QPSubproblem(self.n, self.obj_terms, self.con_terms, self.mode, sizes, A), sizes)
        return self._qps[S]

    def rhs(self, budget) -> np.ndarray:
        """Right-hand sides of the linear rows at ``budget``."""
        if self._rhs_fn is not None:
            return np.asarray(self._rhs_fn(budget), dtype=np.float64)
        b = self.b_lin.copy()
        if budget is not None and "budget" in self.row_names:
            b[self.row_names.index("budget")] = budget
        return b

    def _set_static(self, qp, budget_rhs):
        """Right-hand sides of the linear rows (the fixed sources' part moved over) and the cost vector."""
        if self.A_lin.shape[0]:
            D_fixed = np.where(self.fixed, self.lower, 0.0)
            b = self.rhs(budget_rhs) - self.A_lin @ D_fixed
            qp.b_lin.value = b
        if self.mode == "spend":
            qp.cost.value = self.costs[self.free] * self.unit / self.obj_scale
        qp.rho.value = self.rho

    def _hi(self, budget):
        hi = self.upper[self.free].copy()
        if budget is not None:
            hi = np.minimum(hi, budget / self.costs[self.free])
        hi = np.where(np.isfinite(hi), hi, self._spend_cap / self.costs[self.free])
        return hi / self.unit

    def _lagrangian_weights(self, k, term, S, f, n_obj, multipliers):
        """Per-draw weights of term k in the Hessian of the Lagrangian (they sum to its multiplier)."""
        if multipliers is not None and multipliers[k] is not None and multipliers[k].shape[0] == S:
            return multipliers[k]
        base = np.full(S, 1.0 / S) if term.risk == "mean" else tail_weights(f, term.tail(S))
        if self.mode == "minimax" and k < n_obj:
            return base / n_obj
        return base

    def _iterate(self, law: LawEval, D, budget, notes, tol, max_iter):
        """SQP iterations on ``law`` from a start D that lies in the polytope; returns (D, info)."""
        S = law.S
        qp, sizes = self._ensure_qp(S)
        self._set_static(qp, budget)
        terms = self.obj_terms + self.con_terms
        n_obj = len(self.obj_terms)
        lo_bound = self.lower[self.free] / self.unit
        qp.hi.value = np.maximum(self._hi(budget), lo_bound)
        L = law.values(D)
        values = self.term_values(law, L)
        phi, viol = self.merit(D, values)
        solver_used, solves, converged = None, 0, False
        multipliers = None
        it = 0
        for it in range(1, max_iter + 1):
            pt = law.point(D, self.free)
            yk = D[self.free] / self.unit
            Hsum = np.zeros((self.n, self.n))
            chosen = []
            for k, (term, entry, size) in enumerate(zip(terms, qp.terms, sizes)):
                scale = (1.0 / self.obj_scale) if k < n_obj else 1.0
                f = pt["L"] @ term.v
                g = law.term_grad(pt, term.v) * self.unit[None, :]  # d f / d y
                if term.risk == "mean":
                    gbar = g.mean(axis=0) * scale
                    entry["a"].value = gbar
                    entry["b"].value = float(f.mean() * scale - gbar @ yk)
                    chosen.append(None)
                else:
                    m = min(size, S)
                    idx = np.argpartition(-f, m - 1)[:m] if m < S else np.arange(S)
                    G = np.zeros((size, self.n))
                    f0 = np.full(size, PAD)
                    G[:m] = g[idx] * scale
                    f0[:m] = f[idx] * scale - G[:m] @ yk
                    entry["G"].value = G
                    entry["f0"].value = f0
                    entry["coef"].value = 1.0 / term.tail(S)
                    chosen.append(idx)
                weight = self._lagrangian_weights(k, term, S, f, n_obj, multipliers)
                Hsum += law.hessian(pt, np.outer(weight, term.v)) * scale
            Hy = Hsum * np.outer(self.unit, self.unit)
            evals, evecs = np.linalg.eigh(0.5 * (Hy + Hy.T))
            floor = 1e-10 * max(float(np.max(np.abs(evals))), 1e-6)
            Rm = (evecs * np.sqrt(np.maximum(evals, floor))).T
            qp.R.value = Rm
            qp.r.value = Rm @ yk
            lo = np.where(self.concave, np.maximum(lo_bound, yk / KAPPA), lo_bound)
            qp.lo.value = np.minimum(lo, qp.hi.value)
            qp.rho.value = self.rho
            solver = qp.solve(notes)
            solves += 1
            if solver is None:
                break
            solver_used = solver
            qp_value = float(qp.problem.value)
            y_new = np.clip(np.asarray(qp.y.value, dtype=np.float64), qp.lo.value, qp.hi.value)
            D_new = D.copy()
            D_new[self.free] = y_new * self.unit
            # The subproblem's multipliers weight the draws in the next Hessian.
            multipliers = []
            for k, (term, entry) in enumerate(zip(terms, qp.terms)):
                if term.risk == "mean":
                    pi = 1.0
                    if self.mode == "minimax" and k < n_obj:
                        pi = float(max(qp.epi[k].dual_value or 0.0, 0.0))
                    multipliers.append(np.full(S, pi / S))
                    continue
                dual = entry["hinge"].dual_value
                if dual is None:
                    multipliers.append(None)
                    continue
                full = np.zeros(S)
                idx = chosen[k]
                full[idx] = np.maximum(np.asarray(dual, dtype=np.float64)[: idx.size], 0.0)
                multipliers.append(full)
            if self.con_terms:
                mus = [float(max(c.dual_value or 0.0, 0.0)) for c in qp.chance]
                if max(mus) > 0.5 * self.rho:
                    self.rho = 2.0 * max(mus) + 1.0
                    phi, viol = self.merit(D, values)
            dec = phi - qp_value
            # Converged when the model predicts (almost) no decrease *and* the step is small relative to
            # every amount: a source with a tiny amount and a huge curvature can predict little decrease
            # while its gradient is still visibly off (which the certificate would show).
            rel_step = float(np.max(np.abs(y_new - yk) / np.maximum(np.abs(yk), 1e-9))) if self.n else 0.0
            small = dec <= tol * max(1.0, abs(phi))
            if small and (rel_step <= 1e-7 or dec <= 1e-15 * max(1.0, abs(phi))):
                converged = True
                break
            step, accepted = 1.0, False
            while step > 1e-10:
                D_try = D + step * (D_new - D)
                L_try = law.values(D_try)
                v_try = self.term_values(law, L_try)
                phi_try, viol_try = self.merit(D_try, v_try)
                if phi_try <= phi - 1e-4 * step * dec:
                    accepted = True
                    break
                step *= 0.5
            if not accepted:
                converged = dec <= 1e-6 * max(1.0, abs(phi))
                if not small:  # below the tolerance a failed line search only means float precision is reached
                    notes.append(f"line search stalled at iteration {it} (predicted decrease {dec:.1e})")
                break
            D, L, values, phi, viol = D_try, L_try, v_try, phi_try, viol_try
        self._last_point = (D.copy(), pt) if converged else None
        self._last_multipliers = multipliers
        return D, {"iterations": it, "solves": solves, "solver": solver_used, "converged": converged,
                   "values": values, "phi": phi, "violation": viol}

    def _polish(self, D, budget, info, steps: int = 4):
        """Newton steps on the smooth piece at D: the active bounds and rows held, solved exactly in NumPy.

        The QP subproblems resolve a step only to their solver's tolerance; along a stiff direction
        (a tiny amount with a steep ``d ** beta``) that leaves the gradient visibly unbalanced while the
        objective is already optimal to ~1e-13. A step is kept only if it stays feasible and does not
        raise the exact objective."""
        law, free, unit = self.law, self.free, self.unit
        term = self.obj_terms[0]
        S = law.S
        b_all = self.rhs(budget) - self.A_lin @ np.where(self.fixed, self.lower, 0.0) if self.A_lin.size else None
        A = self.A_lin[:, free] * unit[None, :] if self.A_lin.size else np.zeros((0, self.n))
        lo = self.lower[free] / unit
        hi = self._hi(budget)
        values = info["values"]
        best = self.objective_of(D, values)
        n_tail = term.tail(S)
        duals = getattr(self, "_last_multipliers", None)
        duals = duals[0] if duals and duals[0] is not None and duals[0].shape[0] == S else None
        for _ in range(steps):
            pt = law.point(D, free)
            f = pt["L"] @ term.v
            G_all = law.term_grad(pt, term.v) * unit[None, :]
            y = D[free] / unit
            tied = np.zeros(0, dtype=int)
            if term.risk == "mean":
                lam = np.full(S, 1.0 / S)
            elif duals is not None:
                # the subproblem's multipliers: 1/n on the strict tail, in between on draws tied at the VaR
                cap = 1.0 / n_tail
                lam = np.where(duals >= cap * (1 - 1e-6), cap, 0.0)
                tied = np.flatnonzero((duals > 1e-6 * cap) & (duals < cap * (1 - 1e-6)))
            else:
                lam = tail_weights(f, n_tail)
            if tied.size:
                lam_h = lam.copy()
                lam_h[tied] = duals[tied]
            else:
                lam_h = lam
            g = lam @ G_all
            H = law.hessian(pt, np.outer(lam_h, term.v)) * np.outer(unit, unit)
            tol = 1e-9 * np.maximum(np.abs(y), 1e-12)
            inner = np.flatnonzero((y > lo + tol) & (y < hi - tol))
            if inner.size == 0:
                break
            rows = np.zeros(0, dtype=int)
            if b_all is not None:
                slack = b_all - A @ y
                rows = np.flatnonzero(slack <= 1e-9 * np.maximum(np.abs(b_all), 1.0))
            C = A[np.ix_(rows, inner)]
            k, m, t = inner.size, rows.size, tied.size
            # unknowns: step (k), eta step (1 if tied draws), tie multipliers (t), row multipliers (m)
            e = 1 if t else 0
            K = np.zeros((k + e + t + m, k + e + t + m))
            rhs = np.zeros(k + e + t + m)
            K[:k, :k] = H[np.ix_(inner, inner)]
            rhs[:k] = -g[inner]
            if t:
                Gt = G_all[np.ix_(tied, inner)]
                eta = float(np.mean(f[tied]))
                K[:k, k + 1:k + 1 + t] = Gt.T  # stationarity in y: + sum nu_s grad f_s
                K[k, k + 1:k + 1 + t] = -1.0  # stationarity in eta: (n - |tail|)/n - sum nu = 0
                rhs[k] = -(1.0 - lam.sum())
                K[k + 1:k + 1 + t, :k] = Gt  # f_s + grad f_s . step - (eta + d eta) = 0 on the tied draws
                K[k + 1:k + 1 + t, k] = -1.0
                rhs[k + 1:k + 1 + t] = eta - f[tied]
            K[:k, k + e + t:] = C.T
            K[k + e + t:, :k] = C
            if m:
                rhs[k + e + t:] = b_all[rows] - A[rows] @ y
            try:
                step = np.linalg.lstsq(K, rhs, rcond=1e-14)[0][:k]
            except np.linalg.LinAlgError:
                break
            y_new = y.copy()
            y_new[inner] += step
            if np.any(y_new < lo - tol) or np.any(y_new > hi + tol):
                break
            if b_all is not None and np.any(A @ y_new - b_all > 1e-12 * np.maximum(np.abs(b_all), 1.0)):
                break
            D_new = D.copy()
            D_new[free] = np.clip(y_new, lo, hi) * unit
            v_new = self.term_values(law, law.values(D_new))
            obj = self.objective_of(D_new, v_new)
            if not obj <= best:
                break
            D, values, best = D_new, v_new, obj
            if np.max(np.abs(step) / np.maximum(np.abs(y[inner]), 1e-12)) < 1e-12:
                break
        info = dict(info, values=values, phi=best / self.obj_scale)
        return D, info

    # -- public ----------------------------------------------------------------------------

    def solve(self, start, *, budget=None, spend_cap=None, certify: bool = True, tol: float = DEC_TOL,
              max_iter: int = MAX_ITER, warm: bool = False) -> Solution:
        """Solve from ``start`` (raw, feasible for the polytope). ``budget`` replaces the budget row's
        right-hand side; ``spend_cap`` bounds uncapped sources in the least-budget problem."""
        t0 = time.perf_counter()
        notes: list[str] = []
        D = np.asarray(start, dtype=np.float64).copy()
        self._spend_cap = float(spend_cap) if spend_cap is not None else float(
            (budget if budget is not None else self.costs @ D) * 1e3 + 1.0)
        values = self.term_values(self.law, self.law.values(D))
        ref = self.objective_of(D, values)
        self.obj_scale = abs(ref) if math.isfinite(ref) and abs(ref) > 1e-12 else 1.0
        iterations = solves = 0
        solver = None
        if self.use_pilot and not warm:
            D, info = self._iterate(self.pilot_law, D, budget, notes, 1e-7, max_iter)
            iterations += info["iterations"]
            solves += info["solves"]
            solver = info["solver"]
            notes = [n for n in notes if not n.startswith("line search")]
        D, info = self._iterate(self.law, D, budget, notes, tol, max_iter)
        iterations += info["iterations"]
        solves += info["solves"]
        solver = info["solver"] or solver
        values = info["values"]
        sol = Solution(
            D=D, objective=self.objective_of(D, values), merit=info["phi"], violation=info["violation"],
            iterations=iterations, qp_solves=solves, seconds=0.0, solver=solver or "none",
            converged=info["converged"], notes=notes,
            term_values={t.name: v for t, v in zip(self.obj_terms + self.con_terms, values)},
        )
        if certify:
            can_polish = self.mode == "single" and not self.con_terms and self.n > 0
            self.certify(sol, budget, refine=not can_polish)
            if not (sol.rel_gap <= POLISH_ABOVE) and can_polish:
                # Newton steps on the active piece, then certify again; kept only if the bound is tighter
                D2, info2 = self._polish(D, budget, info)
                if not np.array_equal(D2, D):
                    self._last_point = None
                    trial = dataclasses.replace(sol, D=D2, objective=self.objective_of(D2, info2["values"]),
                                                merit=info2["phi"], notes=list(sol.notes), term_values={
                                                    t.name: v for t, v in zip(self.obj_terms, info2["values"])})
                    self.certify(trial, budget)
                    if trial.objective <= sol.objective and trial.rel_gap < sol.rel_gap:
                        sol = trial
                elif not (sol.rel_gap <= REFINE_ABOVE):
                    self.certify(sol, budget)
        sol.seconds = time.perf_counter() - t0
        return sol

    # -- certificate -----------------------------------------------------------------------

    def certify(self, sol: Solution, budget, refine: bool = True) -> None:
        """Certified lower bound, gap and polytope duals at ``sol.D`` (see the module docstring).

        Works in the free sources (the fixed ones are constants). Polytope rows: the linear
        rows (budget, groups), the bounds of the free sources, and in the least-budget problem
        ``spend <= spend(D^)`` (it cannot cut off an optimum, and it bounds the box)."""
        from scipy.optimize import linprog

        law, D = self.law, sol.D
        S = law.S
        free = self.free
        n = self.n
        terms = self.obj_terms + self.con_terms
        n_obj = len(terms) - len(self.con_terms)
        if n == 0:  # nothing to choose
            sol.lower_bound, sol.gap, sol.rel_gap = sol.objective, 0.0, 0.0
            return
        last = getattr(self, "_last_point", None)
        pt = last[1] if last is not None and last[1]["L"].shape[0] == S and np.array_equal(last[0], D) else law.point(D, free)
        self._D_hat = np.asarray(D, dtype=np.float64).copy()
        D_fixed = np.where(self.fixed, self.lower, 0.0)
        rows, rhs, names = [], [], []
        b_all = self.rhs(budget)
        for k, name in enumerate(self.row_names):
            b = b_all[k]
            rows.append(self.A_lin[k, free])
            rhs.append(b - self.A_lin[k] @ D_fixed)
            names.append(name)
        for p, i in enumerate(free):
            if np.isfinite(self.upper[i]):
                rows.append(np.eye(n)[p])
                rhs.append(self.upper[i])
                names.append(f"upper:{i}")
            rows.append(-np.eye(n)[p])
            rhs.append(-self.lower[i])
            names.append(f"lower:{i}")
        spend_ub = None
        if self.mode == "spend":
            spend_ub = float(self.costs[free] @ D[free]) * (1 + 1e-12)
            rows.append(self.costs[free])
            rhs.append(spend_ub)
            names.append("spend_ub")
        # In the scaled units y = D / unit, rows normalised: the LP is well conditioned.
        A = np.array(rows) * self.unit[None, :]
        b = np.array(rhs)
        row_scale = np.maximum(np.max(np.abs(A), axis=1), 1e-300)
        A = A / row_scale[:, None]
        b = b / row_scale
        Df = D[free] / self.unit
        # LP variables: nu (candidate draws of each CVaR term), one multiplier per term, polytope duals u.
        blocks = []  # (k, idx or None, const = f - g.D, g)
        col = 0
        for k, term in enumerate(terms):
            scale = (1.0 / self.obj_scale) if k < n_obj else 1.0
            f = (pt["L"] @ term.v) * scale
            g = law.term_grad(pt, term.v) * (scale * self.unit)[None, :]
            if term.risk == "mean":
                gbar = g.mean(axis=0)
                blocks.append((k, None, float(f.mean() - gbar @ Df), gbar, None, col))
            else:
                # the draws that can carry weight at D^: the tail and a margin (any subset gives a valid bound)
                m = int(min(S, math.ceil(CERT_FACTOR * term.tail(S)) + 2 * n + TAIL_EXTRA))
                idx = np.argpartition(-f, m - 1)[:m] if m < S else np.arange(S)
                blocks.append((k, idx, f[idx] - g[idx] @ Df, g[idx], term.tail(S), col))
                col += m
        m_start = col
        u_start = m_start + len(terms)
        nv = u_start + A.shape[0]
        import scipy.sparse as sp

        c = np.zeros(nv)  # minimise -LB
        eq_blocks, eq_rhs, ub_blocks = [], [], []
        Hmat = np.zeros((n, nv))  # h = Hmat @ x (+ cost)
        for (k, idx, const, g, n_tail, start) in blocks:
            if idx is None:
                c[m_start + k] -= const
                Hmat[:, m_start + k] += g
                continue
            m = idx.size
            c[start:start + m] -= const
            Hmat[:, start:start + m] += g.T
            # sum nu = multiplier; nu <= multiplier / n_tail
            eq_blocks.append(sp.csr_matrix((np.r_[np.ones(m), -1.0], (np.zeros(m + 1, dtype=int),
                                            np.r_[start + np.arange(m), m_start + k])), shape=(1, nv)))
            eq_rhs.append(0.0)
            rows_i = np.r_[np.arange(m), np.arange(m)]
            cols_i = np.r_[start + np.arange(m), np.full(m, m_start + k)]
            ub_blocks.append(sp.csr_matrix((np.r_[np.ones(m), np.full(m, -1.0 / n_tail)], (rows_i, cols_i)),
                                           shape=(m, nv)))
        for k in range(n_obj, len(terms)):
            c[m_start + k] += 1.0
        c[u_start:] += b
        Hmat[:, u_start:] = A.T
        cost_h = self.costs[free] * self.unit / self.obj_scale if self.mode == "spend" else np.zeros(n)
        eq_blocks.append(sp.csr_matrix(Hmat))
        eq_rhs.extend(-cost_h)
        bounds = [(0.0, None)] * nv
        if self.mode == "single":
            bounds[m_start] = (1.0, 1.0)
        elif self.mode == "minimax":
            row = np.zeros((1, nv))
            row[0, m_start:m_start + n_obj] = 1.0
            eq_blocks.append(sp.csr_matrix(row))
            eq_rhs.append(1.0)
        for k in range(n_obj, len(terms)):
            bounds[m_start + k] = (0.0, 1e8)
        A_ub = sp.vstack(ub_blocks).tocsr() if ub_blocks else None
        res = linprog(c, A_ub=A_ub, b_ub=np.zeros(A_ub.shape[0]) if A_ub is not None else None,
                      A_eq=sp.vstack(eq_blocks).tocsr(), b_eq=np.array(eq_rhs), bounds=bounds, method="highs",
                      options=CERT_LP_OPTIONS)
        if res.status != 0 or res.x is None:
            sol.notes.append(f"certificate LP failed ({res.message.strip()}); no certified gap")
            return
        x = res.x
        # Clip the multipliers into their sets, then evaluate the bound with NumPy.
        parts = []
        for (k, idx, const, g, n_tail, start) in blocks:
            if idx is None:
                m = 1.0 if self.mode == "single" else max(x[m_start + k], 0.0)
                parts.append((k, None, m, const, g))
            else:
                nu = np.maximum(x[start:start + idx.size], 0.0)
                m = max(float(nu.sum()), n_tail * float(nu.max()) if nu.size else 0.0)
                parts.append((k, nu, m, const, g))
        mass = sum(p[2] for p in parts if p[0] < n_obj)
        shrink = 1.0 / max(1.0, mass)  # objective multipliers: total <= 1 (valid since every f >= 0)
        lb = 0.0
        h = cost_h.copy()
        parts = [(k, nu, m, const, g, blk[1]) for (k, nu, m, const, g), blk in zip(parts, blocks)]
        for (k, nu, m, const, g, _) in parts:
            s = shrink if k < n_obj else 1.0
            if nu is None:
                lb += s * m * const
                h += s * m * g
            else:
                lb += s * float(nu @ const)
                h += s * (g.T @ nu)
            if k >= n_obj:
                lb -= m
        lcore = lb  # l(y^) - h . y^ : the constant of the Lagrangian's tangent at y^
        u = np.maximum(x[u_start:], 0.0)
        lb -= float(u @ b)
        r = h + A.T @ u  # ~0; charge what is left against the box the polytope implies
        lo_box = self.lower[free]
        hi_box = self.upper[free].copy()
        cap_spend = (budget - self.costs @ D_fixed) if budget is not None else spend_ub
        if cap_spend is not None:
            hi_box = np.minimum(hi_box, max(cap_spend, 0.0) / self.costs[free])
        lo_box, hi_box = lo_box / self.unit, hi_box / self.unit
        corr = np.where(r < 0, r * hi_box, r * lo_box)
        corr = np.where(r == 0, 0.0, corr)
        lb += float(np.sum(corr)) if np.all(np.isfinite(corr)) else -np.inf
        obj_scaled = sol.objective / self.obj_scale
        if refine and (obj_scaled - lb) > REFINE_ABOVE * max(abs(obj_scaled), 1e-12) and np.all(np.isfinite(hi_box)):
            # The linearisation bound is loose along a stiff direction (a tiny amount with a steep
            # d ** beta): tighten it with Kelley cuts of the same (convex) Lagrangian.
            lb = max(lb, self._refine(parts, n_obj, shrink, cost_h, A, b, lo_box, hi_box, Df, h, lcore, obj_scaled))
        LB = lb * self.obj_scale
        sol.lower_bound = float(LB)
        # A valid bound lies below the objective, up to rounding: one above it is a bug, not a gap of 0.
        if LB - sol.objective > CERT_SLACK * max(abs(sol.objective), 1e-12):
            sol.notes.append(f"certificate error: the lower bound {LB:.9g} exceeds the objective {sol.objective:.9g}; "
                             "no gap is certified (a bug: please report it)")
            sol.gap = sol.rel_gap = float("nan")
        else:
            sol.gap = float(max(sol.objective - LB, 0.0))
            sol.rel_gap = float(sol.gap / max(abs(sol.objective), 1e-12))
        duals: dict[str, float] = {}
        for k, name in enumerate(names):
            if name != "spend_ub":
                duals[name] = duals.get(name, 0.0) + float(u[k] / row_scale[k]) * self.obj_scale
        sol.duals = duals


def _box_min(r, lo, hi) -> float:
    """min over lo <= y <= hi of r . y."""
    with np.errstate(invalid="ignore"):
        terms = np.where(r < 0, r * hi, r * lo)
    terms = np.where(r == 0, 0.0, terms)
    return float(np.sum(terms)) if np.all(np.isfinite(terms)) else -np.inf


def _refine_method(self, parts, n_obj, shrink, cost_h, A, b, lo, hi, y_hat, h0, lcore, target) -> float:
    """A tighter certified lower bound: Kelley cuts of the Lagrangian l (fixed multipliers) on the polytope.

    Every cut ``l(z) + grad l(z) . (y - z)`` is below the convex ``l``; for any cut weights ``lam`` (sum 1)
    and row duals ``u >= 0`` the value ``sum lam_k a_k - u . b + min_box (sum lam_k g_k + A' u) . y`` is a
    lower bound on ``min_P l`` (weak duality over the box), hence on the optimum.
    """
    from scipy.optimize import linprog

    law, free, n = self.law, self.free, self.n
    floor = 1e-9 * np.maximum(hi, 1e-12)

    def lagrangian(y):
        D = self._D_hat.copy()
        D[free] = y * self.unit
        pt = law.point(D, free)
        value, grad = 0.0, cost_h.copy()
        value += float(cost_h @ y)
        terms = self.obj_terms + self.con_terms
        for (k, nu, m, _, _, idx) in parts:
            s = shrink if k < n_obj else 1.0
            scale = (1.0 / self.obj_scale) if k < n_obj else 1.0
            f = (pt["L"] @ terms[k].v) * scale
            g = law.term_grad(pt, terms[k].v) * (scale * self.unit)[None, :]
            if nu is None:
                value += s * m * float(f.mean())
                grad += s * m * g.mean(axis=0)
            else:
                value += s * float(nu @ f[idx])
                grad += s * (g[idx].T @ nu)
            if k >= n_obj:
                value -= m
        return value, grad

    cuts_a, cuts_g = [lcore], [h0]
    best = -np.inf
    for _ in range(REFINE_ITER):
        K = len(cuts_a)
        G = np.array(cuts_g)
        # variables (y, t): min t  s.t.  g_k . y - t <= -a_k ;  A y <= b ;  lo <= y <= hi
        A_ub = np.vstack([np.hstack([G, -np.ones((K, 1))]), np.hstack([A, np.zeros((A.shape[0], 1))])])
        b_ub = np.concatenate([-np.array(cuts_a), b])
        c = np.zeros(n + 1)
        c[-1] = 1.0
        res = linprog(c, A_ub=A_ub, b_ub=b_ub, bounds=[(lo[i], hi[i]) for i in range(n)] + [(None, None)],
                      method="highs", options=CERT_LP_OPTIONS)
        if res.status != 0:
            break
        lam = np.maximum(-np.asarray(res.ineqlin.marginals[:K]), 0.0)
        u = np.maximum(-np.asarray(res.ineqlin.marginals[K:]), 0.0)
        if lam.sum() <= 0:
            break
        lam = lam / lam.sum()
        r = lam @ G + A.T @ u
        bound = float(lam @ np.array(cuts_a)) - float(u @ b) + _box_min(r, lo, hi)
        best = max(best, bound)
        if target - best <= 1e-10 * max(abs(target), 1e-12):
            break
        z = np.maximum(res.x[:n], floor)  # evaluate inside the domain (value and slope at the same point)
        value, grad = lagrangian(z)
        cuts_a.append(value - float(grad @ z))
        cuts_g.append(grad)
    return best


RiskProgram._refine = _refine_method
