"""Everything reported around a solved allocation, as the records of :mod:`bayescale.optimise.results`.

Given the solved :class:`~bayescale.optimise.problem.AllocationProblem` and its allocation
``D``: predictions, binding constraints, group shares, the chance report (on optimisation
and held-out draws), the certificate, the baselines and the value of transfer, the
per-draw optima (decision uncertainty), the allocation path over budgets and the
whole-unit rounding.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

from bayescale.evaluate.predict import summarise
from bayescale.optimise import baselines as bl
from bayescale.optimise import decisions as dec
from bayescale.optimise.constraints import InfeasibleError, Spec, check_linear
from bayescale.optimise.evaluation import empirical_cvar, objective_values
from bayescale.optimise.predictive import CHECK_STREAM, chance_log_noise, chance_losses, monte_carlo_probability
from bayescale.optimise.problem import CHANCE_MARGIN, AllocationProblem, polish, solve_checked
from bayescale.optimise.results import (
    BaselineResult,
    Certificate,
    ChanceReport,
    DecisionUncertainty,
    IntegerRounding,
    PathEntry,
    PredictedLoss,
    Reduction,
    ValueOfTransfer,
)
from bayescale.optimise.riskprog import FEAS_TOL, GAP_TOL, LawEval, Solution, tail_mean

#: The comparisons that stand for ignoring transfer: the fair optimum under the independent law, and the ablation.
TRANSFER_BASELINES = ("transfer_unaware", "transfer_zeroed")
BINDING_TOL = 1e-5  # an allocation within this share of the budget of a bound counts as binding
CERTIFICATE_METHOD = "SQP with cvxpy QP subproblems; Lagrangian lower bound (LP)"


def num(x):
    """A finite float, or None."""
    return float(x) if x is not None and math.isfinite(x) else None


def named(names, values) -> dict[str, float]:
    return {n: float(x) for n, x in zip(names, values)}


def predicted(law: LawEval, D, interval: float, targets) -> dict[str, PredictedLoss]:
    """Posterior mean and central interval of every target's loss under ``D``, over the draws of ``law``."""
    losses = law.values(D)
    out = {}
    for j, target in enumerate(targets):
        s = summarise(losses[:, j], interval)
        out[target] = PredictedLoss(mean=s["mean"], lo=s["lo"], hi=s["hi"])
    return out


def certificate(sol: Solution, spec: Spec) -> Certificate:
    return Certificate(
        method=CERTIFICATE_METHOD, lower_bound=num(sol.lower_bound), gap=num(sol.gap), relative_gap=num(sol.rel_gap),
        iterations=sol.iterations, qp_solves=sol.qp_solves, seconds=sol.seconds,
        max_chance_violation=float(max(sol.violation, 0.0)) if spec.chance else 0.0,
    )


def group_share(spec: Spec, g, D, B) -> float:
    """What group ``g`` gets: its spend as a share of the budget (of the total spend without a budget)."""
    inside = float(spec.costs[list(g.members)] @ D[list(g.members)])
    whole = B if B is not None else float(spec.costs @ D)
    return inside / whole if whole > 0 else 0.0


def binding(spec: Spec, D, B, sol: Solution) -> list[str]:
    """The constraints ``D`` meets with equality (to ``BINDING_TOL`` of the budget)."""
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
        if abs(group_share(spec, g, D, B) - g.share) <= BINDING_TOL:
            out.append(f"group:{g.text}")
    for name, value in sol.term_values.items():
        if name.startswith("chance:") and value >= 1.0 - 1e-6:
            out.append(name)
    return out


