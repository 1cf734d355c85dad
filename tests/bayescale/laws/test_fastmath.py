"""float32 exp2 and log2 from arithmetic (bayescale.laws.fastmath) against float64 NumPy."""

from __future__ import annotations

import jax
import numpy as np

from bayescale.laws import fastmath

EPS = float(np.finfo(np.float32).eps)  # 2^-23, one ulp of 1


def test_exp2_is_within_an_ulp_over_its_range():
    t = np.random.default_rng(0).uniform(-125, 126, 1_000_000).astype(np.float32)
    t = np.concatenate([t, np.float32([0, 0.5, -0.5, 1, -1, 126, -125])])
    got = np.asarray(jax.jit(fastmath.exp2)(t), dtype=np.float64)
    assert np.max(np.abs(got / 2.0 ** t.astype(np.float64) - 1)) <= 1.5 * EPS


def test_exp2_special_values():
    got = np.asarray(jax.jit(fastmath.exp2)(np.float32([-np.inf, np.nan, -1000.0])))
    assert got[0] == got[2] == np.float32(2.0**-125) and np.isnan(got[1])  # d = 0: ~2e-38, lost against x0 > 0


def test_log2_is_within_an_ulp_over_its_range():
    rng = np.random.default_rng(1)
    x = np.exp(rng.uniform(np.log(np.finfo(np.float32).tiny), np.log(np.finfo(np.float32).max), 1_000_000)).astype(np.float32)
    near_one = (1 + rng.uniform(-0.3, 0.42, 1_000_000)).astype(np.float32)  # where log2 x is small: absolute error counts
    for v in (x, near_one, np.float32([1, 2, 0.5, np.sqrt(2), np.sqrt(0.5), 1 + EPS, 1 - EPS / 2])):
        got = np.asarray(jax.jit(fastmath.log2)(v), dtype=np.float64)
        ref = np.log2(v.astype(np.float64))
        assert np.all(np.abs(got - ref) <= EPS * np.maximum(np.abs(ref), 1))


def test_log2_special_values():
    got = np.asarray(jax.jit(fastmath.log2)(np.float32([np.inf, 0.0, -1.0, np.nan])))
    assert got[0] == np.inf and got[1] == -np.inf and np.isnan(got[2]) and np.isnan(got[3])
