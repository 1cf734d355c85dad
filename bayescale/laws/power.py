"""The transfer scaling law and its nested variants, as small pure JAX functions.

All data here are in the law's units: ``d = D / D0`` (see DESIGN.md). For target j
and allocation d over the sources::

    L_j(d) = E_j + A_j * x_j(d) ** (-alpha_j)
    x_j(d) = x0_j + d_j + sum_{i != j} T_ij * d_i ** beta_ij

``self_mask[i, j]`` is 1 where source i *is* target j (its own data enters
linearly with coefficient 1) and 0 elsewhere. The functions take one parameter
set; callers ``vmap`` over posterior draws.

Laws in the registry:

- ``transfer``: T_ij >= 0 and beta_ij in (0, 1] free.
- ``linear``: beta_ij = 1 (a linear exchange rate between domains).
- ``independent``: T_ij = 0 (transfer-unaware; each target sees only its own data).
"""

from __future__ import annotations

import jax.numpy as jnp

LAWS = ("transfer", "linear", "independent")


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


def loss(d, E, A, alpha, x0, T, beta, self_mask):
    """Loss of every target under allocation(s) d: (N, I) -> (N, J)."""
    x = effective_data(d, T, beta, x0, self_mask)
    return E + A * x ** (-alpha)


def log_loss(d, E, A, alpha, x0, T, beta, self_mask):
    """log L computed stably: log(E + A x^-alpha) = logaddexp(log E, log A - alpha log x)."""
    x = effective_data(d, T, beta, x0, self_mask)
    return jnp.logaddexp(jnp.log(E), jnp.log(A) - alpha * jnp.log(x))


def check_law(law: str) -> str:
    if law not in LAWS:
        from bayescale.errors import InputError

        raise InputError(f"unknown law {law!r}: choose one of {', '.join(LAWS)}")
    return law


# ---------------------------------------------------------------------------
# The exponential data mixing law (Ye et al. 2024, "Data Mixing Laws"), a law at one
# fixed budget: it maps mixture *proportions* r (each row sums to 1) to loss, and is
# fitted by :mod:`bayescale.laws.mixing`, not by the transfer model.

#: Laws of mixture proportions at a fixed budget (fitted by :func:`bayescale.laws.mixing.fit_mixing`).
MIXING_LAWS = ("mixing",)


def mixing_log_loss(r, c, k, t):
    """log L_j(r) of the exponential mixing law, computed stably.

    ``L_j(r) = c_j + k_j * exp(sum_i t_ij r_i)``; r: (N, I) proportions, c >= 0 and k > 0:
    (J,), t: (I, J) real. Returns (N, J): ``logaddexp(log c_j, log k_j + (r @ t)_j)``.
    Because every r sums to 1, adding a constant to column j of t and dividing k_j by
    its exponential leaves the law unchanged; :mod:`bayescale.laws.mixing` reports the
    representative with ``r_ref @ t = 0``.
    """
    return jnp.logaddexp(jnp.log(c), jnp.log(k) + r @ t)


def mixing_loss(r, c, k, t):
    """L_j(r) = c_j + k_j * exp(sum_i t_ij r_i): (N, I) proportions -> (N, J) loss."""
    return c + k * jnp.exp(r @ t)
