"""Choose how much of each data domain to pretrain on: exact risk-aware programs over posterior draws.

Decision: raw data amounts ``D`` (one per source domain). Each posterior draw ``s`` gives the
law loss ``L_j(D; theta_s)`` of every target ``j``, convex in ``D`` (see :mod:`bayescale.laws.power`).
With target weights ``w`` (optionally each target's loss divided by its posterior-mean loss at
the uniform split, ``normalise=True``, so domains with different loss scales compare):

- objectives (``objective=``): ``mean`` of ``f_s = sum_j w_j L_j``; ``cvar:GAMMA`` (the exact
  Rockafellar-Uryasev CVaR of the empirical distribution of ``f_s``: the mean of the worst
  ``(1 - GAMMA)`` share of draws, fractional at the edge); ``worst`` (the max over draws);
  ``minimax`` (the worst target's posterior-mean weighted loss), ``minimax:cvar:GAMMA``,
  ``minimax:worst`` (the worst target's CVaR / max over draws);
- constraints: budget ``sum_i c_i D_i <= B`` with per-domain costs, caps, minimums, fixed
  domains, group shares (:mod:`bayescale.optimise.constraints`) and chance constraints
  ``P(L_j(D) <= tau) >= p`` through their convex CVaR approximation, checked on held-out draws;
- ``min_budget=True``: the least (cost-weighted) budget that meets every chance constraint.

The programs are solved exactly by :class:`bayescale.optimise.riskprog.RiskProgram` (SQP whose
quadratic subproblems cvxpy compiles once, with a certified duality gap); every reported
objective is the NumPy evaluation :func:`objective_values`. Around the recommendation:
baselines and the value of transfer (:mod:`bayescale.optimise.baselines`), the posterior distribution of
the optimal allocation, whole-unit rounding (:mod:`bayescale.optimise.decisions`) and an allocation path
over budgets.
"""

from __future__ import annotations

import math
import numbers
import time

import numpy as np

from bayescale.optimise import baselines as bl
from bayescale.optimise import decisions as dec
from bayescale.optimise.constraints import (
    InfeasibleError,
    Objective,
    Spec,
    build_spec,
    check_budget,
    check_linear,
    irreducible_check,
    parse_budgets,
)
from bayescale.optimise.constraints import parse_objective as _parse_objective
from bayescale.errors import InputError
from bayescale.inference.posterior import LawDraws
from bayescale.evaluate.predict import summarise
from bayescale.optimise.riskprog import FEAS_TOL, GAP_TOL, LawEval, Projector, RiskProgram, Term, tail_mean

OBJECTIVES = ("mean", "cvar:GAMMA", "worst", "minimax", "minimax:cvar:GAMMA", "minimax:worst")
BINDING_TOL = 1e-5  # an allocation within this share of the budget of a bound counts as binding
CHANCE_MARGIN = 1e-9  # chance thresholds are tightened by this share inside the program
TEMPERATURE = 3.0  # default temperature of the temperature-sampling baseline
UNCERTAINTY_DRAWS = 200  # default number of draws of the per-draw optima


# ------------------------------------------------------------------------------------ evaluation


def parse_objective(text) -> Objective:
    """``"mean"``, ``"cvar:0.9"``, ``"worst"``, ``"minimax"``, ``"minimax:cvar:0.9"`` -> :class:`Objective`."""
    return _parse_objective(text)


def law_losses(draws: LawDraws, allocation_raw) -> np.ndarray:
    """Law loss of every target under every draw, in float64: (I,) raw allocation -> (S, J)."""
    D = np.asarray(allocation_raw, dtype=np.float64).reshape(-1)
    if D.shape[0] != len(draws.sources):
        raise ValueError(f"allocation has {D.shape[0]} entries, the posterior has {len(draws.sources)} sources")
    return LawEval(draws).values(D)


def empirical_cvar(values, gamma: float) -> float:
    """Exact CVaR of the empirical distribution of ``values`` at level ``gamma``.

    Evaluates the Rockafellar-Uryasev function ``eta + mean(max(v - eta, 0)) / (1 - gamma)``
    at every candidate ``eta = v_k``; it is convex and piecewise linear with kinks only
    there, so the smallest of these is its exact minimum.
    """
    v = np.sort(np.asarray(values, dtype=np.float64).reshape(-1))
    n = v.size
    above = np.concatenate([np.cumsum(v[::-1])[::-1][1:], [0.0]])
    excess = above - (n - 1 - np.arange(n)) * v
    ru = v + np.maximum(excess, 0.0) / ((1.0 - gamma) * n)
    return float(np.min(ru))


def _risk(values, risk: str, gamma) -> float:
    values = np.asarray(values, dtype=np.float64)
    if risk == "mean":
        return float(np.mean(values))
    if risk == "worst":
        return float(np.max(values))
    return empirical_cvar(values, gamma)


def objective_values(draws: LawDraws, allocation_raw, objective="mean", weights_vector=None) -> float:
    """The objective at one raw allocation, evaluated with NumPy over all of ``draws``.

    ``objective``: a string (``"mean"``, ``"cvar:0.9"``, ``"worst"``, ``"minimax:cvar:0.9"``)
    or an :class:`~bayescale.optimise.constraints.Objective`; ``weights_vector``: (J,) effective target
    weights (default 1 each; include any normalisation).
    """
    obj = parse_objective(objective) if not isinstance(objective, tuple) else Objective(*objective)
    w = np.ones(len(draws.targets)) if weights_vector is None else np.asarray(weights_vector, dtype=np.float64)
    losses = law_losses(draws, allocation_raw)
    keep = w > 0  # targets with weight 0 do not count, even where their loss is infinite
    if obj.minimax:
        return max(_risk(losses[:, j] * w[j], obj.risk, obj.gamma) for j in np.flatnonzero(keep))
    f = np.sum(np.where(keep, losses * w, 0.0), axis=1)
    return _risk(f, obj.risk, obj.gamma)