def chance_report(problem: AllocationProblem, law_all: LawEval, opt_idx, held_idx, D, seed: int = 0) -> list[ChanceReport]:
    """Each chance constraint at ``D``: on the optimisation draws (with the noise the program was solved
    with, when predictive), and on the held-out draws with fresh noise (an independent Monte Carlo check)."""
    spec = problem.spec
    if not spec.chance:
        return []
    L_opt = problem.law.values(D)
    opt_all = np.stack([L_opt[:, problem.chance_column(k)] for k in range(len(spec.chance))], axis=1)
    held_all = np.zeros((0, len(spec.chance)))
    if held_idx.size:
        held_draws = law_all.draws.subset(held_idx)
        fresh = chance_log_noise(held_draws, spec, seed, CHECK_STREAM, total=float(np.sum(D)))
        held_all = chance_losses(law_all.values(D)[held_idx], spec, fresh)
    out = []
    for k, ch in enumerate(spec.chance):
        opt, held = opt_all[:, k], held_all[:, k]
        p_held, se_held = monte_carlo_probability(held <= ch.tau) if held.size else (None, None)
        out.append(ChanceReport(
            constraint=ch.text,
            target=spec.targets[ch.target],
            loss=spec.chance_on,
            threshold=ch.tau,
            probability=ch.prob,
            cvar_optimisation_draws=empirical_cvar(opt, ch.prob),
            achieved_optimisation_draws=float(np.mean(opt <= ch.tau)),
            achieved_held_out=p_held,
            held_out_se=se_held,
            held_out_draws=int(held.size),
            met_held_out=bool(p_held >= ch.prob) if held.size else None,
        ))
    return out


# ------------------------------------------------------------------------------------ baselines


def violations(problem: AllocationProblem, D, B, L_opt) -> list[str]:
    """Constraints a (baseline) allocation breaks: groups and chance constraints (CVaR on the optimisation
    draws; ``L_opt`` over the columns of ``problem.law``)."""
    spec = problem.spec
    out = []
    for g in spec.groups:
        share = group_share(spec, g, D, B)
        if (g.op in (">=", "=") and share < g.share - 1e-9) or (g.op in ("<=", "=") and share > g.share + 1e-9):
            out.append(f"group:{g.text} (share {share:.3f})")
    for k, ch in enumerate(spec.chance):
        lk = L_opt[:, problem.chance_column(k)]
        cv = empirical_cvar(lk, ch.prob)
        if cv > ch.tau * (1 + 1e-9):
            out.append(f"chance:{ch.text} (CVaR {cv:.4g} > {ch.tau:g}; P = {np.mean(lk <= ch.tau):.2f})")
    return out


def baselines(problem: AllocationProblem, law_all: LawEval, D, B, temperature, interval, min_budget, *,
              unaware: AllocationProblem | str | None = None):
    """Each baseline (name -> :class:`BaselineResult`: allocation, objective on the same draws, predictions,
    feasibility, reduction against it) and the :class:`ValueOfTransfer` headline.

    ``unaware``: the same program built on the independent law's draws (the fair transfer-unaware
    baseline), or why it could not be built (a message), or None (then the headline compares with
    the ``transfer_zeroed`` ablation and says so)."""
    spec, sub, v = problem.spec, problem.draws, problem.effective_weights()
    R_rec = law_all.reducible(D) @ v
    out: dict[str, BaselineResult] = {}
    shapes = bl.rule_shapes(spec.lower, spec.upper, spec.fixed, temperature)
    for name, shape in shapes.items():
        if min_budget:  # the least spend at which the rule meets every chance constraint (bisection on the spend)
            D_b = rule_min_spend(problem, shape)
            entry = baseline_entry(problem, law_all, D_b, None, v, interval, min_budget, R_rec)
            if D_b is None:
                entry = BaselineResult(allocation=None, feasible=False,
                                       note="never meets the chance constraints under the caps")
        else:
            D_b = bl.fill(B, spec.lower, spec.upper, shape, spec.costs)
            entry = baseline_entry(problem, law_all, D_b, B, v, interval, min_budget, R_rec)
        if name == "temperature":
            entry = _replace(entry, temperature=float(temperature))
        out[name] = entry
    # Ignoring transfer, fairly: the optimum of the same program under the independent law fitted
    # to the same grid (as allocate(unaware, ...) finds it), judged under the real posterior.
    if isinstance(unaware, AllocationProblem):
        out["transfer_unaware"] = optimum_elsewhere(problem, law_all, unaware, D, B, interval, min_budget, R_rec,
                                                    bl.UNAWARE_DESCRIPTION, "infeasible under the independent law",
                                                    polished=True)
    elif isinstance(unaware, str):
        out["transfer_unaware"] = BaselineResult(allocation=None, feasible=False, description=bl.UNAWARE_DESCRIPTION,
                                                 note=f"the program cannot be set up under the independent law ({unaware})")
    # The ablation: the same program with transfer switched off inside the transfer posterior.
    zeroed = AllocationProblem(bl.transfer_zeroed(sub), spec, reference_budget=problem.reference_budget,
                               min_budget=min_budget, target_scale=problem.target_scale,
                               chance_noise=problem.chance_noise)
    out["transfer_zeroed"] = optimum_elsewhere(problem, law_all, zeroed, D, B, interval, min_budget, R_rec,
                                               bl.ZEROED_DESCRIPTION, "infeasible when transfer is ignored")
    ref = "proportional" if "proportional" in out else "uniform"
    transfer = "transfer_unaware" if "transfer_unaware" in out else "transfer_zeroed"
    compared = (ref, transfer)
    savings = None
    if min_budget:
        savings = {}
        for name in compared:
            spend_b = out[name].spend
            savings[name] = float(1.0 - float(spec.costs @ D) / spend_b) if spend_b else None
    headline = ValueOfTransfer(reference=ref, reductions={n: out[n].reducible_loss_reduction for n in compared},
                               budget_savings=savings, transfer_baseline=transfer,
                               note=None if transfer == "transfer_unaware" else bl.ZEROED_NOTE)
    return out, headline


