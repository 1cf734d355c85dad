"""The quadratic programs the risk program solves, compiled once with cvxpy (DPP).

:class:`QPSubproblem`: one SQP subproblem of :class:`bayescale.optimise.riskprog.RiskProgram`
(linearised risk terms with one hinge per candidate draw, a quadratic model, the polytope,
penalised chance constraints); :class:`Projector`: the Euclidean projection onto the
polytope that gives a feasible start. Both try the solvers of ``QP_SOLVERS`` in turn.
"""

from __future__ import annotations

import time
import warnings

import numpy as np

QP_SOLVERS = ("CLARABEL", "HIGHS", "OSQP", "SCS")
QP_SETTINGS = {
    "CLARABEL": {"tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10, "tol_feas": 1e-10, "max_iter": 300},
    # A time limit: on badly scaled subproblems (losses from 1e-6 to 1e3 at a budget of 1e12) HiGHS's QP
    # solver ran for hours; the next solvers in the list then take over.
    "HIGHS": {"time_limit": 10.0},
    "OSQP": {"eps_abs": 1e-9, "eps_rel": 1e-9, "max_iter": 200_000, "polish": True},
    "SCS": {"eps_abs": 1e-9, "eps_rel": 1e-9, "max_iters": 200_000},
}


def quiet_highs() -> None:
    """Let HiGHS print its copyright banner into /dev/null, once per process.

    highspy prints it to the C-level stdout when the first ``Highs`` object is built, before any
    option (``output_flag``, ``log_to_console``) can apply, so it would break ``--json -`` piping and
    clean output whenever a solve falls back to HiGHS. Building that first object here, with file
    descriptor 1 pointed at /dev/null for the moment, uses the banner up."""
    global _HIGHS_QUIET
    if _HIGHS_QUIET:
        return
    _HIGHS_QUIET = True
    try:
        import highspy
    except ImportError:  # cvxpy then has no HiGHS either
        return
    import os
    import sys

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)


_HIGHS_QUIET = False


def solve_with(problem, solver: str) -> None:
    """``problem.solve`` with ``solver`` and its settings (QP_SETTINGS), quietly."""
    if solver == "HIGHS":
        quiet_highs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        problem.solve(solver=solver, **QP_SETTINGS[solver])


class QPSubproblem:
    """The compiled subproblem (cvxpy, DPP) for one structure: free sources, terms, mode, polytope rows."""

    def __init__(self, n: int, obj_terms, con_terms, mode: str, sizes, A_lin):
        import cvxpy as cp

        self.n = n
        self.mode = mode
        self.y = cp.Variable(n, name="y")
        self.R = cp.Parameter((n, n), name="R")
        self.r = cp.Parameter(n, name="r")
        self.lo = cp.Parameter(n, name="lo")
        self.hi = cp.Parameter(n, name="hi")
        self.rho = cp.Parameter(nonneg=True, name="rho")
        self.b_lin = cp.Parameter(A_lin.shape[0], name="b") if A_lin.shape[0] else None
        self.cost = cp.Parameter(n, name="cost") if mode == "spend" else None
        self.terms = []  # per term: dict of parameters and model expression
        cons = [self.y >= self.lo, self.y <= self.hi]
        if A_lin.shape[0]:
            cons.append(A_lin @ self.y <= self.b_lin)
        for term, size in zip(list(obj_terms) + list(con_terms), sizes):
            entry = {"risk": term.risk}
            if term.risk == "mean":
                entry["a"] = cp.Parameter(n)
                entry["b"] = cp.Parameter()
                entry["model"] = entry["a"] @ self.y + entry["b"]
            else:
                entry["G"] = cp.Parameter((size, n))
                entry["f0"] = cp.Parameter(size)
                entry["coef"] = cp.Parameter(nonneg=True)
                eta, z = cp.Variable(), cp.Variable(size, nonneg=True)
                entry["hinge"] = z >= entry["f0"] + entry["G"] @ self.y - eta
                cons.append(entry["hinge"])
                entry["model"] = eta + entry["coef"] * cp.sum(z)
            self.terms.append(entry)
        n_obj = len(obj_terms)
        quad = 0.5 * cp.sum_squares(self.R @ self.y - self.r)
        if mode == "spend":
            objective = self.cost @ self.y
        elif mode == "minimax":
            t = cp.Variable()
            self.epi = [t >= e["model"] for e in self.terms[:n_obj]]
            cons += self.epi
            objective = t
        else:
            objective = self.terms[0]["model"]
        self.slack = None
        self.chance = []
        if con_terms:
            self.slack = cp.Variable(len(con_terms), nonneg=True)
            for k, e in enumerate(self.terms[n_obj:]):
                c = e["model"] <= 1.0 + self.slack[k]
                self.chance.append(c)
                cons.append(c)
            objective = objective + self.rho * cp.sum(self.slack)
        self.problem = cp.Problem(cp.Minimize(objective + quad), cons)
        self.compiled = set()

    def solve(self, notes: list):
        """Solve with the first QP solver that reaches 'optimal'; every one that fell short goes to ``notes``."""
        import cvxpy as cp

        last = None
        for solver in QP_SOLVERS:
            start = time.perf_counter()
            try:
                solve_with(self.problem, solver)
                status = self.problem.status
            except (cp.error.SolverError, ArithmeticError, ValueError) as exc:
                status = f"error ({str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__})"
            self.compiled.add(solver)
            if status == "optimal" and self.y.value is not None:
                return solver
            last = (solver, status, time.perf_counter() - start)
            notes.append(f"QP subproblem: {solver} returned {status} after {last[2]:.2f}s; trying the next solver")
        return None


class Projector:
    """Euclidean projection (in units ``unit``) onto the polytope ``{lower <= D <= upper, A D <= b}``, compiled once."""

    def __init__(self, A_lin, lower, upper, fixed, unit):
        import cvxpy as cp

        self.A = np.asarray(A_lin, dtype=np.float64).reshape(-1, len(lower))
        self.lower, self.upper = np.asarray(lower, float), np.asarray(upper, float)
        self.fixed = np.asarray(fixed, bool)
        self.free = np.flatnonzero(~self.fixed)
        self.unit = np.asarray(unit, float)[self.free]
        n = self.free.size
        self.y = cp.Variable(n)
        self.y0 = cp.Parameter(n)
        self.hi = cp.Parameter(n)
        self.b = cp.Parameter(self.A.shape[0]) if self.A.shape[0] else None
        cons = [self.y >= self.lower[self.free] / self.unit, self.y <= self.hi]
        if self.A.shape[0]:
            cons.append((self.A[:, self.free] * self.unit[None, :]) @ self.y <= self.b)
        self.problem = cp.Problem(cp.Minimize(cp.sum_squares(self.y - self.y0)), cons)

    def __call__(self, D, b, cap_spend) -> np.ndarray | None:
        D = np.asarray(D, float)
        out = np.where(self.fixed, self.lower, D)
        if self.free.size == 0:
            return out
        hi = self.upper[self.free]
        hi = np.where(np.isfinite(hi), hi, cap_spend)
        self.hi.value = np.maximum(hi, self.lower[self.free]) / self.unit
        self.y0.value = D[self.free] / self.unit
        if self.b is not None:
            self.b.value = np.asarray(b, float) - self.A @ np.where(self.fixed, self.lower, 0.0)
        for solver in QP_SOLVERS:
            try:
                solve_with(self.problem, solver)
            except Exception:  # noqa: BLE001 - any solver failure: try the next
                continue
            if self.problem.status == "optimal":
                out[self.free] = np.clip(self.y.value * self.unit, self.lower[self.free], hi)
                return out
        return None
