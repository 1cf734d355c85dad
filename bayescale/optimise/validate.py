"""Checks of everything :func:`~bayescale.optimise.allocate.allocate` is given, before any solve.

The constraint vocabulary (objective, weights, costs, caps, minimums, fixed amounts, groups,
chance constraints) is parsed in :mod:`bayescale.optimise.constraints`; this module checks
the remaining arguments (budget or budgets or ``min_budget``, ``interval``, ``max_draws``,
``holdout``, ``temperature``, ``uncertainty``), the posterior (the programs are convex only
for some parameter ranges) and the spec as a whole, and splits the draws into those the
program is solved on and those held out to check chance constraints. Every refusal is a
:class:`~bayescale.errors.ParameterError` that starts with the parameter's name.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from bayescale.errors import InputError
from bayescale.inference.posterior import LawDraws
from bayescale.optimise.constraints import (
    Name,
    ParameterError,
    Spec,
    check_budget,
    check_linear,
    irreducible_check,
    parse_budgets,
)


def check_settings(budget, *, min_budget: bool, budgets, interval, max_draws, holdout, temperature, uncertainty):
    """Check the arguments that are not constraints; returns (budget or None for the least budget, path budgets or None).

    Without ``budget`` the largest of ``budgets`` is the budget.
    """
    if not (isinstance(interval, numbers.Real) and 0 < interval < 1):
        raise ParameterError(Name("interval"), f" must lie strictly between 0 and 1, got {interval}")
    if max_draws is not None and (not isinstance(max_draws, numbers.Integral) or max_draws < 1):
        raise ParameterError(Name("max_draws"), f" must be a whole number >= 1, got {max_draws}")
    if not (isinstance(holdout, numbers.Real) and 0 <= holdout < 1):
        raise ParameterError(Name("holdout"), f" must lie in [0, 1), got {holdout}")
    if not (isinstance(temperature, numbers.Real) and math.isfinite(temperature) and temperature > 0):
        raise ParameterError(Name("temperature"), f" must be a number > 0, got {temperature}")
    if not isinstance(uncertainty, numbers.Integral) or uncertainty < 0:
        raise ParameterError(Name("uncertainty"), f" must be a whole number >= 0, got {uncertainty}")
    path_budgets = parse_budgets(budgets) if budgets is not None else None
    if min_budget:
        if budget is not None or path_budgets:
            raise ParameterError(Name("min_budget"), " finds the budget itself; drop ", Name("budget"), "/",
                                 Name("budgets"))
    elif budget is None:
        if not path_budgets:
            raise ParameterError(Name("budget"), " is required (or ", Name("budgets"), ", or ", Name("min_budget"),
                                 " with ", Name("chance"), ")")
        budget = path_budgets[-1]
    return (None if min_budget else check_budget(budget)), path_budgets


def check_problem(draws: LawDraws, spec: Spec, budget: float | None, *, min_budget: bool, chance_noise=None) -> None:
    """The spec as a whole: something to allocate, a convex law, linear constraints some allocation meets,
    chance targets above the irreducible loss (times one run's noise ``chance_noise`` (S, K) when predictive)."""
    if min_budget and not spec.chance:
        raise ParameterError(Name("min_budget"), " needs at least one ", Name("chance"),
                             " constraint (what the budget must achieve)")
    if np.all(spec.fixed):
        raise ParameterError(Name("upper"), "/", Name("lower"), "/", Name("fixed"),
                             " leave no source free (every amount is fixed, e.g. every cap is 0): nothing to allocate")
    check_law_domain(draws)
    check_linear(spec, budget)
    irreducible_check(draws, spec.chance, chance_noise)


def check_law_domain(draws: LawDraws) -> None:
    """The programs are convex only for T >= 0, 0 < beta <= 1, alpha > 0, x0 >= 0, A >= 0 (and delta >= 0)."""
    off = np.broadcast_to(~(np.asarray(draws.self_mask) > 0)[None], draws.T.shape)
    checks = [
        ("T", np.all(draws.T[off] >= 0), "T >= 0"),
        ("beta", np.all((draws.beta[off] > 0) & (draws.beta[off] <= 1 + 1e-9)), "0 < beta <= 1"),
        ("alpha", np.all(draws.alpha > 0), "alpha > 0"),
        ("x0", np.all(draws.x0 >= 0), "x0 >= 0"),
        ("A", np.all(draws.A >= 0), "A >= 0"),
        ("E", np.all(draws.E >= 0), "E >= 0"),
    ]
    if getattr(draws, "delta", None) is not None:
        # a steepening break keeps the reducible loss a product of positive, decreasing, convex factors
        checks.append(("delta", np.all(draws.delta >= 0) and np.all(np.isfinite(draws.log_xb)), "delta >= 0 with a finite break"))
    if getattr(draws, "kappa", None) is not None:
        # interference is linear in d: convex only when it adds loss (kappa >= 0)
        checks.append(("kappa", np.all(draws.kappa >= 0) and np.all(np.isfinite(draws.kappa)), "kappa >= 0"))
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
