"""The certified risk program (riskprog.RiskProgram) against an independent convex formulation.

The reference is the same small problem written directly in cvxpy: the law
``L_sj = E + A (x0 + d_j + sum_i T_sij d_i^beta_sij)^(-alpha)`` (``d = D / D0``) is convex in
``d`` and DCP-representable (a decreasing convex power of a concave sum of concave powers),
and the CVaR is the Rockafellar-Uryasev minimum with one hinge per draw, so a conic solver
finds the optimum of exactly the program RiskProgram solves, without SQP or certificate.

Tolerances: RiskProgram certifies ``objective - optimum <= gap`` with ``gap / |objective| <=
GAP_TOL`` (1e-5); the conic solver (SCS, power cones, eps 1e-10) stops far closer than 1e-6 relative. So, with ``obj`` the NumPy
objective: ``obj(D_ours) <= obj(D_ref) + gap`` (D_ref is feasible, hence >= optimum) and
``obj(D_ref) <= obj(D_ours) + 1e-6 * |obj|`` (the reference is optimal to its tolerance, well
inside 1e-6). The certificate's lower bound must lie below the objective of *every* feasible
allocation, the reference's and random ones included.
"""

from __future__ import annotations

import numpy as np
import pytest

from bayescale.optimise.riskprog import GAP_TOL, LawEval, RiskProgram, Term, risk_value, tail_mean, tail_weights
from tests.bayescale.optimise.test_allocate import make_draws

cp = pytest.importorskip("cvxpy")

BUDGET = 120.0
S = 20


def program(law: LawEval, term: Term, budget=BUDGET, upper=None) -> RiskProgram:
    I = law.I
    return RiskProgram(law, [term], [], "single", A_lin=np.ones((1, I)), b_lin=np.array([budget]), row_names=["budget"],
                       lower=np.zeros(I), upper=np.full(I, np.inf) if upper is None else upper,
                       fixed=np.zeros(I, dtype=bool), costs=np.ones(I), unit=np.full(I, budget / I))


def reference(law: LawEval, v, risk: str, gamma=None, budget=BUDGET, upper=None) -> np.ndarray:
    """The optimum of the same program, as a conic program (raw amounts)."""
    d = cp.Variable(law.I, nonneg=True)
    f = []
    for s in range(law.S):
        total = 0
        for j in range(law.J):
            if v[j] == 0:
                continue
            inner = law.x0[s, j] + law.mask[:, j] @ d
            for i in range(law.I):
                if law.T[s, i, j] > 0:
                    inner = inner + law.T[s, i, j] * cp.power(d[i], law.beta[s, i, j], approx=False)
            total = total + v[j] * (law.E[s, j] + law.A[s, j] * cp.power(inner, -law.alpha[s, j], approx=False))
        f.append(total)
    f = cp.hstack(f)
    if risk == "worst":
        objective = cp.max(f)
    elif risk == "mean":
        objective = cp.sum(f) / law.S
    else:
        n = (1.0 - gamma) * law.S
        eta = cp.Variable()
        objective = eta + cp.sum(cp.pos(f - eta)) / n
    cons = [cp.sum(d) * law.D0 <= budget]
    if upper is not None:
        cons.append(d * law.D0 <= upper)
    # SCS at a tight tolerance: Clarabel stops on the power cones of the worst-case program
    cp.Problem(cp.Minimize(objective), cons).solve(solver="SCS", eps_abs=1e-10, eps_rel=1e-10, max_iters=200_000)
    D = np.maximum(d.value, 0.0) * law.D0
    return D * min(1.0, budget / D.sum())  # exactly feasible


def objective(law: LawEval, term: Term, D) -> float:
    return risk_value(term, law.values(D) @ term.v)


@pytest.mark.parametrize("risk, gamma", [("cvar", 0.8), ("worst", None), ("mean", None)])
def test_certified_solution_matches_an_independent_conic_solve(risk, gamma):
    law = LawEval(make_draws(S=S, seed=5))
    v = np.array([1.0, 0.5, 2.0, 1.0, 0.0])  # the island (weight 0) does not count
    term = Term(v, risk, gamma, "objective")
    sol = program(law, term).solve(np.full(law.I, BUDGET / law.I), budget=BUDGET)
    D_ref = reference(law, v, risk, gamma)

    assert sol.D.sum() <= BUDGET * (1 + 1e-9) and np.all(sol.D >= -1e-12)
    ours, ref = objective(law, term, sol.D), objective(law, term, D_ref)
    assert sol.objective == pytest.approx(ours, rel=1e-12)  # the reported objective is the exact one
    # the certificate: a lower bound, a gap it reports, and the gap within the tolerance
    assert sol.gap == pytest.approx(ours - sol.lower_bound, rel=1e-9, abs=1e-12)
    assert 0.0 <= sol.rel_gap <= GAP_TOL
    assert sol.lower_bound <= ref * (1 + 1e-12)  # below the optimum, hence below any feasible objective
    assert ours <= ref + sol.gap + 1e-12
    assert ref <= ours * (1 + 1e-6)


