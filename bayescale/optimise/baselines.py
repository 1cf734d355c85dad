"""What the recommendation is compared with: the usual mixing rules and the transfer-unaware optimum.

- ``uniform``: the same amount of every source (water-filled around caps, minimums and fixed
  amounts so that the budget is spent);
- ``proportional``: amounts proportional to what is available (the ``--max`` caps; only when
  every free source has one), the "natural" mixture of the data one has;
- ``temperature``: temperature sampling, amounts proportional to ``available ** (1 / tau)``
  (``tau = 1`` is proportional, ``tau -> inf`` uniform; multilingual LMs use tau ~ 3);
- ``transfer_unaware``: the same program solved under the posterior of the ``independent`` law
  fitted to the same grid (``allocate(..., unaware=...)``): what someone using independent
  per-domain scaling laws would choose, with E, A and alpha fitted *without* transfer; then
  *judged under the real (transfer) posterior*, so the cost of ignoring transfer shows;
- ``transfer_zeroed``: an ablation, not a baseline anyone would use: the same program solved
  with every transfer switched off *inside the transfer posterior* (``T = 0`` between different
  domains, E, A and alpha as fitted with transfer), judged the same way. Those E, A and alpha
  were fitted to explain every run's loss with transfer's help, so without it the law no longer
  describes the grid's runs, and the program it solves is not the one an independent-law user
  solves: its figure misstates the cost of ignoring transfer (in either direction). It is the
  headline comparison only when no ``unaware`` posterior is given, and then the result says so.

For each, :func:`reduction` gives the relative reduction in weighted *reducible* loss
``sum_j v_j (L_j - E_j)`` that the recommendation achieves against it, per posterior draw
(mean, interval, probability that the recommendation is better) and as the ratio of
posterior means (the paper's "up to 58 %" figures are of this kind).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from bayescale.errors import InputError
from bayescale.inference.posterior import LawDraws
from bayescale.optimise.validate import check_law_domain

#: What each comparison of ignoring transfer is (``BaselineResult.description``).
UNAWARE_DESCRIPTION = ("the optimum of the same program under the independent law fitted to the same grid "
                       "(independent per-domain scaling laws), judged under the transfer posterior")
ZEROED_DESCRIPTION = ("ablation: T = 0 inside the transfer posterior (E, A, alpha as fitted with transfer), "
                      "judged under the transfer posterior")
#: Why the headline is the ablation when no independent-law posterior was given (``ValueOfTransfer.note``).
ZEROED_NOTE = ("no posterior of the independent law was given, so ignoring transfer is measured by the ablation "
               "T = 0 inside the transfer posterior, which keeps E, A and alpha fitted with transfer and so is not "
               "what a planner without transfer modelling would choose; for the fair baseline fit the independent "
               "law to the same grid and pass it "
               "(unaware= in Python, --unaware on the command line)")


def fill(budget: float, lower, upper, shape=None, costs=None) -> np.ndarray:
    """Spend ``budget`` as ``clip(level * shape, lower, upper)`` (water-filling), with spend ``sum(costs * D)``.

    ``shape = 1`` gives the uniform split, re-spread where caps or minimums bind; where the
    caps cost less than the budget, everything available (``upper``) is used.
    """
    L = np.asarray(lower, dtype=np.float64)
    U = np.asarray(upper, dtype=np.float64)
    c = np.ones_like(L) if costs is None else np.asarray(costs, dtype=np.float64)
    g = np.ones_like(L) if shape is None else np.asarray(shape, dtype=np.float64)
    if np.all(np.isfinite(U)) and float(c @ U) <= budget:
        return U.copy()

    def spent(level):
        return float(c @ np.clip(level * g, L, U))

    lo, hi = 0.0, 1.0
    while spent(hi) < budget and hi < 1e300:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if spent(mid) <= budget:
            lo = mid
        else:
            hi = mid
    return np.clip(lo * g, L, U)


def rule_shapes(lower, upper, fixed, temperature: float) -> dict[str, np.ndarray]:
    """The shapes of the mixing rules that apply: uniform always; proportional and temperature with caps."""
    shapes = {"uniform": np.ones(len(lower))}
    free = ~np.asarray(fixed, dtype=bool)
    U = np.asarray(upper, dtype=np.float64)
    if np.any(free) and np.all(np.isfinite(U[free])):
        shapes["proportional"] = np.where(np.isfinite(U), U, 0.0)
        shapes["temperature"] = np.where(np.isfinite(U), U, 0.0) ** (1.0 / temperature)
    return shapes


def check_unaware(draws: LawDraws, unaware) -> LawDraws:
    """``unaware``: draws of the independent law over the posterior's sources and targets, or a one-line error.

    Its ``x0``, ``data_scale`` and everything else may differ from ``draws``' (it is another fit);
    both must measure data in the same raw units (fitted to the same grid), which the draws cannot show.
    """
    if not isinstance(unaware, LawDraws):
        raise InputError(f"unaware: expected the draws of the independent law (law_draws of its posterior), "
                         f"got {type(unaware).__name__}", parameter="unaware")
    if unaware.law != "independent":
        raise InputError(f"unaware: is a posterior of the {unaware.law} law; the transfer-unaware baseline needs the "
                         f"independent law fitted to the same grid (bayescale fit --law independent)", parameter="unaware")
    for what in ("sources", "targets"):
        mine, theirs = tuple(getattr(draws, what)), tuple(getattr(unaware, what))
        if mine != theirs:
            raise InputError(f"unaware: its {what} ({', '.join(theirs)}) are not the posterior's ({', '.join(mine)}); "
                             f"fit the independent law to the same grid", parameter="unaware")
    try:
        check_law_domain(unaware)
    except InputError as exc:
        raise InputError(f"unaware: {str(exc).removeprefix('posterior: ')}", parameter="unaware") from None
    return unaware


def transfer_zeroed(draws: LawDraws) -> LawDraws:
    """The same posterior with every transfer between different domains switched off (the
    ``transfer_zeroed`` ablation; the fair baseline solves under the independent law's own fit)."""
    mask = np.asarray(draws.self_mask, dtype=np.float64)
    S = draws.n_draws
    return dataclasses.replace(draws, T=np.broadcast_to(mask, (S,) + mask.shape).copy(),
                               beta=np.ones((S,) + mask.shape))


def reduction(R_rec, R_base, interval: float) -> dict:
    """Relative reduction 1 - R_rec / R_base of weighted reducible loss: per draw and of the posterior means."""
    R_rec, R_base = np.asarray(R_rec, float), np.asarray(R_base, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        per = 1.0 - R_rec / R_base
    ok = np.isfinite(per)
    if not np.any(ok):
        return {"of_means": None, "mean": None, "lo": None, "hi": None, "probability_better": None}
    lo, hi = np.quantile(per[ok], [(1 - interval) / 2, (1 + interval) / 2])
    mean_base = float(np.mean(R_base))
    return {
        "of_means": float(1.0 - np.mean(R_rec) / mean_base) if np.isfinite(mean_base) and mean_base > 0 else None,
        "mean": float(np.mean(per[ok])),
        "lo": float(lo),
        "hi": float(hi),
        "probability_better": float(np.mean(R_rec < R_base)),
    }
