"""How sure the recommendation is, how it moves with the budget, and whole units.

- :func:`per_draw_optima`: the posterior distribution of the optimal allocation. For each of
  ``N`` posterior draws, the allocation that would be optimal *if that draw were the truth*
  (the draw's own weighted loss, or worst target, or — for the least-budget problem — the
  least spend that meets every chance target in that draw), under the same linear
  constraints. All ``N`` problems are solved together: one block-separable quadratic
  subproblem per Newton iteration (cvxpy, compiled once), a line search per draw.
- :func:`round_allocation`: integer amounts that respect every constraint (budget, caps,
  minimums, groups and the chance constraints' CVaR), the best of all floor/ceil roundings
  (a greedy completion beyond 12 fractional sources).
"""

from __future__ import annotations

import itertools
import math
import time
import warnings

import numpy as np

from bayescale.laws.power import reducible_and_slopes
from bayescale.optimise.riskprog import KAPPA, QP_SETTINGS, QP_SOLVERS, LawEval


# ------------------------------------------------------------------------------------ per draw

BLOCK_LIMITS = {"CLARABEL": {"time_limit": 10.0}, "SCS": {"time_limit_secs": 10.0}}  # per block subproblem


def _diag(law: LawEval, Dm, free, hessian_weights=None):
    """Row n of ``Dm`` under draw n: losses (N, J), gradients (N, J, n_free), Hessians (N, n, n) if asked."""
    d = np.maximum(np.asarray(Dm, dtype=np.float64), 0.0) / law.D0  # (N, I)
    pos = d > 0
    logd = np.log(np.where(pos, d, 1.0))
    pw = np.where(pos[:, :, None], np.exp(law.beta * logd[:, :, None]), 0.0)  # (N, I, J)
    x = law.x0 + d @ law.mask + np.einsum("nij,nij->nj", law.T, pw)
    R, c1, a = reducible_and_slopes(x, law.A, law.alpha, law.delta, law.xb)  # R, dL/dx, d2L/dx2
    L = law.E + R + np.einsum("ni,nij->nj", d, law.kappa)  # interference: linear in d
    kappa = law.kappa
    m = law.row_factors(Dm)  # each row's factor at its own total (held fixed in the derivatives)
    if m is not None:
        L, c1, a, kappa = L * m, c1 * m, a * m, kappa * m[:, None, :]
    if free is None:
        return L
    ds = np.maximum(d[:, free], 1e-12)
    beta, T = law.beta[:, free, :], law.T[:, free, :]
    pwm1 = np.exp((beta - 1.0) * np.log(ds)[:, :, None])
    dx = law.mask[free][None] + T * beta * pwm1  # (N, n, J)
    grad = np.transpose(c1[:, None, :] * dx + kappa[:, free, :], (0, 2, 1)) / law.D0  # (N, J, n)
    if hessian_weights is None:
        return L, grad
    W = hessian_weights  # (N, J)
    H = np.einsum("nj,nij,nkj->nik", W * a, dx, dx)
    d2x = T * beta * (beta - 1.0) * pwm1 / ds[:, :, None]
    idx = np.arange(len(free))
    H[:, idx, idx] += np.einsum("nj,nij->ni", W * c1, d2x)
    return L, grad, H / law.D0**2


class _BlockQP:
    def __init__(self, N, n, J_obj, J_con, mode, A_free):
        import cvxpy as cp

        self.Y = cp.Variable((N, n))
        self.lo = cp.Parameter((N, n))
        self.hi = cp.Parameter((N, n))
        self.Rb = [cp.Parameter((N, n)) for _ in range(n)]
        self.Rr = cp.Parameter((N, n))
        ones = np.ones((1, n))
        Z = sum(cp.multiply(self.Rb[b], self.Y[:, b : b + 1] @ ones) for b in range(n))
        quad = 0.5 * cp.sum_squares(Z - self.Rr)
        cons = [self.Y >= self.lo, self.Y <= self.hi]
        self.b = None
        if A_free.shape[0]:
            self.b = cp.Parameter(A_free.shape[0])
            cons.append(self.Y @ A_free.T <= np.ones((N, 1)) @ cp.reshape(self.b, (1, A_free.shape[0]), order="C"))
        self.G = [cp.Parameter((N, n)) for _ in range(J_obj + J_con)]
        self.f0 = [cp.Parameter(N) for _ in range(J_obj + J_con)]
        lin = [self.f0[k] + cp.sum(cp.multiply(self.G[k], self.Y), axis=1) for k in range(J_obj + J_con)]
        if mode == "sum":
            objective = cp.sum(lin[0])
        elif mode == "max":
            t = cp.Variable(N)
            self.epi = [t >= lin[k] for k in range(J_obj)]
            cons += self.epi
            objective = cp.sum(t)
        else:  # spend: lin[0] is the (scaled) spend
            objective = cp.sum(lin[0])
        self.rho = cp.Parameter(nonneg=True)
        if J_con:
            s = cp.Variable((N, J_con), nonneg=True)
            self.con = [lin[J_obj + k] <= 1.0 + s[:, k] for k in range(J_con)]
            cons += self.con
            objective = objective + self.rho * cp.sum(s)
        self.problem = cp.Problem(cp.Minimize(objective + quad), cons)

    def solve(self):
        import cvxpy as cp

        for solver in QP_SOLVERS:
            settings = dict(QP_SETTINGS[solver], **BLOCK_LIMITS.get(solver, {}))
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self.problem.solve(solver=solver, **settings)
            except (cp.error.SolverError, ArithmeticError, ValueError):
                continue
            if self.problem.status == "optimal":
                return solver
        return None


