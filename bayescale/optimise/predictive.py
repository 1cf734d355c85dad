"""Chance constraints on the loss a real run will have: one run's noise under each posterior draw.

``P(L_j(D) <= tau) >= p`` over the posterior of the *expected* (law) loss ignores that a real
run observes its loss with noise. The loss one more run will have (the posterior predictive)
under draw ``s`` is ``L_j(D; theta_s) * exp(eps_s)``, with ``eps_s`` the family's noise on log
loss (``bayescale.laws.of_draws(draws).add_noise``) drawn once per draw with a fixed seed. The
noise is additive on log loss and does not depend on the allocation, so over the joint draws
``(theta_s, eps_s)``::

    P(L_j(D) * exp(eps) <= tau) = P(L_j(D) <= tau * exp(-eps))

each draw keeps the convex loss it had, with a threshold of its own, ``tau_s = tau * exp(-eps_s)``.
The programs carry it as the same law with ``E`` and ``A`` scaled by ``exp(eps_s)`` (one extra
column per chance constraint of :class:`~bayescale.optimise.riskprog.LawEval`), so the CVaR
approximation, the SQP and its certificate are exactly those of the expected loss.

Where the draws carry a misfit that falls with a run's data (``noise_slope``), one run's noise is
that of a run of the allocation's total: the same standard normals (the same seed) scaled by each
draw's misfit at the total. The programs take it at the allocation's total like the law's error past
the fit runs' data (:class:`~bayescale.optimise.riskprog.LawEval`): exact where the budget fixes the
total, a fixed point of the program at its own total otherwise (costs, ``min_budget``).

``chance_on="expected"`` keeps the expected loss (what every chance constraint meant before).
The chance report checks a solution on the held-out draws with *fresh* noise (another random
stream): an independent Monte Carlo estimate of the predictive probability, with its binomial
standard error (:func:`monte_carlo_probability`).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from bayescale import laws
from bayescale.errors import InputError
from bayescale.inference.posterior import LawDraws
from bayescale.optimise.constraints import Spec

OPTIMISE_STREAM = 0  # the noise the program is solved with
CHECK_STREAM = 1  # fresh noise of the held-out check


def run_log_noise(draws: LawDraws, targets, seed: int = 0, stream: int = OPTIMISE_STREAM, total: float | None = None) -> np.ndarray:
    """(S, K) one run's noise on log loss under each draw, for the target indices ``targets``.

    Drawn by the draws' family (``add_noise``) for one run of ``total`` raw data (None: the misfit
    at the fit runs' largest total), so noise that one run shares across targets stays shared
    between columns of the same draw. The law's error past the data is not in it (the programs
    scale the law by it, :class:`~bayescale.optimise.riskprog.LawEval`). Refuses (one line, about
    ``chance_on``) a family whose noise is not additive on log loss, where the per-draw
    threshold would not be exact."""
    family = laws.of_draws(draws)
    if getattr(draws, "slope_error", None) is not None:
        draws = dataclasses.replace(draws, slope_error=None, reach=None)
    amounts = None if total is None else np.full((1, 1), float(total))
    base = np.zeros((draws.n_draws, 1, len(draws.targets)))
    eps = family.add_noise(base, draws, np.random.default_rng([seed, stream]), amounts) - base
    again = family.add_noise(base + 1.0, draws, np.random.default_rng([seed, stream]), amounts) - (base + 1.0)
    if not np.allclose(eps, again, rtol=0.0, atol=1e-9):
        raise InputError(f"chance_on: the {draws.law} law's noise is not additive on log loss, so the predictive "
                         "chance constraint has no exact per-draw threshold; use chance_on='expected'",
                         parameter="chance_on")
    return np.asarray(eps[:, 0, :], dtype=np.float64)[:, list(targets)]


def chance_log_noise(draws: LawDraws, spec: Spec, seed: int = 0, stream: int = OPTIMISE_STREAM,
                     total: float | None = None) -> np.ndarray | None:
    """(S, K) noise per draw and chance constraint of ``spec`` for a run of ``total`` raw data, or None
    (expected loss, or no chance constraint)."""
    if not spec.chance or spec.chance_on != "predictive":
        return None
    return run_log_noise(draws, [ch.target for ch in spec.chance], seed, stream, total)


def chance_noise_at(draws: LawDraws, spec: Spec, seed: int = 0, index=None):
    """The noise the program is solved with, for the draws at ``index`` (all: None): a function of
    the allocation's total, total -> (S, K) (the same seed at every total), where the misfit falls
    with a run's data; else the (S, K) array; None when there is no predictive chance constraint."""
    if not spec.chance or spec.chance_on != "predictive":
        return None
    if getattr(draws, "noise_slope", None) is None:  # the noise does not depend on the total
        fixed = chance_log_noise(draws, spec, seed)
        return fixed if index is None else fixed[index]

    def noise(total):
        out = chance_log_noise(draws, spec, seed, total=total)
        return out if index is None else out[index]

    return noise


def chance_losses(L, spec: Spec, log_noise=None) -> np.ndarray:
    """(S, K) the loss each chance constraint is about, from law losses ``L`` (S, J): times ``exp(noise)``
    when predictive."""
    out = np.stack([np.asarray(L)[:, ch.target] for ch in spec.chance], axis=1) if spec.chance else np.zeros((len(L), 0))
    return out if log_noise is None else out * np.exp(np.asarray(log_noise))


def monte_carlo_probability(hits) -> tuple[float, float]:
    """Share of ``hits`` (booleans) and its binomial standard error ``sqrt(p (1 - p) / n)``."""
    hits = np.asarray(hits, dtype=bool).reshape(-1)
    p = float(np.mean(hits))
    return p, math.sqrt(max(p * (1.0 - p), 0.0) / hits.size)