def weights_vector(draws: LawDraws, weights: dict | None) -> np.ndarray:
    """Target weights as a vector: 1 each, except the targets that ``weights`` names."""
    return build_spec(draws, weights=weights).weights


def fill(budget: float, lower, upper, shape=None, costs=None) -> np.ndarray:
    """Water-filling (see :func:`bayescale.optimise.baselines.fill`)."""
    return bl.fill(budget, lower, upper, shape, costs)


def _check_law_domain(draws: LawDraws) -> None:
    """The programs are convex only for T >= 0, 0 < beta <= 1, alpha > 0, x0 >= 0, A >= 0."""
    off = np.broadcast_to(~(np.asarray(draws.self_mask) > 0)[None], draws.T.shape)
    checks = [
        ("T", np.all(draws.T[off] >= 0), "T >= 0"),
        ("beta", np.all((draws.beta[off] > 0) & (draws.beta[off] <= 1 + 1e-9)), "0 < beta <= 1"),
        ("alpha", np.all(draws.alpha > 0), "alpha > 0"),
        ("x0", np.all(draws.x0 >= 0), "x0 >= 0"),
        ("A", np.all(draws.A >= 0), "A >= 0"),
        ("E", np.all(draws.E >= 0), "E >= 0"),
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


def split_draws(n_draws: int, max_draws: int | None, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(optimisation draws, held-out draws): a fixed-seed permutation; ``holdout`` share kept out when > 0."""
    order = np.random.default_rng(seed).permutation(n_draws)
    n_opt = n_draws
    if holdout > 0:
        n_opt = min(n_opt, max(1, int(math.floor(n_draws * (1.0 - holdout)))))
    if max_draws is not None:
        n_opt = min(n_opt, int(max_draws))
    opt = np.sort(order[:n_opt])
    rest = np.sort(order[n_opt:]) if holdout > 0 else np.zeros(0, dtype=int)
    return opt, rest


def optimisation_draws(draws: LawDraws, max_draws: int | None = 2000, seed: int = 0) -> LawDraws:
    """The draws the program is solved on when nothing is held out: all, or a fixed-seed subset."""
    opt, _ = split_draws(draws.n_draws, max_draws, 0.0, seed)
    return draws if opt.size == draws.n_draws else draws.subset(opt)


# ------------------------------------------------------------------------------------ the problem


class AllocationProblem:
    """A compiled allocation problem: :meth:`solve` it again with a new budget or new weights
    without recompiling (cvxpy parameters). Built by :func:`allocate`; usable on its own::

        problem = AllocationProblem(draws, spec)
        first = problem.solve(400)
        again = problem.solve(800)            # same compiled subproblems, warm start
        other = problem.solve(400, weights={"ct": 2.0})
    """

    def __init__(self, draws: LawDraws, spec: Spec, *, reference_budget: float, min_budget: bool = False,
                 target_scale=None):
        self.draws = draws
        self.spec = spec
        self.law = LawEval(draws)
        self.min_budget = bool(min_budget)
        I = spec.n_sources
        A, b, names = spec.polytope(None if self.min_budget else reference_budget)
        keep = [k for k, n in enumerate(names) if n == "budget" or n.startswith("group:")]
        self.A_lin, self.b_lin, self.row_names = A[keep], b[keep], [names[k] for k in keep]
        self.unit = np.maximum(reference_budget / (I * spec.costs), 1e-12)
        self.target_scale = np.ones(len(spec.targets)) if target_scale is None else np.asarray(target_scale, float)
        self.projector = Projector(self.A_lin, spec.lower, spec.upper, spec.fixed, self.unit)
        self._programs: dict = {}
        self.reference_budget = float(reference_budget)

    # -- terms --------------------------------------------------------------------------------

    def effective_weights(self, weights=None) -> np.ndarray:
        w = self.spec.weights if weights is None else np.asarray(weights, dtype=np.float64)
        return w * self.target_scale

    def objective_terms(self, v) -> list[Term]:
        obj = self.spec.objective
        if self.min_budget:
            return []
        if obj.minimax:
            return [Term(np.eye(len(v))[j] * v[j], obj.risk, obj.gamma, f"objective:{self.spec.targets[j]}")
                    for j in np.flatnonzero(v > 0)]
        return [Term(np.where(v > 0, v, 0.0), obj.risk, obj.gamma, "objective")]

    def chance_terms(self) -> list[Term]:
        J = len(self.spec.targets)
        return [Term(np.eye(J)[ch.target] / (ch.tau * (1.0 - CHANCE_MARGIN)), "cvar", ch.prob, f"chance:{ch.text}")
                for ch in self.spec.chance]

    def mode(self) -> str:
        if self.min_budget:
            return "spend"
        return "minimax" if self.spec.objective.minimax else "single"

    def program(self, v=None, *, terms=None, con=True, mode=None) -> RiskProgram:
        """The compiled program for these objective weights (the structure is cached; values are parameters)."""
        v = self.effective_weights() if v is None else v
        obj_terms = self.objective_terms(v) if terms is None else terms
        con_terms = self.chance_terms() if con else []
        mode = mode or self.mode()
        key = (mode, len(obj_terms), tuple(t.risk for t in obj_terms), len(con_terms))
        prog = self._programs.get(key)
        if prog is None:
            prog = RiskProgram(self.law, obj_terms, con_terms, mode, A_lin=self.A_lin, b_lin=self.b_lin,
                               row_names=self.row_names, lower=self.spec.lower, upper=self.spec.upper,
                               fixed=self.spec.fixed, costs=self.spec.costs, unit=self.unit, rhs=self.rhs)
            self._programs[key] = prog
        else:  # same structure: new values only
            prog.obj_terms, prog.con_terms = obj_terms, con_terms
        return prog

    # -- starts -------------------------------------------------------------------------------

    def rhs(self, budget):
        """Right-hand sides of the linear rows (budget, groups) at ``budget``."""
        if self.min_budget or budget is None:
            return self.b_lin.copy()
        A, b, names = self.spec.polytope(budget)
        return b[[k for k, n in enumerate(names) if n == "budget" or n.startswith("group:")]]

    def feasible(self, D, budget, tol=1e-9) -> bool:
        s = self.spec
        if np.any(D < s.lower - tol * np.maximum(1, s.lower)) or np.any(D > s.upper + tol * np.maximum(1, s.upper)):
            return False
        if self.A_lin.shape[0] == 0:
            return True
        return bool(np.all(self.A_lin @ D - self.rhs(budget) <= tol * np.maximum(np.abs(self.rhs(budget)), 1.0)))

    def start(self, budget, spend=None) -> np.ndarray:
        """The uniform split of ``budget`` (or of ``spend`` in the least-budget problem), moved into the polytope."""
        s = self.spec
        amount = budget if budget is not None else spend
        D = bl.fill(amount, s.lower, s.upper, None, s.costs)
        if self.feasible(D, budget):
            return D
        P = self.projector(D, self.rhs(budget), amount / np.min(s.costs))
        if P is None or not self.feasible(P, budget, 1e-6):
            raise InfeasibleError("no allocation meets the linear constraints (the projection onto them failed)")
        return P

    def spend_guess(self) -> float:
        """A spend at which the uniform split (nearly) meets every chance constraint: bisection."""
        s = self.spec
        terms = self.chance_terms()
        lo = max(float(s.costs @ s.lower), 1e-9)

        def meets(spend):
            L = self.law.values(bl.fill(spend, s.lower, s.upper, None, s.costs))
            return all(tail_mean(L @ t.v, t.tail(self.law.S)) <= 1.0 for t in terms)

        hi = max(lo, self.draws.data_scale * s.n_sources)
        limit = float(s.costs @ np.where(np.isfinite(s.upper), s.upper, np.inf))
        for _ in range(40):
            if meets(hi) or hi >= limit or hi > 1e12 * self.draws.data_scale:
                break
            hi *= 2.0
        hi = min(hi, limit) if math.isfinite(limit) else hi
        if not meets(hi):
            return hi
        for _ in range(40):
            mid = 0.5 * (lo + hi)
            if meets(mid):
                hi = mid
            else:
                lo = mid
        return hi

    # -- solving ------------------------------------------------------------------------------

    def solve(self, budget=None, *, weights=None, start=None, certify=True):
        """Solve for ``budget`` (ignored in the least-budget problem); ``weights`` {target: w} to change them.

        Returns a :class:`bayescale.optimise.riskprog.Solution` (raw allocation ``D``, ``objective``, certificate).
        """
        w = None
        if weights is not None:
            w = build_spec(self.draws, weights=weights).weights
        v = self.effective_weights(w)
        prog = self.program(v)
        if self.min_budget:
            spend = self.spend_guess() if start is None else float(self.spec.costs @ start)
            D0 = self.start(None, spend) if start is None else np.asarray(start, float)
            return prog.solve(D0, budget=None, spend_cap=1e3 * spend + 1.0, certify=certify,
                              warm=start is not None)
        B = check_budget(budget)
        warm = start is not None and self.feasible(np.asarray(start, float), B)
        D0 = np.asarray(start, float) if warm else self.start(B)
        return prog.solve(D0, budget=B, certify=certify, warm=warm)


# ------------------------------------------------------------------------------------ public API


def allocate(
    draws: LawDraws,
    budget=None,
    *,
    objective="mean",
    weights: dict | None = None,
    normalise: bool = False,
    costs: dict | None = None,
    upper: dict | None = None,
    lower: dict | None = None,
    fixed: dict | None = None,
    groups=None,
    chance=None,
    min_budget: bool = False,
    budgets=None,
    temperature: float = TEMPERATURE,
    baselines: bool = True,
    uncertainty: int = UNCERTAINTY_DRAWS,
    integer: bool = False,
    interval: float = 0.9,
    max_draws: int | None = 2000,
    holdout: float = 0.25,
    seed: int = 0,
) -> dict:
    """The allocation of ``budget`` raw data units over the sources that minimises ``objective``.

    ``weights`` {target: w >= 0} (others 1); ``normalise``: divide each target's loss by its
    posterior-mean loss at the uniform split; ``costs`` {source: cost per unit > 0};
    ``upper`` {source: cap} (``--max``); ``lower`` {source: minimum}; ``fixed`` {source: amount};
    ``groups`` ["ct_*>=0.3", ...] (share of the spend); ``chance`` ["target<=tau@p", ...];
    ``min_budget``: find the least spend meeting every chance constraint (``budget`` not given);
    ``budgets``: also solve this sequence (the allocation path); ``uncertainty``: number of
    draws whose own optimum is computed (0: skip); ``integer``: also round to whole units.
    ``max_draws``: draws the program is solved on (None: all); with chance constraints a
    ``holdout`` share of the draws is kept out of the program to check them.

    Returns a JSON-able dict (see the README's "allocate" section for every key).
    """
    t_start = time.perf_counter()
    if not (isinstance(interval, numbers.Real) and 0 < interval < 1):
        raise InputError(f"--interval must lie strictly between 0 and 1, got {interval}")
    if max_draws is not None and (not isinstance(max_draws, numbers.Integral) or max_draws < 1):
        raise InputError(f"--max-draws must be a whole number >= 1, got {max_draws}")
    if not (isinstance(holdout, numbers.Real) and 0 <= holdout < 1):
        raise InputError(f"--holdout must lie in [0, 1), got {holdout}")
    if not (isinstance(temperature, numbers.Real) and math.isfinite(temperature) and temperature > 0):
        raise InputError(f"--temperature must be a number > 0, got {temperature}")
    if not isinstance(uncertainty, numbers.Integral) or uncertainty < 0:
        raise InputError(f"--uncertainty must be a whole number >= 0, got {uncertainty}")
    path_budgets = parse_budgets(budgets) if budgets is not None else None
    if min_budget:
        if budget is not None or path_budgets:
            raise InputError("--min-budget finds the budget itself; drop --budget/--budgets")
    elif budget is None:
        if not path_budgets:
            raise InputError("--budget is required (or --budgets, or --min-budget with --chance)")
        budget = path_budgets[-1]
    B = None if min_budget else check_budget(budget)
    spec = build_spec(draws, objective=objective, weights=weights, costs=costs, upper=upper, lower=lower,
                      fixed=fixed, groups=groups, chance=chance, normalise=normalise)
    if min_budget and not spec.chance:
        raise InputError("--min-budget needs at least one --chance constraint (what the budget must achieve)")
    if np.all(spec.fixed):
        raise InputError("--max/--min/--fixed leave no source free (every amount is fixed, e.g. every cap is 0): nothing to allocate")
    _check_law_domain(draws)
    check_linear(spec, B)
    irreducible_check(draws, spec.chance)

    opt_idx, held_idx = split_draws(draws.n_draws, max_draws, holdout if spec.chance else 0.0, seed)
    sub = draws if opt_idx.size == draws.n_draws else draws.subset(opt_idx)
    held = draws.subset(held_idx) if held_idx.size else None
    law_all = LawEval(draws)

    # Normalisation: each target's posterior-mean loss at the uniform split of the (reference) budget.
    ref_budget = B
    if min_budget:
        probe = AllocationProblem(sub, spec, reference_budget=1.0, min_budget=True)
        ref_budget = probe.spend_guess()
    uniform_ref = bl.fill(ref_budget, spec.lower, spec.upper, None, spec.costs)
    target_scale = None
    if spec.normalise:
        mean_loss = LawEval(sub).values(uniform_ref).mean(axis=0)
        target_scale = 1.0 / np.maximum(mean_loss, 1e-300)
    problem = AllocationProblem(sub, spec, reference_budget=ref_budget, min_budget=min_budget,
                                target_scale=target_scale)
    v = problem.effective_weights()

    sol = _solve_checked(problem, B)
    D = sol.D
    notes = list(sol.notes)
    status = "optimal"
    if not sol.converged:
        status = "optimal_inaccurate"
        notes.append("the SQP iterations stopped before convergence; see the certified gap")
    if not (sol.rel_gap <= GAP_TOL):
        # Polish: more iterations from the solution, at a tighter tolerance.
        again = problem.program(v).solve(D, budget=B, spend_cap=None if B is not None else 1e3 * sol.objective + 1,
                                         tol=1e-13, warm=True)
        if again.rel_gap < sol.rel_gap and again.violation <= FEAS_TOL:
            notes.append(f"polished: certified gap {sol.rel_gap:.1e} -> {again.rel_gap:.1e}")
            sol, D = again, again.D
        if not (sol.rel_gap <= GAP_TOL):
            status = "optimal_inaccurate"
            notes.append(f"certified relative gap {sol.rel_gap:.1e} exceeds {GAP_TOL:.0e}: the allocation is feasible "
                         f"but may be up to that far from optimal")

    obj_value = float(spec.costs @ D) if min_budget else objective_values(sub, D, spec.objective, v)
    spend = float(spec.costs @ D)
    result = {
        "status": status,
        "mode": "min_budget" if min_budget else "budget",
        "objective": "spend" if min_budget else spec.objective.name,
        "objective_value": obj_value,
        "allocation": _named(spec.sources, D),
        "fractions": _named(spec.sources, D / D.sum() if D.sum() > 0 else np.zeros_like(D)),
        "predicted": _predicted(law_all, D, interval, spec.targets),
        "budget": spend if min_budget else B,
        "spend": spend,
        "weights": _named(spec.targets, v),
        "normalised": bool(spec.normalise),
    }
    if not min_budget:
        result["objective_value_all_draws"] = objective_values(draws, D, spec.objective, v)
    if np.any(spec.costs != 1):
        result["costs"] = _named(spec.sources, spec.costs)
    budget_dual = sol.duals.get("budget")
    result["shadow_price"] = (None if budget_dual is None or min_budget else float(0.0 - max(budget_dual, 0.0)))
    result["binding"] = _binding(spec, D, B, sol)
    result["groups"] = {g.text: _group_share(spec, g, D, B) for g in spec.groups}
    result["chance"] = _chance_report(spec, law_all, opt_idx, held_idx, D)
    result["certificate"] = {
        "method": "SQP with cvxpy QP subproblems; Lagrangian lower bound (LP)",
        "lower_bound": _num(sol.lower_bound),
        "gap": _num(sol.gap),
        "relative_gap": _num(sol.rel_gap),
        "iterations": sol.iterations,
        "qp_solves": sol.qp_solves,
        "seconds": sol.seconds,
        "max_chance_violation": float(max(sol.violation, 0.0)) if spec.chance else 0.0,
    }
    result["draws_used"] = int(opt_idx.size)
    result["draws_held_out"] = int(held_idx.size)
    result["solver"] = sol.solver
    result["solver_notes"] = notes

    # Baselines, value of transfer.
    if baselines:
        every, headline = _baselines(problem, spec, sub, law_all, D, B, v, temperature, interval,
                                     opt_idx, held_idx, min_budget, sol, notes)
        # "baselines" keeps the mixing rules it always had (uniform, proportional); the other two
        # comparisons have keys of their own, with the same structure.
        result["baselines"] = {k: every[k] for k in ("uniform", "proportional") if k in every}
        if "temperature" in every:
            result["temperature_sampling"] = every["temperature"]
        result["transfer_unaware"] = every["transfer_unaware"]
        result["value_of_transfer"] = headline
        for name, base in every.items():
            if name != "transfer_unaware" and base.get("objective_value") is not None and not min_budget:
                if base["feasible"] and base["objective_value"] < obj_value - max(sol.gap, 1e-9 * abs(obj_value)):
                    result["status"] = "optimal_inaccurate"
                    notes.append(f"the {name} baseline beats the recommendation; the solution is not optimal")

    # Decision uncertainty.
    if uncertainty:
        result["decision_uncertainty"] = _uncertainty(problem, spec, sub, D, B, v, int(uncertainty), interval, seed)

    # Allocation path.
    if path_budgets:
        result["path"] = _path(problem, spec, sub, path_budgets, v, B, D)

    # Whole units.
    if integer:
        result["integer"] = _integer(problem, spec, sub, D, B, v, min_budget, law_all, interval)
    result["seconds"] = time.perf_counter() - t_start
    return result


# ------------------------------------------------------------------------------------ pieces


def _num(x):
    return float(x) if x is not None and math.isfinite(x) else None


def _named(names, values) -> dict[str, float]:
    return {n: float(x) for n, x in zip(names, values)}


def _predicted(law: LawEval, D, interval: float, targets) -> dict:
    losses = law.values(D)
    out = {}
    for j, target in enumerate(targets):
        s = summarise(losses[:, j], interval)
        out[target] = {"mean": s["mean"], "lo": s["lo"], "hi": s["hi"]}
    return out


def _solve_checked(problem: AllocationProblem, B):
    """Solve; if the chance constraints cannot be met, say which and by how much (InfeasibleError)."""
    spec = problem.spec
    try:
        sol = problem.solve(B)
    except InfeasibleError:
        raise
    if not spec.chance or sol.violation <= FEAS_TOL:
        return sol
    # Phase 1: the allocation that comes closest to every chance constraint (minimax of CVaR / tau).
    terms = problem.chance_terms()
    prog = problem.program(terms=terms, con=False, mode="minimax")
    start = problem.start(B) if B is not None else sol.D
    best = prog.solve(start, budget=B, spend_cap=None if B is not None else 1e3 * float(spec.costs @ sol.D) + 1)
    if best.objective <= 1.0 + FEAS_TOL:  # feasible after all: solve again from the phase-1 point
        again = problem.program().solve(best.D, budget=B, warm=True,
                                        spend_cap=None if B is not None else 1e3 * float(spec.costs @ best.D) + 1)
        if again.violation <= FEAS_TOL:
            again.notes.append("the first solve ended outside the chance constraints; solved again from the allocation "
                               "closest to meeting them (phase 1)")
            return again
    L = problem.law.values(best.D)
    pieces, conflict = [], []
    for ch, term in zip(spec.chance, terms):
        cv = tail_mean(L[:, ch.target], term.tail(problem.law.S))
        if cv > ch.tau * (1 + 1e-6):
            prob = float(np.mean(L[:, ch.target] <= ch.tau))
            pieces.append(f"{ch.text} (its CVaR at best {cv:.5g} > {ch.tau:g}; P(loss <= {ch.tau:g}) = {prob:.2f})")
            conflict.append(f"chance:{ch.text}")
    if not pieces:  # only marginally out: name the worst
        k = int(np.argmax([tail_mean(L[:, ch.target], t.tail(problem.law.S)) / ch.tau for ch, t in zip(spec.chance, terms)]))
        ch = spec.chance[k]
        pieces.append(f"{ch.text} (its CVaR at best exceeds {ch.tau:g} by {best.objective - 1:.1e} relative)")
        conflict.append(f"chance:{ch.text}")
    where = f"within budget {B:g}" if B is not None else "with any budget under the caps"
    hint = ""
    if B is not None:
        try:
            need = AllocationProblem(problem.draws, spec, reference_budget=B, min_budget=True).solve()
            if need.violation <= FEAS_TOL:
                hint = f"; the least budget that meets them is {float(spec.costs @ need.D):.4g} (--min-budget)"
        except InputError:
            pass
    raise InfeasibleError(f"--chance: cannot be met {where} through the CVaR approximation: {'; '.join(pieces)}{hint}",
                          conflict + (["budget"] if B is not None else []))


def _group_share(spec: Spec, g, D, B) -> float:
    """What group ``g`` gets: its spend as a share of the budget (of the total spend without a budget)."""
    inside = float(spec.costs[list(g.members)] @ D[list(g.members)])
    whole = B if B is not None else float(spec.costs @ D)
    return inside / whole if whole > 0 else 0.0


def _binding(spec: Spec, D, B, sol) -> list[str]:
    spend = float(spec.costs @ D)
    scale = B if B is not None else max(spend, 1e-12)
    tol = BINDING_TOL * scale
    out = []
    if B is not None and spend >= B - tol:
        out.append("budget")
    for i, src in enumerate(spec.sources):
        if spec.fixed[i]:
            out.append(f"fixed:{src}")
            continue
        if np.isfinite(spec.upper[i]) and D[i] >= spec.upper[i] - tol:
            out.append(f"max:{src}")
        if src in spec.named_lower and D[i] <= spec.lower[i] + tol:
            out.append(f"min:{src}")
    for g in spec.groups:
        if abs(_group_share(spec, g, D, B) - g.share) <= BINDING_TOL:
            out.append(f"group:{g.text}")
    for name, value in sol.term_values.items():
        if name.startswith("chance:") and value >= 1.0 - 1e-6:
            out.append(name)
    return out


def _chance_report(spec: Spec, law_all: LawEval, opt_idx, held_idx, D) -> list[dict]:
    if not spec.chance:
        return []
    L = law_all.values(D)
    out = []
    for ch in spec.chance:
        lj = L[:, ch.target]
        opt, held = lj[opt_idx], lj[held_idx] if held_idx.size else np.zeros(0)
        out.append({
            "constraint": ch.text,
            "target": spec.targets[ch.target],
            "threshold": ch.tau,
            "probability": ch.prob,
            "cvar_optimisation_draws": empirical_cvar(opt, ch.prob),
            "achieved_optimisation_draws": float(np.mean(opt <= ch.tau)),
            "achieved_held_out": float(np.mean(held <= ch.tau)) if held.size else None,
            "held_out_draws": int(held.size),
            "met_held_out": bool(np.mean(held <= ch.tau) >= ch.prob) if held.size else None,
        })
    return out


def _violations(spec: Spec, D, B, L_opt) -> list[str]:
    """Constraints a (baseline) allocation breaks: groups and chance constraints (CVaR on the optimisation draws)."""
    out = []
    for g in spec.groups:
        share = _group_share(spec, g, D, B)
        if (g.op in (">=", "=") and share < g.share - 1e-9) or (g.op in ("<=", "=") and share > g.share + 1e-9):
            out.append(f"group:{g.text} (share {share:.3f})")
    for ch in spec.chance:
        cv = empirical_cvar(L_opt[:, ch.target], ch.prob)
        if cv > ch.tau * (1 + 1e-9):
            out.append(f"chance:{ch.text} (CVaR {cv:.4g} > {ch.tau:g}; P = {np.mean(L_opt[:, ch.target] <= ch.tau):.2f})")
    return out


def _baselines(problem, spec, sub, law_all, D, B, v, temperature, interval, opt_idx, held_idx, min_budget, sol, notes):
    """Each baseline: allocation, objective (same draws), predictions, feasibility, reduction against it."""
    law_sub = problem.law
    R_rec = bl.reducible(law_all.values(D), law_all.E, v)
    out = {}
    shapes = bl.rule_shapes(spec.lower, spec.upper, spec.fixed, temperature)
    if min_budget:
        # The least spend at which each rule meets every chance constraint (bisection on the spend).
        for name, shape in shapes.items():
            D_b = _rule_min_spend(problem, shape)
            out[name] = _baseline_entry(spec, law_sub, law_all, D_b, None, v, interval, min_budget, R_rec)
            if D_b is None:
                out[name]["note"] = "never meets the chance constraints under the caps"
    else:
        for name, shape in shapes.items():
            D_b = bl.fill(B, spec.lower, spec.upper, shape, spec.costs)
            out[name] = _baseline_entry(spec, law_sub, law_all, D_b, B, v, interval, min_budget, R_rec)
    for name in ("temperature",):
        if name in out:
            out[name]["temperature"] = float(temperature)
    # Transfer-unaware optimum: the same problem with transfer switched off, judged under the real posterior.
    t0 = time.perf_counter()
    try:
        blind = AllocationProblem(bl.transfer_unaware(sub), spec, reference_budget=problem.reference_budget,
                                  min_budget=min_budget, target_scale=problem.target_scale)
        blind_sol = _solve_checked(blind, B)
        D_u = blind_sol.D
        entry = _baseline_entry(spec, law_sub, law_all, D_u, B, v, interval, min_budget, R_rec)
        entry["objective_value_assumed"] = (float(spec.costs @ D_u) if min_budget
                                            else objective_values(blind.draws, D_u, spec.objective, v))
        entry["seconds"] = time.perf_counter() - t0
    except InfeasibleError as exc:
        entry = {"allocation": None, "feasible": False,
                 "note": f"infeasible when transfer is ignored ({str(exc).split(': ', 1)[-1]})"}
    out["transfer_unaware"] = entry
    ref = "proportional" if "proportional" in out else "uniform"
    headline = {"reference": ref}
    for name in (ref, "transfer_unaware"):
        red = out.get(name, {}).get("reducible_loss_reduction")
        headline[f"vs_{name}"] = red
    if min_budget:
        for name in (ref, "transfer_unaware"):
            spend_b = out.get(name, {}).get("spend")
            headline[f"budget_saving_vs_{name}"] = (float(1.0 - float(spec.costs @ D) / spend_b)
                                                   if spend_b else None)
    return out, headline


def _rule_min_spend(problem, shape):
    spec = problem.spec
    terms = problem.chance_terms()
    law = problem.law

    def at(spend):
        return bl.fill(spend, spec.lower, spec.upper, shape, spec.costs)

    def meets(spend):
        L = law.values(at(spend))
        return all(tail_mean(L @ t.v, t.tail(law.S)) <= 1.0 for t in terms)

    lo, hi = max(float(spec.costs @ spec.lower), 1e-9), max(problem.reference_budget, 1e-6)
    limit = float(spec.costs @ np.where(np.isfinite(spec.upper), spec.upper, np.inf))
    for _ in range(60):
        if meets(hi):
            break
        if hi >= limit:
            return None
        hi = min(hi * 2.0, limit) if math.isfinite(limit) else hi * 2.0
    else:
        return None
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if meets(mid) else (mid, hi)
        if hi - lo <= 1e-9 * hi:
            break
    return at(hi)


def _baseline_entry(spec, law_sub, law_all, D_b, B, v, interval, min_budget, R_rec) -> dict:
    if D_b is None:
        return {"allocation": None, "feasible": False}
    L_opt = law_sub.values(D_b)
    entry = {
        "allocation": _named(spec.sources, D_b),
        "objective_value": (float(spec.costs @ D_b) if min_budget
                            else objective_values(law_sub.draws, D_b, spec.objective, v)),
        "predicted": _predicted(law_all, D_b, interval, spec.targets),
        "spend": float(spec.costs @ D_b),
    }
    viol = _violations(spec, D_b, B, L_opt)
    entry["feasible"] = not viol
    entry["violations"] = viol
    R_b = bl.reducible(law_all.values(D_b), law_all.E, v)
    entry["reducible_loss_reduction"] = bl.reduction(R_rec, R_b, interval)
    return entry


def _uncertainty(problem, spec, sub, D, B, v, n, interval, seed) -> dict:
    """Per-draw optima of ``n`` optimisation draws, solved together."""
    law = problem.law
    idx = np.sort(np.random.default_rng(seed + 1).choice(law.S, size=min(n, law.S), replace=False))
    obj = spec.objective
    if problem.min_budget:
        mode, obj_v = "spend", []
        con = [(ch.target, ch.tau) for ch in spec.chance]
    elif obj.minimax:
        mode, obj_v, con = "max", [np.eye(len(v))[j] * v[j] for j in np.flatnonzero(v > 0)], []
    else:
        mode, obj_v, con = "sum", [np.where(v > 0, v, 0.0)], []
    spend_cap = 1e3 * float(spec.costs @ D) + 1.0
    b = problem.rhs(B)
    try:
        out = dec.per_draw_optima(law, idx, mode=mode, obj_v=obj_v, con=con, costs=spec.costs, lower=spec.lower,
                                  upper=spec.upper, fixed=spec.fixed, A_lin=problem.A_lin, b_lin=b,
                                  unit=problem.unit, start=D, spend_cap=spend_cap)
    except Exception as exc:  # noqa: BLE001 - a summary that failed must not sink the recommendation
        return {"draws": int(idx.size), "error": f"{type(exc).__name__}: {exc}"}
    summary = dec.summarise_decisions(out["D"], out["ok"], spec.sources, spec.costs, interval, D)
    summary["seconds"] = out["seconds"]
    summary["what"] = ("least spend meeting every chance target in each draw" if mode == "spend" else
                       "optimal allocation under each draw's own loss (same linear constraints; "
                       "chance constraints are not per-draw)")
    return summary


def _path(problem, spec, sub, budgets, v, B, D_main) -> list[dict]:
    out = []
    prev = None
    for b in budgets:
        t0 = time.perf_counter()
        entry = {"budget": float(b)}
        try:
            check_linear(spec, b)
            start = None
            if prev is not None:
                guess = np.where(spec.fixed, spec.lower, prev[1] * (b / prev[0]))
                guess = np.clip(guess, spec.lower, spec.upper)
                start = guess if problem.feasible(guess, b) else None
            sol = problem.solve(b, start=start)
            if spec.chance and sol.violation > FEAS_TOL:
                raise InfeasibleError("chance constraints cannot be met at this budget")
            Db = sol.D
            prev = (b, Db)
            entry.update({
                "status": "optimal" if sol.rel_gap <= GAP_TOL else "optimal_inaccurate",
                "allocation": _named(spec.sources, Db),
                "fractions": _named(spec.sources, Db / Db.sum() if Db.sum() > 0 else Db),
                "objective_value": objective_values(sub, Db, spec.objective, v),
                "shadow_price": float(0.0 - max(sol.duals.get("budget", 0.0), 0.0)),
                "relative_gap": _num(sol.rel_gap),
            })
        except InfeasibleError as exc:
            entry.update({"status": "infeasible", "message": str(exc)})
        entry["seconds"] = time.perf_counter() - t0
        out.append(entry)
    return out


def _integer(problem, spec, sub, D, B, v, min_budget, law_all, interval) -> dict:
    law = problem.law
    terms = problem.chance_terms()
    A, b = problem.A_lin, problem.rhs(B)

    def evaluate(Dm):
        objs, feas = [], []
        for row in Dm:
            L = law.values(row)
            if min_budget:
                objs.append(float(spec.costs @ row))
            else:
                objs.append(objective_values(sub, row, spec.objective, v))
            feas.append(all(tail_mean(L @ t.v * (1.0 - CHANCE_MARGIN), t.tail(law.S)) <= 1.0 for t in terms))
        return np.array(objs), np.array(feas)

    # In the least-budget problem rounding up must stay feasible: no budget row, chance decides.
    D_int, value, checked, note = dec.round_allocation(D, lower=spec.lower, upper=spec.upper, fixed=spec.fixed,
                                                       A_lin=A, b_lin=b, evaluate=evaluate)
    if D_int is None and min_budget:
        D_up = np.where(spec.fixed, D, np.ceil(D - 1e-9))
        obj, feas = evaluate(D_up[None])
        if feas[0]:
            D_int, value, note = D_up, float(obj[0]), "rounded every amount up"
    if D_int is None:
        return {"allocation": None, "note": note, "candidates_checked": checked}
    cont = float(spec.costs @ D) if min_budget else objective_values(sub, D, spec.objective, v)
    return {
        "allocation": {s: (float(x) if spec.fixed[i] else int(round(x))) for i, (s, x) in enumerate(zip(spec.sources, D_int))},
        "objective_value": value,
        "objective_loss_vs_continuous": float(value - cont),
        "predicted": _predicted(law_all, D_int, interval, spec.targets),
        "candidates_checked": checked,
        "note": note,
    }


# ------------------------------------------------------------------------------------ text


def format_allocation(result: dict) -> str:
    """The result as plain-text tables (what ``bayescale allocate`` prints)."""
    lines = []
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    cert = result.get("certificate", {})
    least = result.get("mode") == "min_budget"
    head = (f"status {result['status']} · least budget (cost-weighted spend) {result['spend']:.6g}" if least else
            f"status {result['status']} · {result['objective']} = {result['objective_value']:.6g} "
            f"· budget {result['budget']:g}")
    if cert.get("relative_gap") is not None:
        head += f" · certified gap {cert['relative_gap']:.1e} ({cert['iterations']} SQP iterations, {cert['seconds']:.2f}s)"
    lines.append(head)
    unc = result.get("decision_uncertainty") or {}
    fr = unc.get("fractions") or {}
    integer = (result.get("integer") or {}).get("allocation")
    header = f"{'source':<20} {'amount':>10} {'share':>8}"
    if fr:
        header += f" {'per-draw optimum share (interval)':>34}"
    if integer:
        header += f" {'whole units':>12}"
    lines.append(header)
    for name, amount in result["allocation"].items():
        row = f"{name:<20} {amount:>10.4g} {pct(result['fractions'][name]):>8}"
        if fr:
            f = fr.get(name, {})
            row += f" {pct(f.get('median')):>12} ({pct(f.get('lo'))} .. {pct(f.get('hi'))})".rjust(35)
        if integer:
            row += f" {integer[name]:>12g}"
        lines.append(row)
    if result.get("shadow_price") is not None:
        lines.append(f"shadow price of the budget: {result['shadow_price']:.4g} per unit · "
                     f"binding: {', '.join(result['binding']) or 'none'}")
    elif result.get("binding"):
        lines.append(f"binding: {', '.join(result['binding'])}")
    bases = dict(result.get("baselines") or {})
    for key, label in (("temperature_sampling", "temperature"), ("transfer_unaware", "transfer_unaware")):
        if result.get(key):
            bases[label] = result[key]
    strategies = [("recommended", {"predicted": result["predicted"], "objective_value": result["objective_value"]})]
    strategies += [(k, b) for k, b in bases.items() if b.get("predicted")]
    if strategies:
        lines.append("")
        lines.append("predicted loss per target: mean (interval)")
        lines.append(f"{'target':<20} " + " ".join(f"{k:>24}" for k, _ in strategies))
        for t in result["predicted"]:
            cells = []
            for _, s in strategies:
                p = s["predicted"][t]
                cells.append(f"{p['mean']:.4g} ({p['lo']:.3g}..{p['hi']:.3g})".rjust(24))
            lines.append(f"{t:<20} " + " ".join(cells))
        lines.append(f"{'objective':<20} " + " ".join(f"{s['objective_value']:>24.5g}" for _, s in strategies))
    for k, b in bases.items():
        red = b.get("reducible_loss_reduction")
        if least and b.get("spend"):
            lines.append(f"vs {k:<17} needs {b['spend']:.5g} to meet the chance constraints; the recommendation "
                         f"saves {100 * (1 - result['spend'] / b['spend']):.1f}%")
        elif red and red.get("of_means") is not None:
            extra = "" if b.get("feasible", True) else f" [breaks {', '.join(b.get('violations', []))}]"
            change = red["of_means"]
            word = f"{100 * change:.1f}% lower" if change >= 0 else f"{-100 * change:.1f}% higher"
            lines.append(f"vs {k:<17} weighted reducible loss {word} (reduction per draw {100 * red['lo']:.1f}% .. "
                         f"{100 * red['hi']:.1f}%, P(better) {red['probability_better']:.2f}){extra}")
        elif b.get("note"):
            lines.append(f"vs {k:<17} {b['note']}")
    for ch in result.get("chance") or []:
        held = ch["achieved_held_out"]
        lines.append(f"chance {ch['constraint']}: P on optimisation draws {ch['achieved_optimisation_draws']:.3f}, "
                     f"on {ch['held_out_draws']} held-out draws {'-' if held is None else f'{held:.3f}'}"
                     + ("" if ch["met_held_out"] is None else (" (met)" if ch["met_held_out"] else " (NOT met)")))
    for entry in result.get("path") or []:
        if entry.get("status") == "infeasible":
            lines.append(f"budget {entry['budget']:>10g}: infeasible ({entry['message']})")
            continue
        shares = " ".join(f"{k}={pct(v)}" for k, v in entry["fractions"].items())
        lines.append(f"budget {entry['budget']:>10g}: {result['objective']} {entry['objective_value']:.5g} · {shares}")
    for note in result.get("solver_notes") or []:
        lines.append(f"note: {note}")
    return "\n".join(lines)