def per_draw_optima(law: LawEval, index, *, mode: str, obj_v, con, costs, lower, upper, fixed, A_lin, b_lin,
                    unit, start, spend_cap, max_iter: int = 30, tol: float = 1e-10) -> dict:
    """Optimal allocation under each draw in ``index``.

    ``mode``: ``"sum"`` (minimise ``L_n . obj_v[0]``), ``"max"`` (minimise ``max_k L_n . obj_v[k]``)
    or ``"spend"`` (minimise ``costs . D`` s.t. ``L_nj <= tau_j`` for ``(j, tau_j)`` in ``con``).
    Returns ``{"D": (N, I), "ok": (N,) bool, "iterations", "seconds"}``.
    """
    t0 = time.perf_counter()
    sub = law.subset(np.asarray(index))
    N = sub.S
    fixed = np.asarray(fixed, dtype=bool)
    free = np.flatnonzero(~fixed)
    n = free.size
    D = np.tile(np.asarray(start, dtype=np.float64), (N, 1))
    if n == 0:
        return {"D": D, "ok": np.ones(N, dtype=bool), "iterations": 0, "seconds": time.perf_counter() - t0}
    u = np.asarray(unit, dtype=np.float64)[free]
    A = np.asarray(A_lin, dtype=np.float64).reshape(-1, law.I)
    A_free = A[:, free] * u[None, :]
    D_fixed = np.where(fixed, lower, 0.0)
    obj_v = [np.asarray(v, dtype=np.float64) for v in obj_v]
    con_v = [np.eye(law.J)[j] / tau for j, tau in con]
    J_obj = 1 if mode in ("sum", "spend") else len(obj_v)
    qp = _BlockQP(N, n, J_obj, len(con_v), mode, A_free)
    if qp.b is not None:
        qp.b.value = np.asarray(b_lin, dtype=np.float64) - A @ D_fixed
    hi = np.asarray(upper, dtype=np.float64)[free]
    hi = np.where(np.isfinite(hi), hi, spend_cap / np.asarray(costs)[free])
    hi_y = np.tile(np.maximum(hi, np.asarray(lower)[free]) / u, (N, 1))
    lo_bound = np.tile(np.asarray(lower, dtype=np.float64)[free] / u, (N, 1))
    qp.hi.value = hi_y
    used = sorted({int(j) for v in obj_v + con_v for j in np.flatnonzero(v)})
    concave = law.concave_sources(used)[free]
    rho = 10.0
    qp.rho.value = rho

    def parts(Dm):
        L = _diag(sub, Dm, None)
        if mode == "spend":
            obj = (Dm @ costs) / scale
        elif mode == "sum":
            obj = (L @ obj_v[0]) / scale
        else:
            obj = np.max(np.stack([L @ v for v in obj_v], axis=1), axis=1) / scale
        viol = np.stack([L @ v - 1.0 for v in con_v], axis=1) if con_v else np.zeros((N, 0))
        return obj, viol

    def merit(Dm):
        obj, viol = parts(Dm)
        return obj + rho * np.sum(np.maximum(viol, 0.0), axis=1), viol

    L0 = _diag(sub, D, None)
    if mode == "spend":
        scale = np.maximum(D @ costs, 1e-12)
    elif mode == "sum":
        scale = np.maximum(L0 @ obj_v[0], 1e-12)
    else:
        scale = np.maximum(np.max(np.stack([L0 @ v for v in obj_v], axis=1), axis=1), 1e-12)
    phi, viol = merit(D)
    done = np.zeros(N, dtype=bool)
    it = 0
    pis = [np.full(N, 1.0 / J_obj) for _ in range(J_obj)]
    mus = [np.ones(N) for _ in con_v]
    for it in range(1, max_iter + 1):
        W = np.zeros((N, law.J))
        if mode == "sum":
            W += obj_v[0][None, :] / scale[:, None]
        elif mode == "max":
            for k, v in enumerate(obj_v):
                W += pis[k][:, None] * v[None, :] / scale[:, None]
        for k, v in enumerate(con_v):
            W += mus[k][:, None] * v[None, :]
        L, grad, H = _diag(sub, D, free, W)
        y = D[:, free] / u
        # linear parts
        if mode == "spend":
            G = np.tile(np.asarray(costs, float)[free] * u, (N, 1)) / scale[:, None]
            qp.G[0].value = G
            qp.f0[0].value = (D @ costs) / scale - np.sum(G * y, axis=1)
        else:
            for k, v in enumerate(obj_v if mode == "max" else obj_v[:1]):
                g = np.einsum("njk,j->nk", grad, v) * u[None, :] / scale[:, None]
                qp.G[k].value = g
                qp.f0[k].value = (L @ v) / scale - np.sum(g * y, axis=1)
        for k, v in enumerate(con_v):
            g = np.einsum("njk,j->nk", grad, v) * u[None, :]
            qp.G[J_obj + k].value = g
            qp.f0[J_obj + k].value = L @ v - np.sum(g * y, axis=1)
        Hy = H * np.outer(u, u)[None]
        evals, evecs = np.linalg.eigh(0.5 * (Hy + np.transpose(Hy, (0, 2, 1))))
        # A proximal floor (objectives are scaled to ~1 per draw, amounts to ~1): directions in which a
        # draw's problem is flat (e.g. targets that never bind in a minimax) stay well posed for the QP.
        floor = np.maximum(1e-6 * np.max(np.abs(evals), axis=1, keepdims=True), 1e-4)
        R = np.transpose(evecs * np.sqrt(np.maximum(evals, floor))[:, None, :], (0, 2, 1))  # (N, n, n): R_n
        for b in range(n):
            qp.Rb[b].value = R[:, :, b]
        qp.Rr.value = np.einsum("nab,nb->na", R, y)
        lo = np.where(concave[None, :], np.maximum(lo_bound, y / KAPPA), lo_bound)
        qp.lo.value = np.minimum(lo, hi_y)
        qp.rho.value = rho
        if qp.solve() is None:
            break
        Y = np.clip(qp.Y.value, qp.lo.value, hi_y)
        # per-draw model value at the new point
        lin = [qp.f0[k].value + np.sum(qp.G[k].value * Y, axis=1) for k in range(J_obj + len(con_v))]
        if mode == "max":
            model = np.max(np.stack(lin[:J_obj], axis=1), axis=1)
        else:
            model = lin[0]
        if con_v:
            model = model + rho * np.sum(np.maximum(np.stack(lin[J_obj:], axis=1) - 1.0, 0.0), axis=1)
        Z = np.einsum("nab,nb->na", R, Y) - qp.Rr.value
        model = model + 0.5 * np.sum(Z**2, axis=1)
        dec = phi - model
        rel_step = np.max(np.abs(Y - y) / np.maximum(np.abs(y), 1e-9), axis=1)
        done |= (dec <= tol * np.maximum(1.0, np.abs(phi))) & ((rel_step <= 1e-6) | (dec <= 1e-15))
        if np.all(done):
            break
        D_new = D.copy()
        D_new[:, free] = Y * u
        step = np.where(done, 0.0, 1.0)
        accepted = done.copy()
        D_try, phi_try = D, phi
        for _ in range(40):
            D_try = D + step[:, None] * (D_new - D)
            phi_try, viol_try = merit(D_try)
            ok = phi_try <= phi - 1e-4 * step * np.maximum(dec, 0.0)
            accepted |= ok
            if np.all(accepted | (step < 1e-10)):
                break
            step = np.where(accepted, step, step * 0.5)
        move = accepted & ~done
        D[move] = D_try[move]
        phi = np.where(move, phi_try, phi)
        done |= ~accepted  # a stalled line search: that draw is as good as it gets
        # The subproblem's multipliers weight the targets (and constraints) in the next Hessians.
        if mode == "max":
            duals = [c.dual_value for c in qp.epi]
            if all(dl is not None for dl in duals):
                pis = [np.maximum(np.asarray(dl, dtype=np.float64), 0.0) for dl in duals]
        if con_v:
            duals = [c.dual_value for c in qp.con]
            if all(dl is not None for dl in duals):
                mus = [np.maximum(np.asarray(dl, dtype=np.float64), 0.0) for dl in duals]
                if max(float(np.max(m)) for m in mus) > 0.5 * rho:
                    rho = 2.0 * max(float(np.max(m)) for m in mus) + 1.0
                    phi, _ = merit(D)
    _, viol = merit(D)
    ok = np.all(viol <= 1e-6, axis=1) if viol.size else np.ones(N, dtype=bool)
    return {"D": D, "ok": ok, "iterations": it, "seconds": time.perf_counter() - t0}


