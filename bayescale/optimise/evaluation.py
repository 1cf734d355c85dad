"""The allocation objectives evaluated exactly with NumPy: law losses, empirical CVaR, risk over draws.

Every objective value that :func:`~bayescale.optimise.allocate.allocate` reports comes from
:func:`objective_values` (not from the solver), so it can be checked independently.
"""

from __future__ import annotations

import numpy as np

from bayescale.inference.posterior import LawDraws
from bayescale.optimise import baselines as bl
from bayescale.optimise.constraints import Objective, build_spec
from bayescale.optimise.constraints import parse_objective as _parse_objective
from bayescale.optimise.riskprog import LawEval

OBJECTIVES = ("mean", "cvar:GAMMA", "worst", "minimax", "minimax:cvar:GAMMA", "minimax:worst")


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


def risk(values, kind: str, gamma) -> float:
    """The risk ``kind`` ("mean", "cvar" at level ``gamma``, "worst") of the per-draw ``values``."""
    values = np.asarray(values, dtype=np.float64)
    if kind == "mean":
        return float(np.mean(values))
    if kind == "worst":
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
        return max(risk(losses[:, j] * w[j], obj.risk, obj.gamma) for j in np.flatnonzero(keep))
    f = np.sum(np.where(keep, losses * w, 0.0), axis=1)
    return risk(f, obj.risk, obj.gamma)


def weights_vector(draws: LawDraws, weights: dict | None) -> np.ndarray:
    """Target weights as a vector: 1 each, except the targets that ``weights`` names."""
    return build_spec(draws, weights=weights).weights


def fill(budget: float, lower, upper, shape=None, costs=None) -> np.ndarray:
    """Water-filling (see :func:`bayescale.optimise.baselines.fill`)."""
    return bl.fill(budget, lower, upper, shape, costs)
