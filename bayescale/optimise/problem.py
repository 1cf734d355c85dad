"""The allocation program: compiled once, solved, re-solved, and polished until its gap is certified.

:class:`AllocationProblem` turns a :class:`~bayescale.optimise.constraints.Spec` into the
risk programs of :mod:`bayescale.optimise.riskprog` (objective terms, chance terms, the
linear rows) and keeps them compiled, so a new budget or new weights only update
parameters. :func:`solve_checked` solves it and, where the chance constraints cannot be met,
says which and by how much; :func:`polish` tightens a solution whose certified gap is too
large.
"""

from __future__ import annotations

import math

import numpy as np

from bayescale.errors import InputError
from bayescale.inference.posterior import LawDraws
from bayescale.optimise import baselines as bl
from bayescale.optimise.constraints import InfeasibleError, Name, Spec, build_spec, check_budget
from bayescale.optimise.predictive import chance_noise_at
from bayescale.optimise.riskprog import FEAS_TOL, GAP_TOL, LawEval, Projector, RiskProgram, Solution, Term, tail_mean

CHANCE_MARGIN = 1e-9  # chance thresholds are tightened by this share inside the program
TOTAL_ROUNDS = 8  # solves at most, moving the total the law's error past the data is taken at to the solution's
TOTAL_TOL = 1e-5  # relative change of that total that counts as settled (the factor moves by ~0.1 of it)