def summarise_decisions(D, ok, sources, costs, interval: float, recommended) -> dict:
    """Fractions (of the amount) and amounts of the per-draw optima: mean, median, central interval."""
    D = np.asarray(D, dtype=np.float64)[np.asarray(ok)]
    out = {"draws": int(np.asarray(ok).size), "solved": int(D.shape[0])}
    if D.shape[0] == 0:
        out.update({"fractions": {}, "amounts": {}, "largest_share": {}})
        return out
    total = D.sum(axis=1, keepdims=True)
    frac = np.divide(D, total, out=np.zeros_like(D), where=total > 0)
    q = [(1 - interval) / 2, 0.5, (1 + interval) / 2]

    def summary(values):
        lo, med, hi = np.quantile(values, q)
        return {"mean": float(np.mean(values)), "median": float(med), "lo": float(lo), "hi": float(hi)}

    out["fractions"] = {s: summary(frac[:, i]) for i, s in enumerate(sources)}
    out["amounts"] = {s: summary(D[:, i]) for i, s in enumerate(sources)}
    top = np.argmax(frac, axis=1)
    out["largest_share"] = {s: float(np.mean(top == i)) for i, s in enumerate(sources)}
    rec = np.asarray(recommended, dtype=np.float64)
    rec_frac = rec / rec.sum() if rec.sum() > 0 else rec
    # How far the per-draw optima are from the recommendation (total variation of the shares).
    tv = 0.5 * np.abs(frac - rec_frac[None, :]).sum(axis=1)
    out["distance_to_recommendation"] = summary(tv)
    out["spend"] = summary(D @ np.asarray(costs, dtype=np.float64))
    return out


