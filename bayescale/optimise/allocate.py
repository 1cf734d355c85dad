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
  ``P(L_j(D) <= tau) >= p`` through their convex CVaR approximation, checked on held-out draws,
  by default over the loss one run will observe (the law's noise included,
  :mod:`bayescale.optimise.predictive`), with ``chance_on="expected"`` over the law's loss;
- ``min_budget=True``: the least (cost-weighted) budget that meets every chance constraint.

Past the fit runs' data each draw's loss is the law's times the draws' error there (``slope_error``)
at the allocation's total, as :func:`bayescale.evaluate.predict.predict` has it, and a predictive
chance constraint's noise is one run's at that total: the programs are solved at a fixed total,
moved to the solution's (:meth:`~bayescale.optimise.problem.AllocationProblem.solve`).

The programs are solved exactly by :class:`bayescale.optimise.riskprog.RiskProgram` (SQP whose
quadratic subproblems cvxpy compiles once, with a certified duality gap); every reported
objective is the NumPy evaluation :func:`objective_values`. Around the recommendation:
baselines and the value of transfer (:mod:`bayescale.optimise.baselines`; the fair transfer-unaware
baseline solves the same program under ``unaware``, the draws of the independent law fitted to
the same grid, and judges its allocation under ``draws``), the posterior distribution of
the optimal allocation, whole-unit rounding (:mod:`bayescale.optimise.decisions`) and an allocation path
over budgets.

