"""float32 ``2**t`` and ``log2 x`` from plain arithmetic, for the many-draw law (:func:`bayescale.laws.power.loss_all_draws`).

XLA's CPU ``exp`` and ``log`` are general (every input range, every special value) and cost ~40
vector instructions each; the many-draw law is a stream of them (one ``d^beta`` per source, draw,
target and allocation), so they set its speed. These two are a range reduction and a polynomial
(Chebyshev fits, coefficients below), which XLA fuses and vectorises like any other arithmetic:

- :func:`exp2`: relative error < 1 ulp (measured 0.7; 2.5e-9 from the polynomial, the rest float32
  rounding) for ``t`` in [-125, 126]; outside it ``t`` is clipped, so ``exp2(-inf) = 2**-125``
  (~2e-38, not 0: added to an effective data >= x0 > 0 it is lost in rounding); NaN stays NaN.
- :func:`log2`: error < 1 ulp of ``max(|log2 x|, 1)`` (measured 0.6) for normal x > 0; +inf, 0,
  negatives and NaN give what ``jnp.log2`` gives (denormals, flushed to 0 by XLA's CPU anyway, -inf).

Tested against float64 NumPy over their ranges (tests/bayescale/laws/test_fastmath.py).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

# 2**f on f in [-1/2, 1/2], degree 6: relative error 2.5e-9.
_EXP2 = (1.0, 0.6931472067028329, 0.24022650922289554, 0.05550327226669895, 0.00961805667843204,
         0.0013400428177711937, 0.00015461444724808513)
# log2(1 + f) / f on f in [sqrt(1/2) - 1, sqrt(2) - 1], degree 8: relative error 3e-8.
_LOG2 = (1.442695003567983, -0.7213474682495686, 0.4809107534594289, -0.36069326813421665, 0.2879032609224606,
         -0.23916988143154155, 0.21607822557935413, -0.20586188029298227, 0.1231096842125588)
_SQRT_HALF_BITS = 0x3F3504F3  # float32 bits of sqrt(1/2)


def _horner(coefficients, f):
    p = jnp.asarray(coefficients[-1], f.dtype)
    for c in coefficients[-2::-1]:
        p = p * f + jnp.asarray(c, f.dtype)
    return p


def exp2(t):
    """``2**t`` for float32 ``t``: ``2**k * p(t - k)`` with k = round(t), the power of two added to the exponent bits."""
    t = jnp.clip(t, -125.0, 126.0)
    k = jnp.round(t)
    p = _horner(_EXP2, t - k)  # in [0.70, 1.42]: a normal float whose exponent k can shift
    return lax.bitcast_convert_type(lax.bitcast_convert_type(p, jnp.int32) + (k.astype(jnp.int32) << 23), jnp.float32)


def log2(x):
    """``log2 x`` for float32 ``x``: x = 2**e m with m in [sqrt(1/2), sqrt(2)), log2 x = e + log2 m by a polynomial."""
    bits = lax.bitcast_convert_type(x, jnp.int32)
    e = (bits - _SQRT_HALF_BITS) >> 23  # arithmetic shift: the exponent that puts m in [sqrt(1/2), sqrt(2))
    f = lax.bitcast_convert_type(bits - (e << 23), jnp.float32) - 1.0
    approx = e.astype(jnp.float32) + f * _horner(_LOG2, f)
    # Finite positive x only (no denormals: they are < 1.2e-38); the rest as log2 has it.
    special = jnp.where(x == jnp.inf, jnp.inf, jnp.where(x == 0, -jnp.inf, jnp.nan)).astype(x.dtype)
    return jnp.where((x >= np.float32(np.finfo(np.float32).tiny)) & (x < jnp.inf), approx, special)