class AllocationProblem:
    """A compiled allocation problem: :meth:`solve` it again with a new budget or new weights
    without recompiling (cvxpy parameters). Built by :func:`allocate`; usable on its own::

        problem = AllocationProblem(draws, spec)
        first = problem.solve(400)
        again = problem.solve(800)            # same compiled subproblems, warm start
        other = problem.solve(400, weights={"ct": 2.0})
    """

    def __init__(self, draws: LawDraws, spec: Spec, *, reference_budget: float, min_budget: bool = False,
                 target_scale=None, chance_noise=None, seed: int = 0):
        self.draws = draws
        self.spec = spec
        # Predictive chance constraints: one run's noise per draw (given, or drawn here with ``seed``),
        # carried as one extra law column per constraint (bayescale.optimise.predictive): an (S, K)
        # array, or a function of the allocation's total where the misfit falls with a run's data.
        self.chance_noise = None
        if spec.chance and spec.chance_on == "predictive":
            if chance_noise is None:
                chance_noise = chance_noise_at(draws, spec, seed)
            self.chance_noise = (chance_noise if callable(chance_noise)
                                 else np.asarray(chance_noise, dtype=np.float64).reshape(draws.n_draws, -1))
        noisy = None if self.chance_noise is None else ([ch.target for ch in spec.chance], self.chance_noise)
        # Losses at each allocation's own total (exact; what everything is evaluated and checked with).
        # The programs are solved at one total at a time (program_law), moved to the solution's by solve().
        self.law = LawEval(draws, noisy)
        self.total: float | None = None
        self.program_law = self.law
        self.min_budget = bool(min_budget)
        I = spec.n_sources
        A, b, names = spec.polytope(None if self.min_budget else reference_budget)
        keep = [k for k, n in enumerate(names) if n == "budget" or n.startswith("group:")]
        self.A_lin, self.b_lin, self.row_names = A[keep], b[keep], [names[k] for k in keep]
        # y = D / unit: a source's scale is its even share of the budget, or its box if narrower,
        # so that a tiny cap (its d ** beta steep there) does not dominate the subproblem's Hessian.
        width = np.where(spec.fixed, np.inf, spec.upper - spec.lower)
        self.unit = np.maximum(np.minimum(reference_budget / (I * spec.costs), width), 1e-12)
        self.target_scale = np.ones(len(spec.targets)) if target_scale is None else np.asarray(target_scale, float)
        self.projector = Projector(self.A_lin, spec.lower, spec.upper, spec.fixed, self.unit)
        self._programs: dict = {}
        self.reference_budget = float(reference_budget)
        self.at_total(float(np.sum(bl.fill(self.reference_budget, spec.lower, spec.upper, None, spec.costs))))

    def at_total(self, total: float) -> None:
        """Solve the programs with the law's error past the data (and one run's noise) at ``total`` raw data."""
        if not self.law.depends_on_total or total == self.total:
            return
        self.total = float(total)
        self.program_law = self.law.at_total(self.total)
        for prog in self._programs.values():
            prog.set_law(self.program_law)

    # -- terms --------------------------------------------------------------------------------

    def effective_weights(self, weights=None) -> np.ndarray:
        w = self.spec.weights if weights is None else np.asarray(weights, dtype=np.float64)
        return w * self.target_scale

    def pad(self, v) -> np.ndarray:
        """Target weights (J,) as weights over the law's columns (the chance columns get 0)."""
        v = np.asarray(v, dtype=np.float64)
        return np.concatenate([v, np.zeros(self.law.J - v.size)])

    def chance_column(self, k: int) -> int:
        """The law column chance constraint ``k`` is about: its target's, or its noisy copy when predictive."""
        return len(self.spec.targets) + k if self.chance_noise is not None else self.spec.chance[k].target

    def objective_terms(self, v) -> list[Term]:
        obj = self.spec.objective
        if self.min_budget:
            return []
        v = self.pad(v)
        if obj.minimax:
            return [Term(np.eye(len(v))[j] * v[j], obj.risk, obj.gamma, f"objective:{self.spec.targets[j]}")
                    for j in np.flatnonzero(v > 0)]
        return [Term(np.where(v > 0, v, 0.0), obj.risk, obj.gamma, "objective")]

    def chance_terms(self) -> list[Term]:
        eye = np.eye(self.law.J)
        return [Term(eye[self.chance_column(k)] / (ch.tau * (1.0 - CHANCE_MARGIN)), "cvar", ch.prob, f"chance:{ch.text}")
                for k, ch in enumerate(self.spec.chance)]

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
            prog = RiskProgram(self.program_law, obj_terms, con_terms, mode, A_lin=self.A_lin, b_lin=self.b_lin,
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

        def worst(spend):  # the largest chance CVaR / tau of the uniform split of ``spend``
            L = self.law.values(bl.fill(spend, s.lower, s.upper, None, s.costs))
            return max(tail_mean(L @ t.v, t.tail(self.law.S)) for t in terms)

        def meets(spend):
            return worst(spend) <= 1.0

        hi = max(lo, self.draws.data_scale * s.n_sources)
        limit = float(s.costs @ np.where(np.isfinite(s.upper), s.upper, np.inf))
        tried = []
        for _ in range(40):
            tried.append((worst(hi), hi))
            if tried[-1][0] <= 1.0 or hi >= limit or hi > 1e12 * self.draws.data_scale:
                break
            hi *= 2.0
        hi = min(hi, limit) if math.isfinite(limit) else hi
        if not meets(hi):
            # Past the fit runs' data the law's error grows with the total, so more data need not
            # help: start from the spend that came closest.
            return min(tried)[1] if tried else hi
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

        Where the losses depend on the allocation's total (the law's error past the fit runs' data,
        a misfit that falls with a run's data), the program is solved at a total, then again at the
        solution's, until it settles (:data:`TOTAL_ROUNDS`): one round where the budget fixes the total.
        Returns a :class:`bayescale.optimise.riskprog.Solution` (raw allocation ``D``, ``objective``, certificate).
        """
        if not self.law.depends_on_total:
            return self._solve_at_total(budget, weights, start, certify)
        if start is not None:
            total = float(np.sum(start))
        elif self.min_budget:
            total = float(np.sum(self.start(None, self.spend_guess())))
        else:
            total = float(np.sum(self.start(check_budget(budget))))
        last = None  # (total, the solution's total) of the round before: a secant step on their difference
        for _ in range(TOTAL_ROUNDS):
            self.at_total(total)
            sol = self._solve_at_total(budget, weights, start, certify)
            settled = float(np.sum(sol.D))
            if abs(settled - total) <= TOTAL_TOL * max(total, 1e-300) or sol.violation > FEAS_TOL:
                return sol  # settled, or the chance constraints cannot be met at this total (solve_checked says so)
            step = settled
            if last is not None and (settled - total) != (last[1] - last[0]):
                secant = total - (settled - total) * (total - last[0]) / ((settled - total) - (last[1] - last[0]))
                step = secant if 0.5 * settled < secant < 2.0 * settled else settled
            last, start, total = (total, settled), sol.D, step
        sol.converged = False
        sol.notes.append(f"the total data at which the law's error past the fit runs' data is taken did not settle in "
                         f"{TOTAL_ROUNDS} solves ({self.total:.6g} -> {total:.6g})")
        return sol

    def _solve_at_total(self, budget, weights, start, certify):
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


def solve_checked(problem: AllocationProblem, B):
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
    L = problem.program_law.values(best.D)  # as the program had it (at problem.total where that matters)
    cols = [problem.chance_column(k) for k in range(len(spec.chance))]
    pieces, conflict = [], []
    for ch, term, col in zip(spec.chance, terms, cols):
        cv = tail_mean(L[:, col], term.tail(problem.law.S))
        if cv > ch.tau * (1 + 1e-6):
            prob = float(np.mean(L[:, col] <= ch.tau))
            pieces.append(f"{ch.text} (its CVaR at best {cv:.5g} > {ch.tau:g}; P(loss <= {ch.tau:g}) = {prob:.2f})")
            conflict.append(f"chance:{ch.text}")
    if not pieces:  # only marginally out: name the worst
        k = int(np.argmax([tail_mean(L[:, c], t.tail(problem.law.S)) / ch.tau for ch, t, c in zip(spec.chance, terms, cols)]))
        ch = spec.chance[k]
        pieces.append(f"{ch.text} (its CVaR at best exceeds {ch.tau:g} by {best.objective - 1:.1e} relative)")
        conflict.append(f"chance:{ch.text}")
    where = f"within budget {B:g}" if B is not None else "with any budget under the caps"
    if problem.total is not None:
        where = f"{where} (the law's error past the fit runs' data taken at {problem.total:.4g} units in total)"
    if problem.chance_noise is not None:
        where = f"{where} for the loss one run will observe (predictive)"
    hint = ()
    if B is not None:
        try:
            need = AllocationProblem(problem.draws, spec, reference_budget=B, min_budget=True,
                                     chance_noise=problem.chance_noise).solve()
            if need.violation <= FEAS_TOL:
                hint = (f"; the least budget that meets them is {float(spec.costs @ need.D):.4g} (", Name("min_budget"), ")")
        except InputError:
            pass
    raise InfeasibleError((Name("chance"), f": cannot be met {where} through the CVaR approximation: {'; '.join(pieces)}",
                           *hint), conflict + (["budget"] if B is not None else []))


def polish(problem: AllocationProblem, sol: Solution, budget) -> tuple[Solution, str, list[str]]:
    """The solution, its status and notes: where the certified gap exceeds ``GAP_TOL``, more iterations
    from the solution at a tighter tolerance, kept if they certify a smaller gap."""
    notes = list(sol.notes)
    status = "optimal"
    if not sol.converged:
        status = "optimal_inaccurate"
        notes.append("the SQP iterations stopped before convergence; see the certified gap")
    if not (sol.rel_gap <= GAP_TOL):
        again = problem.program(problem.effective_weights()).solve(
            sol.D, budget=budget, spend_cap=None if budget is not None else 1e3 * sol.objective + 1, tol=1e-13, warm=True)
        if again.rel_gap < sol.rel_gap and again.violation <= FEAS_TOL:
            notes.append(f"polished: certified gap {sol.rel_gap:.1e} -> {again.rel_gap:.1e}")
            sol = again
        if np.isnan(sol.rel_gap):
            status = "optimal_inaccurate"
            notes.append("no certified gap: the allocation is feasible but its distance from the optimum is unknown")
        elif not (sol.rel_gap <= GAP_TOL):
            status = "optimal_inaccurate"
            notes.append(f"certified relative gap {sol.rel_gap:.1e} exceeds {GAP_TOL:.0e}: the allocation is feasible "
                         f"but may be up to that far from optimal")
    return sol, status, notes