This module only runs the steps, each of which lives elsewhere: the arguments are checked by
:mod:`bayescale.optimise.validate` and :mod:`bayescale.optimise.constraints`, the program is
built, solved and polished by :mod:`bayescale.optimise.problem`, what is reported around the
solution is computed by :mod:`bayescale.optimise.assemble` into the typed
:class:`~bayescale.optimise.results.AllocationResult`, and its text is
:func:`bayescale.render.text.format_allocation`. The names a user needs are importable from here.
"""

from __future__ import annotations

import time

import numpy as np

from bayescale.errors import InputError
from bayescale.inference.posterior import LawDraws, require_amounts
from bayescale.optimise import assemble
from bayescale.optimise import baselines as bl
from bayescale.optimise.assemble import BINDING_TOL
from bayescale.optimise.constraints import InfeasibleError, Objective, Spec, build_spec
from bayescale.optimise.evaluation import (
    OBJECTIVES,
    empirical_cvar,
    fill,
    law_losses,
    objective_values,
    parse_objective,
    weights_vector,
)
from bayescale.optimise.predictive import chance_log_noise, chance_noise_at
from bayescale.optimise.problem import CHANCE_MARGIN, AllocationProblem, polish, solve_checked
from bayescale.optimise.results import AllocationResult
from bayescale.optimise.riskprog import LawEval
from bayescale.optimise.validate import check_problem, check_settings, optimisation_draws, split_draws

__all__ = [
    "BINDING_TOL", "CHANCE_MARGIN", "OBJECTIVES", "TEMPERATURE", "UNCERTAINTY_DRAWS", "AllocationProblem",
    "AllocationResult", "InfeasibleError", "Objective", "Spec", "allocate", "build_spec", "empirical_cvar", "fill",
    "law_losses", "objective_values", "optimisation_draws", "parse_objective", "split_draws", "weights_vector",
]

TEMPERATURE = 3.0  # default temperature of the temperature-sampling baseline
UNCERTAINTY_DRAWS = 200  # default number of draws of the per-draw optima


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
    chance_on: str = "predictive",
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
    unaware: LawDraws | None = None,
) -> AllocationResult:
    """The allocation of ``budget`` raw data units over the sources that minimises ``objective``.

    ``weights`` {target: w >= 0} (others 1); ``normalise``: divide each target's loss by its
    posterior-mean loss at the uniform split; ``costs`` {source: cost per unit > 0};
    ``upper`` {source: cap}; ``lower`` {source: minimum}; ``fixed`` {source: amount};
    ``groups`` ["ct_*>=0.3", ...] (share of the spend); ``chance`` ["target<=tau@p", ...];
    ``chance_on``: ``"predictive"`` (P over the loss one run will observe: the law's loss and one
    run's noise, drawn per draw with ``seed``) or ``"expected"`` (P over the law's expected loss);
    ``min_budget``: find the least spend meeting every chance constraint (``budget`` not given);
    ``budgets``: also solve this sequence (the allocation path); ``temperature``: of the
    temperature-sampling baseline; ``baselines``: compare with the mixing rules and the
    transfer-unaware optimum; ``unaware``: draws of the ``independent`` law fitted to the same
    grid (same sources and targets, data in the same raw units): the transfer-unaware optimum is
    this very program solved under them (what :func:`allocate` recommends given ``unaware``),
    judged under ``draws``; without it ignoring transfer is measured only by the ``transfer_zeroed``
    ablation (T = 0 inside ``draws``), and ``value_of_transfer`` says so; ``uncertainty``: number
    of draws whose own optimum is computed (0: skip); ``integer``: also round to whole units; ``interval``: probability of the central
    credible intervals. ``max_draws``: draws the program is solved on (None: all); with chance
    constraints a ``holdout`` share of the draws is kept out of the program to check them;
    ``seed``: of those draw subsets.

    Returns an :class:`~bayescale.optimise.results.AllocationResult` (its ``to_dict()`` is the
    JSON of ``bayescale allocate --json``). Bad arguments raise
    :class:`~bayescale.errors.ParameterError` naming the parameter; constraints
    no allocation meets raise :class:`~bayescale.optimise.constraints.InfeasibleError`.
    """
    t_start = time.perf_counter()
    draws = require_amounts(draws, "allocate")  # a law of data amounts (not the fixed-budget mixing law)
    if unaware is not None:
        unaware = bl.check_unaware(draws, unaware)
    B, path_budgets = check_settings(budget, min_budget=min_budget, budgets=budgets, interval=interval,
                                     max_draws=max_draws, holdout=holdout, temperature=temperature,
                                     uncertainty=uncertainty)
    options = dict(objective=objective, weights=weights, costs=costs, upper=upper, lower=lower, fixed=fixed,
                   groups=groups, chance=chance, normalise=normalise, chance_on=chance_on)
    spec = build_spec(draws, **options)
    split = dict(min_budget=min_budget, max_draws=max_draws, holdout=holdout, seed=seed)
    problem, opt_idx, held_idx = build_problem(draws, spec, B, **split)
    sub = problem.draws
    law_all = LawEval(draws)
    v = problem.effective_weights()

    # The fair transfer-unaware baseline: this very program (same options, draw split and seed)
    # under the independent law's draws, as allocate(unaware, ...) would build it.
    blind: AllocationProblem | str | None = None
    if baselines and unaware is not None:
        try:
            blind = build_problem(unaware, build_spec(unaware, **options), B, **split)[0]
        except InputError as exc:  # e.g. a chance target below the independent law's irreducible loss
            blind = str(exc)

    sol, status, notes = polish(problem, solve_checked(problem, B), B)
    D = sol.D
    obj_value = float(spec.costs @ D) if min_budget else objective_values(sub, D, spec.objective, v)
    spend = float(spec.costs @ D)
    budget_dual = sol.duals.get("budget")
    parts = dict(
        mode="min_budget" if min_budget else "budget",
        objective="spend" if min_budget else spec.objective.name,
        objective_value=obj_value,
        allocation=assemble.named(spec.sources, D),
        fractions=assemble.named(spec.sources, D / D.sum() if D.sum() > 0 else np.zeros_like(D)),
        predicted=assemble.predicted(law_all, D, interval, spec.targets),
        budget=spend if min_budget else B,
        spend=spend,
        weights=assemble.named(spec.targets, v),
        normalised=bool(spec.normalise),
        objective_value_all_draws=None if min_budget else objective_values(draws, D, spec.objective, v),
        costs=assemble.named(spec.sources, spec.costs) if np.any(spec.costs != 1) else None,
        shadow_price=None if budget_dual is None or min_budget else float(0.0 - max(budget_dual, 0.0)),
        binding=assemble.binding(spec, D, B, sol),
        groups={g.text: assemble.group_share(spec, g, D, B) for g in spec.groups},
        chance=assemble.chance_report(problem, law_all, opt_idx, held_idx, D, seed),
        chance_on=spec.chance_on if spec.chance else None,
        certificate=assemble.certificate(sol, spec),
        draws_used=int(opt_idx.size),
        draws_held_out=int(held_idx.size),
        solver=sol.solver,
        solver_notes=notes,
    )

    if baselines:  # and the value of transfer
        every, parts["value_of_transfer"] = assemble.baselines(problem, law_all, D, B, temperature, interval, min_budget,
                                                               unaware=blind)
        # "baselines" keeps the mixing rules it always had (uniform, proportional); the other
        # comparisons have keys of their own, with the same structure.
        parts["baselines"] = {k: every[k] for k in ("uniform", "proportional") if k in every}
        parts["temperature_sampling"] = every.get("temperature")
        parts["transfer_unaware"] = every.get("transfer_unaware")
        parts["transfer_zeroed"] = every["transfer_zeroed"]
        for name, base in every.items():
            # the optima of other programs are checked by the tests, the mixing rules here
            if name not in assemble.TRANSFER_BASELINES and base.objective_value is not None and not min_budget:
                if base.feasible and base.objective_value < obj_value - max(sol.gap, 1e-9 * abs(obj_value)):
                    status = "optimal_inaccurate"
                    notes.append(f"the {name} baseline beats the recommendation; the solution is not optimal")
    if uncertainty:
        parts["decision_uncertainty"] = assemble.uncertainty(problem, D, B, int(uncertainty), interval, seed)
    if path_budgets:
        parts["path"] = assemble.path(problem, path_budgets)
    if integer:
        parts["integer"] = assemble.integer(problem, D, B, min_budget, law_all, interval)
    return AllocationResult(status=status, seconds=time.perf_counter() - t_start, **parts)


def build_problem(draws: LawDraws, spec: Spec, B, *, min_budget: bool, max_draws, holdout: float, seed: int):
    """The compiled program :func:`allocate` solves for ``draws``: checked, on its optimisation draws
    (a fixed-seed split, with ``holdout`` kept out when there are chance constraints), normalised
    when ``spec`` says so. Returns (problem, optimisation draw indices, held-out draw indices)."""
    # One run's noise per draw (predictive chance constraints), of a run of the budget's total for the check.
    check_problem(draws, spec, B, min_budget=min_budget, chance_noise=chance_log_noise(draws, spec, seed, total=B))
    opt_idx, held_idx = split_draws(draws.n_draws, max_draws, holdout if spec.chance else 0.0, seed)
    sub = draws if opt_idx.size == draws.n_draws else draws.subset(opt_idx)
    sub_noise = chance_noise_at(draws, spec, seed, opt_idx)  # at each allocation's total, where it depends on it

    # Normalisation: each target's posterior-mean loss at the uniform split of the (reference) budget.
    ref_budget = B
    if min_budget:
        probe = AllocationProblem(sub, spec, reference_budget=1.0, min_budget=True, chance_noise=sub_noise)
        ref_budget = probe.spend_guess()
    uniform_ref = bl.fill(ref_budget, spec.lower, spec.upper, None, spec.costs)
    target_scale = None
    if spec.normalise:
        mean_loss = LawEval(sub).values(uniform_ref).mean(axis=0)
        target_scale = 1.0 / np.maximum(mean_loss, 1e-300)
    problem = AllocationProblem(sub, spec, reference_budget=ref_budget, min_budget=min_budget,
                                target_scale=target_scale, chance_noise=sub_noise)
    return problem, opt_idx, held_idx
