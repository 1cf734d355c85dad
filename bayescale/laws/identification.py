"""What the fit runs of a grid cannot tell apart under a transfer law, as one-line warnings.

Parameters the data say nothing about keep their (wide) priors, so the posterior stays honest;
but a reader must know that intervals there are the prior's, not the grid's.
"""

from __future__ import annotations

import numpy as np


def identification_warnings(data, coords: dict, law: str = "transfer", unit: str = "units") -> list[str]:
    """What the fit runs cannot tell apart, as one-line warnings (the fit still runs).

    Parameters the data say nothing about keep their (wide) priors, so the posterior stays
    honest; but a reader must know that intervals there are the prior's, not the grid's:

    - every fit run has the same budget: the law is fitted to how runs split that budget,
      and predictions at other budgets extrapolate from that alone;
    - a source without data in any fit run: its scaling and transfer are not identified;
    - (transfer laws) no cross-domain variation: no run with data from one domain was
      evaluated on another, or every run mixes the sources in the same proportions, so
      transfer cannot be told apart from a domain's own data; or, short of that, the
      (source, target) pairs no run informs.
    """
    d = np.asarray(data.d, dtype=np.float64)
    sources, targets = list(coords["source"]), list(coords["target"])
    scale = float(coords["data_scale"])
    out = []
    budgets = d.sum(axis=1)
    positive = np.sort(budgets[budgets > 0])
    if positive.size and positive[-1] <= positive[0] * (1 + 1e-9):
        out.append(
            f"every fit run has the same budget ({positive[0] * scale:g} {unit}): the law is fitted to how the runs split it, "
            "so predictions at other budgets rest on the law's form and its priors; add runs at other budgets "
            "(or fit the fixed-budget mixing law, law 'mixing')"
        )
    unused = [s for i, s in enumerate(sources) if not (d[:, i] > 0).any()]
    if unused:
        out.append(
            f"source(s) {', '.join(unused)} have no data in any fit run: their scaling and their transfer "
            "to other targets are not identified and keep their priors"
        )
    if law == "independent":
        return out
    off = 1.0 - np.asarray(data.self_mask) > 0  # (I, J): pairs with a transfer coefficient
    informed = np.zeros(off.shape, dtype=bool)
    same_mix = []
    for j in range(len(targets)):
        rows = np.unique(data.obs_run[data.obs_target == j])
        informed[:, j] = (d[rows] > 0).any(axis=0)
        mixes = d[rows][budgets[rows] > 0]
        shares = mixes / mixes.sum(axis=1, keepdims=True)
        # Only one way of mixing the sources, and more than one source in it: own data and
        # transferred data always move together and cannot be told apart.
        same_mix.append(len(shares) > 0 and np.ptp(shares, axis=0).max() < 1e-9 and (shares[0] > 0).sum() > 1)
    if off.any() and (not (informed & off).any() or all(same_mix)):
        out.append(
            "transfer is not identified: no cross-domain variation in the fit runs (no run with data from one domain is "
            "evaluated on another, or every run mixes the sources in the same proportions); T and beta keep their wide "
            "priors; add single-domain runs evaluated on every target, or runs with different mixtures"
        )
    else:
        missing = [(sources[i], targets[j]) for i, j in zip(*np.nonzero(off & ~informed)) if sources[i] not in unused]
        if missing:
            example = ", ".join(f"{a} -> {b}" for a, b in missing[:3]) + (", ..." if len(missing) > 3 else "")
            out.append(
                f"transfer of {len(missing)} of {int(off.sum())} (source, target) pairs is not informed by any fit run "
                f"({example}): no run with data from that source is evaluated on that target; those T and beta keep their priors"
            )
    return out
