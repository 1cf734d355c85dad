"""Speed and quality of ``bayescale allocate`` on a K = 8 world with S = 4,000 posterior draws (a benchmark).

    .venv/bin/python benchmarks/bench_allocate.py [--repeats 5] [--cache /tmp/bayescale-bench] [--skip-cone]

The draws come from a real NUTS fit (4 chains x 1,000 draws) of the simulated world
``draw_world(8, seed=8)``; the fit is cached under ``--cache`` (about 4-5 minutes on 2 cores the
first time). One table:

- bayescale's exact program (SQP with cvxpy-compiled QP subproblems, certified gap) for
  ``cvar:0.9`` cold (a new problem: build, compile, pilot, solve, certificate), then re-solved
  with a new budget and with new weights on the compiled problem (cvxpy parameters / DPP);
  other objectives and the least-budget problem cold;
- the PyMC-Marketing approach on the same draws: SciPy SLSQP on a sort-based sample CVaR with
  exact gradients, from the uniform split; its objective is evaluated with the same exact
  CVaR, so the difference is what SLSQP leaves on the table;
- the direct exponential/power-cone program (bayescale's earlier formulation: one power cone
  per draw, target and transfer) with Clarabel, at 400 and 4,000 draws.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from bayescale.optimise import allocate as al
from bayescale.inference.sampling import ensure_host_devices
from bayescale.optimise.riskprog import LawEval

WORLD_SEED = 8
BUDGET = 256.0
GAMMA = 0.9


def posterior(cache: Path):
    from bayescale.inference.fit import fit
    from bayescale.inference.posterior import law_draws, load_posterior, save_posterior
    from bayescale.data.simulate import draw_world, simulate_grid

    path = cache / f"fit8_seed{WORLD_SEED}.nc"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        grid = simulate_grid(draw_world(8, seed=WORLD_SEED), seed=WORLD_SEED)
        save_posterior(fit(grid, chains=4, warmup=500, draws=1000, seed=0), path)
    return law_draws(load_posterior(path))


def timed(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


# ------------------------------------------------------------------------------------ SLSQP


def slsqp_cvar(draws, budget, gamma):
    """PyMC-Marketing's approach: SLSQP on the sample CVaR (mean of the worst ceil((1-gamma) S) draws,
    found by sorting) with its exact gradient, sum(D) = budget, D >= 0, from the uniform split."""
    from scipy.optimize import minimize

    law = LawEval(draws)
    I = law.I
    k = int(math.ceil((1 - gamma) * law.S))
    unit = budget / I
    free = np.arange(I)

    def f(x):
        D = x * unit
        pt = law.point(D, free)
        values = pt["L"].sum(axis=1)
        top = np.argsort(values)[-k:]
        grad = law.term_grad(pt, np.ones(law.J))[top].mean(axis=0) * unit
        return float(values[top].mean()), grad

    res = minimize(f, np.ones(I), jac=True, method="SLSQP", bounds=[(0, None)] * I,
                   constraints=[{"type": "eq", "fun": lambda x: x.sum() * unit - budget, "jac": lambda x: np.full(I, unit)}],
                   options={"maxiter": 1000, "ftol": 1e-12})
    D = np.maximum(res.x * unit, 0.0)
    D *= budget / D.sum()
    return D, res


# ------------------------------------------------------------------------------------ cone program


def cone_program(draws, budget, gamma, time_limit):
    """bayescale's earlier direct program: 3D power cones per (draw, target) and per transfer, Clarabel."""
    import cvxpy as cp
    import scipy.sparse as sp

    BETA_LINEAR = 1.0 - 1e-9
    D0 = float(draws.data_scale)
    S, n_src = draws.n_draws, len(draws.sources)
    K = len(draws.targets)
    mask = np.asarray(draws.self_mask, dtype=np.float64)
    E, A, alpha, x0 = draws.E, draws.A, draws.alpha, draws.x0
    T = np.asarray(draws.T, dtype=np.float64) * (1.0 - mask)[None]
    beta = np.asarray(draws.beta, dtype=np.float64)
    uniform = np.full(n_src, budget / n_src)
    law = LawEval(draws)
    entry = np.clip((law.values(uniform) - E) / A, 1e-8, 1e8)
    loss_scale = al.objective_values(draws, uniform, f"cvar:{gamma}")
    row = np.broadcast_to(np.arange(S)[:, None, None] * K + np.arange(K)[None, None, :], T.shape)
    src = np.broadcast_to(np.arange(n_src)[None, :, None], T.shape)
    k = uniform / D0
    delta = cp.Variable(n_src)
    d = cp.multiply(k, delta)
    linear = (T > 0) & (beta >= BETA_LINEAR)
    own_i, own_j = np.nonzero(mask)
    own_rows = (np.arange(S)[:, None] * K + own_j[None, :]).ravel()
    G = sp.csr_matrix((np.concatenate([T[linear], np.ones(own_rows.size)]),
                       (np.concatenate([row[linear], own_rows]), np.concatenate([src[linear], np.tile(own_i, S)]))),
                      shape=(S * K, n_src))
    x = x0.ravel() + G @ d
    cones = (T > 0) & (beta < BETA_LINEAR)
    n_u = int(cones.sum())
    u = cp.Variable(n_u)
    M = sp.csr_matrix((T[cones] * k[src[cones]] ** beta[cones], (row[cones], np.arange(n_u))), shape=(S * K, n_u))
    x = x + M @ u
    t = cp.Variable(S * K)
    a = 1.0 / (1.0 + alpha.ravel())
    c = entry.ravel()
    cons = [cp.constraints.PowCone3D(delta[src[cones]], np.ones(n_u), u, beta[cones]), u >= 0,
            cp.constraints.PowCone3D(t, x, c ** (-a), a), k @ delta <= budget / D0, delta >= 0]
    F = sp.csr_matrix((A.ravel() * c / loss_scale, (np.repeat(np.arange(S), K), np.arange(S * K))), shape=(S, S * K))
    f = E.sum(axis=1) / loss_scale + F @ t
    eta = cp.Variable()
    problem = cp.Problem(cp.Minimize(eta + cp.sum(cp.pos(f - eta)) / ((1 - gamma) * S)), cons)
    t0 = time.perf_counter()
    try:
        problem.solve(solver="CLARABEL", max_iter=300, time_limit=time_limit, max_step_fraction=0.8)
        status = problem.status
    except cp.error.SolverError as exc:
        status = f"failed ({str(exc).splitlines()[0][:40]})"
    seconds = time.perf_counter() - t0
    D = None if d.value is None else np.maximum(np.asarray(d.value).ravel() * D0, 0)
    return D, status, seconds, n_u + S * K