def optimum_elsewhere(problem: AllocationProblem, law_all: LawEval, other: AllocationProblem, D, B, interval, min_budget,
                      R_rec, description: str, infeasible: str, polished: bool = False) -> BaselineResult:
    """The optimum of ``other`` (the same constraints under other draws), judged under ``problem``'s posterior;
    ``objective_value_assumed`` is its objective under the draws it was solved with. ``polished``: as
    :func:`~bayescale.optimise.allocate.allocate` polishes its own solution (so the two agree)."""
    spec = problem.spec
    t0 = time.perf_counter()
    try:
        sol = solve_checked(other, B)
        if polished:
            sol = polish(other, sol, B)[0]
    except InfeasibleError as exc:
        return BaselineResult(allocation=None, feasible=False, description=description,
                              note=f"{infeasible} ({str(exc).split(': ', 1)[-1]})")
    D_o = sol.D
    entry = baseline_entry(problem, law_all, D_o, B, problem.effective_weights(),
                           interval, min_budget, R_rec)
    assumed = (float(spec.costs @ D_o) if min_budget
               else objective_values(other.draws, D_o, spec.objective, other.effective_weights()))
    return _replace(entry, objective_value_assumed=assumed, seconds=time.perf_counter() - t0, description=description)


def _replace(entry: BaselineResult, **changes) -> BaselineResult:
    return dataclasses.replace(entry, **changes)


def rule_min_spend(problem: AllocationProblem, shape):
    """The least spend at which the mixing rule ``shape`` meets every chance constraint: its allocation, or None."""
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


def baseline_entry(problem: AllocationProblem, law_all, D_b, B, v, interval, min_budget, R_rec) -> BaselineResult:
    if D_b is None:
        return BaselineResult(allocation=None, feasible=False)
    spec, law_sub = problem.spec, problem.law
    L_opt = law_sub.values(D_b)
    viol = violations(problem, D_b, B, L_opt)
    R_b = law_all.reducible(D_b) @ v
    return BaselineResult(
        allocation=named(spec.sources, D_b),
        objective_value=(float(spec.costs @ D_b) if min_budget
                         else objective_values(law_sub.draws, D_b, spec.objective, v)),
        predicted=predicted(law_all, D_b, interval, spec.targets),
        spend=float(spec.costs @ D_b),
        feasible=not viol,
        violations=viol,
        reducible_loss_reduction=Reduction(**bl.reduction(R_rec, R_b, interval)),
    )


# ------------------------------------------------------------------------------------ around the decision


