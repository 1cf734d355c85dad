"""LawEval skips terms that are exactly zero (no bend, no interference) and copies nothing when every
source is free: the same numbers as the general path, to the bit."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bayescale.laws.power import reducible_and_slopes
from bayescale.optimise.riskprog import LawEval
from tests.bayescale.optimise.test_allocate import make_draws


def general_point(law: LawEval, D, free):
    """The general path (bend and interference terms always added, fancy indexing), written out."""
    d = np.maximum(np.asarray(D, dtype=np.float64), 0.0) / law.D0
    x, pw = law._x(d)
    R, c1, a = reducible_and_slopes(x, law.A, law.alpha, law.delta, law.xb)
    L = law.E + R + np.einsum("i,sij->sj", d, law.kappa)
    ds = np.maximum(d[free], 1e-12)
    Tb = law.T * law.beta
    pwm1 = pw[:, free, :] / ds[None, :, None] if np.all(d[free] > 0) else np.exp(
        (law.beta[:, free, :] - 1.0) * np.log(ds)[None, :, None])
    dx = law.mask[free][None] + Tb[:, free, :] * pwm1
    d2x = (Tb * (law.beta - 1.0))[:, free, :] * (pwm1 / ds[None, :, None])
    return L, dx, d2x, c1, a, law.kappa[:, free, :]


@pytest.mark.parametrize("zeros", [False, True])
@pytest.mark.parametrize("free", [None, [0, 2, 3]])
@pytest.mark.parametrize("D", [[30.0, 12.0, 25.0, 40.0, 13.0], [30.0, 0.0, 25.0, 40.0, 0.0]])
def test_fast_paths_give_the_general_numbers_to_the_bit(zeros, free, D):
    draws = make_draws(S=20, seed=3)
    if zeros:  # explicit zero bend and interference: the general arithmetic runs
        draws = dataclasses.replace(draws, delta=np.zeros_like(draws.E), log_xb=np.zeros_like(draws.E), kappa=np.zeros_like(draws.T))
    law = LawEval(draws)
    free = np.arange(law.I) if free is None else np.asarray(free)
    v = np.linspace(0.5, 2.0, law.J)
    pt = law.point(D, free)
    L, dx, d2x, c1, a, kappa = general_point(law, D, free)
    for got, want in ((pt["L"], L), (pt["dx"], dx), (pt["d2x"], d2x), (pt["c1"], c1), (pt["a"], a), (law.values(D), L)):
        np.testing.assert_array_equal(got, want)
    want_grad = (np.einsum("snj,sj->sn", dx, c1 * v[None, :]) + kappa @ v) / law.D0
    np.testing.assert_array_equal(law.term_grad(pt, v), want_grad)