# ------------------------------------------------------------------------------------ main


def main():
    ensure_host_devices()  # parallel chains: before anything starts JAX
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/bayescale-bench"))
    parser.add_argument("--skip-cone", action="store_true", help="skip the direct power-cone program")
    parser.add_argument("--cone-time-limit", type=float, default=120.0)
    args = parser.parse_args()
    console = Console()
    t0 = time.perf_counter()
    draws = posterior(args.cache)
    console.print(f"posterior: {draws.n_draws} NUTS draws, {len(draws.sources)} domains ({time.perf_counter() - t0:.1f}s to load/fit)")
    t0 = time.perf_counter()
    import cvxpy  # noqa: F401

    al.allocate(draws.subset(np.arange(50)), 100.0, objective="cvar:0.9", uncertainty=0, baselines=False)
    import_s = time.perf_counter() - t0
    objective = f"cvar:{GAMMA:g}"
    rows = []

    def program(obj=objective, **kw):
        spec = al.build_spec(draws, objective=obj, **kw)
        return al.AllocationProblem(draws, spec, reference_budget=BUDGET, min_budget="chance" in kw)

    # 1. cold solves
    t_cold, (prob, sol) = timed(lambda: (lambda p: (p, p.solve(BUDGET)))(program()), args.repeats)
    ours = sol.objective
    rows.append((f"bayescale {objective}, cold (build + compile + solve + certificate)", f"{t_cold:.2f} s",
                 f"{ours:.6f}", f"gap {sol.rel_gap:.1e}; {sol.iterations} SQP iterations, {sol.qp_solves} QPs ({sol.solver})"))
    assert abs(ours - al.objective_values(draws, sol.D, objective)) <= 1e-9 * ours

    # 2. re-solves on the compiled problem
    budgets = [BUDGET * f for f in (0.5, 0.75, 1.5, 2.0, 3.0)]
    times, gaps = [], []
    for b in budgets:
        t = time.perf_counter()
        s = prob.solve(b, start=sol.D * b / BUDGET)
        times.append(time.perf_counter() - t)
        gaps.append(s.rel_gap)
    rows.append(("  re-solve, new budget (compiled problem, warm start)", f"{statistics.median(times):.3f} s", "",
                 f"median of {len(budgets)} budgets; max gap {max(gaps):.1e}"))
    times, gaps = [], []
    rng = np.random.default_rng(0)
    for _ in range(5):
        w = {t: float(x) for t, x in zip(draws.targets, rng.uniform(0.5, 2.0, len(draws.targets)))}
        t = time.perf_counter()
        s = prob.solve(BUDGET, weights=w, start=sol.D)
        times.append(time.perf_counter() - t)
        gaps.append(s.rel_gap)
    rows.append(("  re-solve, new target weights (compiled problem, warm start)", f"{statistics.median(times):.3f} s", "",
                 f"median of 5 weightings; max gap {max(gaps):.1e}"))

    # 3. other objectives and the least budget
    for obj in ("mean", "worst", "minimax"):
        t_o, (_, s) = timed(lambda: (lambda p: (p, p.solve(BUDGET)))(program(obj)), max(1, args.repeats // 2))
        rows.append((f"bayescale {obj}, cold", f"{t_o:.2f} s", f"{s.objective:.6f}", f"gap {s.rel_gap:.1e}"))
    L_ref = LawEval(draws).values(sol.D)
    tau = float(np.quantile(L_ref[:, -1], 0.9))
    chance = [f"{draws.targets[-1]}<={tau:.4g}@0.9"]
    t_m, (_, s) = timed(lambda: (lambda p: (p, p.solve()))(program("mean", chance=chance)), max(1, args.repeats // 2))
    rows.append((f"bayescale least budget for {chance[0]}, cold", f"{t_m:.2f} s", f"spend {s.objective:.2f}",
                 f"gap {s.rel_gap:.1e}"))
    t_full, res = timed(lambda: al.allocate(draws, BUDGET, objective=objective, max_draws=None), 1)
    rows.append(("allocate() in full: + 4 baselines, 200 per-draw optima", f"{t_full:.2f} s", "",
                 f"per-draw optima {res['decision_uncertainty']['seconds']:.2f} s; transfer-unaware "
                 f"{res['transfer_unaware']['seconds']:.2f} s"))

    # 4. SLSQP on the sorted sample CVaR (PyMC-Marketing)
    for gamma, reference in ((GAMMA, ours), (0.99, None)):
        name = f"cvar:{gamma:g}"
        if reference is None:
            t_o, (_, s) = timed(lambda: (lambda p: (p, p.solve(BUDGET)))(program(name)), max(1, args.repeats // 2))
            reference = s.objective
            rows.append((f"bayescale {name}, cold", f"{t_o:.2f} s", f"{s.objective:.6f}", f"gap {s.rel_gap:.1e}"))
        t_s, (D_s, r) = timed(lambda: slsqp_cvar(draws, BUDGET, gamma), args.repeats)
        v_s = al.objective_values(draws, D_s, name)
        rows.append((f"SLSQP on sort-based sample CVaR ({name}), exact gradients", f"{t_s:.2f} s", f"{v_s:.6f}",
                     f"{100 * (v_s - reference) / reference:+.2e}% vs ours; {r.nit} iterations, '{r.message}'"))

    # 5. the direct power-cone program
    if not args.skip_cone:
        for S in (400, 4000):
            sub = draws.subset(np.linspace(0, draws.n_draws - 1, S).astype(int))
            D_c, status, secs, n_cones = cone_program(sub, BUDGET, GAMMA, args.cone_time_limit)
            if D_c is not None:
                p = al.AllocationProblem(sub, al.build_spec(sub, objective=objective), reference_budget=BUDGET).solve(BUDGET)
                v_c = al.objective_values(sub, D_c, objective)
                note = f"{status}; {100 * (v_c - p.objective) / p.objective:+.2e}% vs ours on the same {S} draws"
            else:
                v_c, note = float("nan"), f"{status}, no allocation"
            rows.append((f"power-cone program, Clarabel, {S} draws ({n_cones:,} cones)", f"{secs:.1f} s",
                         f"{v_c:.6f}", note))

    table = Table(title=f"allocate: K = 8 domains, S = {draws.n_draws} NUTS draws, budget {BUDGET:g}, "
                        f"median of {args.repeats} (cvxpy import and first compile: {import_s:.1f} s, once per process)")
    for name, justify in (("method", "left"), ("time", "right"), ("objective", "right"), ("note", "left")):
        table.add_column(name, justify=justify)
    for row in rows:
        table.add_row(*row)
    console.print(table)


if __name__ == "__main__":
    main()