def uncertainty(problem: AllocationProblem, D, B, n, interval, seed) -> DecisionUncertainty:
    """Per-draw optima of ``n`` optimisation draws, solved together."""
    try:
        out, mode = per_draw_allocations(problem, D, B, n, seed)
    except Exception as exc:  # noqa: BLE001 - a summary that failed must not sink the recommendation
        return DecisionUncertainty(draws=min(n, problem.law.S), error=f"{type(exc).__name__}: {exc}")
    summary = dec.summarise_decisions(out["D"], out["ok"], problem.spec.sources, problem.spec.costs, interval, D)
    what = ("least spend meeting every chance target in each draw"
            + (" (the loss one run observes, with that draw's noise)" if problem.chance_noise is not None else "")
            if mode == "spend" else
            "optimal allocation under each draw's own loss (same linear constraints; "
            "chance constraints are not per-draw)")
    return DecisionUncertainty.from_summary(summary, seconds=out["seconds"], what=what)


def per_draw_allocations(problem: AllocationProblem, D, B, n, seed) -> tuple[dict, str]:
    """The optima of ``n`` optimisation draws (chosen with ``seed``), each under its own loss, solved
    together from ``D``: (``dec.per_draw_optima``'s dict with ``D`` (n, I) and ``ok`` (n,), mode)."""
    spec, v = problem.spec, problem.effective_weights()
    law = problem.law.at_total(float(np.sum(D))) if problem.law.depends_on_total else problem.law  # at D's total, as solved
    idx = np.sort(np.random.default_rng(seed + 1).choice(law.S, size=min(n, law.S), replace=False))
    obj = spec.objective
    if problem.min_budget:
        mode, obj_v = "spend", []
        con = [(problem.chance_column(k), ch.tau) for k, ch in enumerate(spec.chance)]
    elif obj.minimax:
        mode, obj_v, con = "max", [problem.pad(np.eye(len(v))[j] * v[j]) for j in np.flatnonzero(v > 0)], []
    else:
        mode, obj_v, con = "sum", [problem.pad(np.where(v > 0, v, 0.0))], []
    spend_cap = 1e3 * float(spec.costs @ D) + 1.0
    out = dec.per_draw_optima(law, idx, mode=mode, obj_v=obj_v, con=con, costs=spec.costs, lower=spec.lower,
                              upper=spec.upper, fixed=spec.fixed, A_lin=problem.A_lin, b_lin=problem.rhs(B),
                              unit=problem.unit, start=D, spend_cap=spend_cap)
    return out, mode


def path(problem: AllocationProblem, budgets) -> list[PathEntry]:
    """The solution at every budget in ``budgets``, each started from the last one scaled."""
    spec, sub, v = problem.spec, problem.draws, problem.effective_weights()
    out = []
    prev = None
    for b in budgets:
        t0 = time.perf_counter()
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
            fields = dict(
                # as the main solve's status (problem.polish): a certified gap and a converged SQP
                status="optimal" if sol.rel_gap <= GAP_TOL and sol.converged else "optimal_inaccurate",
                allocation=named(spec.sources, Db),
                fractions=named(spec.sources, Db / Db.sum() if Db.sum() > 0 else Db),
                objective_value=objective_values(sub, Db, spec.objective, v),
                shadow_price=float(0.0 - max(sol.duals.get("budget", 0.0), 0.0)),
                relative_gap=num(sol.rel_gap),
            )
        except InfeasibleError as exc:
            fields = dict(status="infeasible", message=str(exc))
        out.append(PathEntry(budget=float(b), seconds=time.perf_counter() - t0, **fields))
    return out


def integer(problem: AllocationProblem, D, B, min_budget, law_all, interval) -> IntegerRounding:
    """The best whole-unit rounding of ``D`` that meets every constraint."""
    spec, sub, v, law = problem.spec, problem.draws, problem.effective_weights(), problem.law
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
        return IntegerRounding(allocation=None, note=note, candidates_checked=checked)
    cont = float(spec.costs @ D) if min_budget else objective_values(sub, D, spec.objective, v)
    return IntegerRounding(
        allocation={s: (float(x) if spec.fixed[i] else int(round(x))) for i, (s, x) in enumerate(zip(spec.sources, D_int))},
        objective_value=value,
        objective_loss_vs_continuous=float(value - cont),
        predicted=predicted(law_all, D_int, interval, spec.targets),
        candidates_checked=checked,
        note=note,
    )