def test_lower_bound_is_below_every_random_feasible_allocation():
    law = LawEval(make_draws(S=S, seed=6))
    upper = np.array([30.0, np.inf, 60.0, np.inf, 40.0])
    term = Term(np.ones(law.J), "cvar", 0.9, "objective")
    sol = program(law, term, upper=upper).solve(np.full(law.I, 20.0), budget=BUDGET)
    assert np.all(sol.D <= upper * (1 + 1e-9)) and sol.D.sum() <= BUDGET * (1 + 1e-9)
    rng = np.random.default_rng(0)
    values = []
    for _ in range(300):
        D = rng.dirichlet(np.full(law.I, 0.7)) * BUDGET
        D = np.minimum(D, upper)
        values.append(objective(law, term, D))
    assert sol.lower_bound <= min(values)
    assert sol.objective <= min(values) + sol.gap  # nothing sampled beats the certified solution by more than the gap
    assert sol.rel_gap <= GAP_TOL


def test_budget_dual_is_the_slope_of_the_optimal_value():
    law = LawEval(make_draws(S=S, seed=7))
    term = Term(np.ones(law.J), "mean", None, "objective")
    prog = program(law, term)
    sol = prog.solve(np.full(law.I, BUDGET / law.I), budget=BUDGET)
    step = 1e-3 * BUDGET
    up = prog.solve(sol.D, budget=BUDGET + step, warm=True)
    down = prog.solve(sol.D * (1 - step / BUDGET), budget=BUDGET - step, warm=True)
    slope = (up.objective - down.objective) / (2 * step)
    assert sol.duals["budget"] == pytest.approx(-slope, rel=1e-3)


def test_tail_mean_and_weights_are_the_exact_cvar():
    rng = np.random.default_rng(1)
    f = rng.normal(size=40)
    top = np.sort(f)[::-1]
    assert tail_mean(f, 1.0) == pytest.approx(top[0])
    assert tail_mean(f, 4.0) == pytest.approx(top[:4].mean())
    assert tail_mean(f, 2.5) == pytest.approx((top[0] + top[1] + 0.5 * top[2]) / 2.5)  # fractional edge
    w = tail_weights(f, 2.5)
    assert w.sum() == pytest.approx(1.0) and np.all(w >= 0) and w @ f == pytest.approx(tail_mean(f, 2.5))
    assert risk_value(Term(np.ones(1), "cvar", 0.9), f) == pytest.approx(tail_mean(f, 4.0))


def bent_draws(S=S, seed=8):
    """make_draws with a steepening break per draw and target (law 'bend') and interference (law 'interference')."""
    import dataclasses

    draws = make_draws(S=S, seed=seed)
    rng = np.random.default_rng(seed)
    return dataclasses.replace(draws, delta=rng.uniform(0.0, 0.8, draws.E.shape), log_xb=rng.normal(np.log(2.0), 0.5, draws.E.shape),
                               kappa=rng.uniform(0.0, 0.01, draws.T.shape))


def test_a_bent_interfering_laws_gradient_and_hessian_match_finite_differences():
    law = LawEval(bent_draws())
    term = Term(np.array([1.0, 0.5, 2.0, 1.0, 0.3]), "mean", None, "objective")
    D = np.array([30.0, 12.0, 25.0, 40.0, 13.0])
    free = np.arange(law.I)
    pt = law.point(D, free)
    grad = law.term_grad(pt, term.v).mean(axis=0)
    W = np.tile(term.v, (law.S, 1)) / law.S
    H = law.hessian(pt, W)
    f = lambda x: float(np.mean(law.values(x) @ term.v))  # noqa: E731
    h = 1e-3
    for i in range(law.I):
        e = np.zeros(law.I)
        e[i] = h
        assert grad[i] == pytest.approx((f(D + e) - f(D - e)) / (2 * h), rel=1e-5)
        g_up = law.term_grad(law.point(D + e, free), term.v).mean(axis=0)
        g_dn = law.term_grad(law.point(D - e, free), term.v).mean(axis=0)
        np.testing.assert_allclose(H[:, i], (g_up - g_dn) / (2 * h), rtol=1e-4, atol=1e-10)
    assert np.all(np.linalg.eigvalsh(H) >= -1e-12)  # convex: delta >= 0 keeps the Hessian positive semidefinite


def test_a_bent_law_is_solved_and_certified_against_an_independent_local_solver():
    from scipy.optimize import minimize

    law = LawEval(bent_draws(seed=9))
    term = Term(np.ones(law.J), "mean", None, "objective")
    sol = program(law, term).solve(np.full(law.I, BUDGET / law.I), budget=BUDGET)
    assert sol.rel_gap <= GAP_TOL
    # SLSQP on the simplex from several starts: nothing it finds beats the certified solution by more than the gap
    rng = np.random.default_rng(0)
    best = np.inf
    for _ in range(5):
        start = rng.dirichlet(np.ones(law.I)) * BUDGET
        res = minimize(lambda D: objective(law, term, D), start, method="SLSQP", bounds=[(0, BUDGET)] * law.I,
                       constraints=[{"type": "ineq", "fun": lambda D: BUDGET - D.sum()}], options={"ftol": 1e-12, "maxiter": 500})
        D = np.clip(res.x, 0, None)
        D *= min(1.0, BUDGET / D.sum())
        best = min(best, objective(law, term, D))
    assert sol.lower_bound <= best
    assert sol.objective <= best + sol.gap
