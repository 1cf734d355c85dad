"""The transfer scaling law and its nested variants, as small pure JAX functions.

All data here are in the law's units: ``d = D / D0`` (see DESIGN.md). For target j
and allocation d over the sources::

    L_j(d) = E_j + A_j * x_j(d) ** (-alpha_j) * (1 + x_j(d) / xb_j) ** (-delta_j)
    x_j(d) = x0_j + d_j + sum_{i != j} T_ij * d_i ** beta_ij

(plus, in the ``interference`` law, ``sum_{i != j} kappa_ij * d_i``: other domains' data raising
target j's loss, as in a capacity-limited model; linear in d, so convexity is kept.)

The last factor is a smooth break (Caballero et al. 2022, with sharpness 1): past the
break ``xb_j`` the reducible loss falls with exponent ``alpha_j + delta_j`` instead of
``alpha_j``. ``delta = 0`` is the plain power law. With ``delta >= 0`` the reducible loss is a
product of two positive, decreasing, convex functions of x, hence convex and decreasing,
so the allocation programs stay convex (DESIGN.md).

``self_mask[i, j]`` is 1 where source i *is* target j (its own data enters
linearly with coefficient 1) and 0 elsewhere. The functions take one parameter
set; callers ``vmap`` over posterior draws.

The families built on it (:mod:`bayescale.laws.transfer`):

- ``transfer``: T_ij >= 0 and beta_ij in (0, 1] free.
- ``linear``: beta_ij = 1 (a linear exchange rate between domains).
- ``independent``: T_ij = 0 (transfer-unaware; each target sees only its own data).
- ``bend``: the transfer law with a break (delta_j >= 0 free).
- ``interference``: the transfer law with kappa_ij >= 0 free.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from bayescale.laws import fastmath


def safe_power(d, beta):
    """``d ** beta`` for d >= 0 with a finite gradient in beta at d = 0 (where it is 0)."""
    positive = d > 0
    d_safe = jnp.where(positive, d, 1.0)
    return jnp.where(positive, jnp.exp(beta * jnp.log(d_safe)), 0.0)


def effective_data(d, T, beta, x0, self_mask):
    """Effective data x_j(d) of every target.

    d: (N, I) allocations in law units; T, beta, self_mask: (I, J); x0: (J,).
    Returns (N, J).
    """
    own = d @ self_mask
    transferred = jnp.einsum("ij,nij->nj", T * (1.0 - self_mask), safe_power(d[:, :, None], beta[None]))
    return x0 + own + transferred


def log_reducible(log_x, log_A, alpha, delta=0.0, log_xb=0.0):
    """log of the reducible loss ``A x^-alpha (1 + x / xb)^-delta`` from log x (broadcasting)."""
    return log_A - alpha * log_x - delta * jax.nn.softplus(log_x - log_xb)


def loss(d, E, A, alpha, x0, T, beta, self_mask, delta=0.0, log_xb=0.0, kappa=None):
    """Loss of every target under allocation(s) d: (N, I) -> (N, J)."""
    return jnp.exp(log_loss(d, E, A, alpha, x0, T, beta, self_mask, delta, log_xb, kappa))


def log_loss(d, E, A, alpha, x0, T, beta, self_mask, delta=0.0, log_xb=0.0, kappa=None):
    """log L computed stably: log(E + R) = logaddexp(log E, log R), then + log1p(I / (E + R)) for
    the interference I = d @ kappa (off a target's own source; finite gradients where I = 0)."""
    x = effective_data(d, T, beta, x0, self_mask)
    base = jnp.logaddexp(jnp.log(E), log_reducible(jnp.log(x), jnp.log(A), alpha, delta, log_xb))
    if kappa is None:
        return base
    return base + jnp.log1p((d @ (kappa * (1.0 - self_mask))) * jnp.exp(-base))


LN2 = float(np.log(2.0))

#: XLA's CPU backend prefers 256-bit vectors by default; the many-draw law below is a stream of
#: vector arithmetic that runs 2x faster with 512-bit ones where the CPU has them (AVX-512;
#: measured on an AMD EPYC, benchmarks/bench_predict.py). Elsewhere the preference is ignored.
WIDE_VECTORS = {"xla_cpu_prefer_vector_width": 512}


def other_sources(self_mask) -> tuple[tuple[int, ...], ...]:
    """For each target j, the sources i that are not j itself (``self_mask[i, j] == 0``): the terms
    of :func:`loss_all_draws`' sum (a static argument, so a target's own source costs no exp)."""
    mask = np.asarray(self_mask)
    return tuple(tuple(int(i) for i in np.flatnonzero(mask[:, j] == 0)) for j in range(mask.shape[1]))


@functools.partial(jax.jit, static_argnames=("others", "log"), compiler_options=WIDE_VECTORS)
def loss_all_draws(d, E, A, alpha, x0, T, beta, self_mask, delta=None, log_xb=None, kappa=None, *, others, log=False):
    """(N, I) allocations x S draws -> (S, J, N) law loss (or its log); note the allocations last.

    The same law as :func:`loss`, written for many draws at once. Allocations are the last (contiguous)
    axis, so each term of the sum over sources is one draw's ``T_ij`` and ``beta_ij`` against a vector
    of allocations, which XLA fuses with the rest of the law into one vectorised loop (an (S, N, J)
    layout vectorises over the few targets instead: 2x slower at K = 8, measured). d^beta is
    ``2**(beta log2 d)`` by :func:`bayescale.laws.fastmath.exp2` and log x by
    :func:`~bayescale.laws.fastmath.log2`: arithmetic XLA vectorises, 2x faster than its general
    exp and log, to within 1-2 ulp of them. log2 d is taken once per allocation (log2 0 = -inf, so
    d^beta = 2**-125 ~ 0, lost in rounding against x0 > 0); ``others`` (:func:`other_sources`) lists
    the sources each target sums over, so its own source (which enters linearly, ``d @ self_mask``)
    costs no exp. ``delta``/``log_xb`` (a bend) and ``kappa`` (interference) may be None: those
    terms are then skipped (they would add exactly 0).
    """
    n_targets = E.shape[1]
    width = max(1, max(len(o) for o in others))
    # (J, M) source of the m-th term of target j, padded with source 0 at weight 0.
    src = np.array([list(o) + [0] * (width - len(o)) for o in others], dtype=np.int32)
    weight = np.array([[1.0] * len(o) + [0.0] * (width - len(o)) for o in others], dtype=np.float32)
    cols = np.arange(n_targets)[:, None]
    T_terms = jnp.swapaxes(T, 1, 2)[:, cols, src] * weight  # (S, J, M)
    beta_terms = jnp.swapaxes(beta, 1, 2)[:, cols, src]  # (S, J, M)
    log2_d = jnp.log2(d.T)[src]  # (J, M, N)
    x = x0[:, :, None] + (d @ self_mask).T[None]  # (S, J, N)
    for m in range(width):
        x = x + T_terms[:, :, m, None] * fastmath.exp2(beta_terms[:, :, m, None] * log2_d[None, :, m, :])
    log2_x = fastmath.log2(x)
    log2_r = jnp.log2(A)[:, :, None] - alpha[:, :, None] * log2_x  # log2 of the reducible loss
    if delta is not None:
        log2_r = log2_r - delta[:, :, None] * jax.nn.softplus(LN2 * log2_x - log_xb[:, :, None]) / LN2
    interference = None
    if kappa is not None:
        off = jnp.swapaxes(kappa * (1.0 - self_mask), 1, 2)  # (S, J, I)
        interference = sum(off[:, :, i, None] * d.T[None, None, i, :] for i in range(d.shape[1]))
    if log:
        base = jnp.logaddexp(jnp.log(E)[:, :, None], LN2 * log2_r)
        return base if interference is None else base + jnp.log1p(interference * jnp.exp(-base))
    loss_ = E[:, :, None] + fastmath.exp2(log2_r)
    return loss_ if interference is None else loss_ + interference


def reducible_and_slopes(x, A, alpha, delta, xb):
    """NumPy: the reducible loss R(x) and its first two derivatives in x (for the allocation programs).

    With ``g = -alpha/x - delta/(x + xb)`` (= d log R / dx): ``R' = R g`` and
    ``R'' = R (g^2 + alpha/x^2 + delta/(x + xb)^2) >= 0``."""
    R = A * x ** (-alpha) * (1.0 + x / xb) ** (-delta)
    g = -alpha / x - delta / (x + xb)
    return R, R * g, R * (g * g + alpha / x**2 + delta / (x + xb) ** 2)