# ------------------------------------------------------------------------------------ whole units


def round_allocation(D, *, lower, upper, fixed, A_lin, b_lin, evaluate, max_enumerate: int = 12, tol: float = 1e-9):
    """The best integer allocation next to ``D`` that meets every constraint.

    ``evaluate(Dm (N, I)) -> (objective (N,), feasible (N,) bool)`` judges candidates (the
    objective and the chance constraints on the optimisation draws). Fixed sources keep their
    amounts. Returns (allocation or None, objective, how many candidates were checked, note).
    """
    D = np.asarray(D, dtype=np.float64)
    fixed = np.asarray(fixed, dtype=bool)
    lo_int = np.ceil(np.asarray(lower, dtype=np.float64) - tol)
    hi_int = np.floor(np.where(np.isfinite(upper), upper, 1e18) + tol)
    A = np.asarray(A_lin, dtype=np.float64).reshape(-1, D.size)
    b = np.asarray(b_lin, dtype=np.float64)
    base = np.where(fixed, D, np.clip(np.floor(D + tol), lo_int, hi_int))
    frac = np.flatnonzero(~fixed & (np.abs(D - np.round(D)) > tol) & (base + 1 <= hi_int))
    # Amounts that are already whole (to tol) are rounded to that whole number.
    base = np.where(~fixed & (np.abs(D - np.round(D)) <= tol), np.clip(np.round(D), lo_int, hi_int), base)

    def linear_ok(Dm):
        if A.shape[0] == 0:
            return np.ones(Dm.shape[0], dtype=bool)
        scale = np.maximum(np.abs(b), 1.0)
        return np.all((Dm @ A.T - b) <= tol * scale, axis=1)

    if frac.size <= max_enumerate:
        combos = np.array(list(itertools.product((0.0, 1.0), repeat=frac.size))) if frac.size else np.zeros((1, 0))
        cands = np.repeat(base[None, :], combos.shape[0], axis=0)
        cands[:, frac] += combos
        note = f"best of {cands.shape[0]} floor/ceil roundings"
    else:  # greedy: round down, then add units where the objective gains most while constraints allow
        cands = [base.copy()]
        current = base.copy()
        for _ in range(frac.size):
            trial = np.repeat(current[None, :], frac.size, axis=0)
            trial[np.arange(frac.size), frac] += 1
            trial = trial[(trial[:, frac] <= np.ceil(D[frac] - tol)[None, :]).all(axis=1) & linear_ok(trial)]
            if trial.shape[0] == 0:
                break
            obj, _ = evaluate(trial)
            current = trial[int(np.argmin(obj))]
            cands.append(current.copy())
        cands = np.array(cands)
        note = f"greedy rounding over {frac.size} fractional sources"
    cands = cands[linear_ok(cands)]
    if cands.shape[0] == 0:
        return None, math.nan, 0, "no floor/ceil rounding meets the linear constraints"
    obj, feasible = evaluate(cands)
    if not np.any(feasible):
        return None, math.nan, int(cands.shape[0]), "no floor/ceil rounding meets the chance constraints"
    k = int(np.argmin(np.where(feasible, obj, np.inf)))
    return cands[k], float(obj[k]), int(cands.shape[0]), note
