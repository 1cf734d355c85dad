"""The many-draw law (transfer.loss_draws -> power.loss_all_draws) against a plain float64 NumPy evaluation.

L_j(d) = E_j + A_j x^-alpha_j (1 + x / xb_j)^-delta_j + sum_{i != j} kappa_ij d_i,
x_j = x0_j + d_j + sum_{i != j} T_ij d_i^beta_ij, written out here independently of the package.

Tolerance, from float32: the kernel works in float32 (unit roundoff u = 2^-24) on float32 inputs.
An exponent's relative error carries into its power times the exponent's size, so the loss's
relative error is a few u times ``1 + alpha (1 + max |beta log d|) + |alpha log x| + delta log(1 + x/xb)``
(+ |log L| for the log). 8 u per unit of that leaves room for every rounding of the ~30 operations
per term and the 1.5-ulp exp2/log2 (bayescale.laws.fastmath), and is far below any formula error.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from bayescale.evaluate.predict import loss_draws as predict_loss_draws
from bayescale.laws import transfer
from bayescale.laws.base import self_mask_for
from bayescale.laws.transfer import LawDraws

U = np.finfo(np.float32).eps / 2  # unit roundoff of float32


def make_draws(rng, sources, targets, n_draws=40, bend=False, interference=False):
    mask = self_mask_for(sources, targets)
    shape_pair = (n_draws, len(sources), len(targets))
    shape_target = (n_draws, len(targets))
    return LawDraws(
        sources=tuple(sources), targets=tuple(targets), self_mask=mask,
        E=rng.uniform(0.1, 1.0, shape_target), A=rng.uniform(0.4, 1.5, shape_target), alpha=rng.uniform(0.2, 0.7, shape_target),
        x0=np.exp(rng.uniform(np.log(0.02), np.log(0.2), shape_target)), sigma=rng.uniform(0.01, 0.03, shape_target),
        T=np.where(mask > 0, 1.0, np.exp(rng.normal(np.log(0.1), 1.0, shape_pair))),
        beta=np.where(mask > 0, 1.0, rng.uniform(0.05, 1.0, shape_pair)),
        data_scale=16.0,
        delta=rng.uniform(0.0, 0.5, shape_target) if bend else None,
        log_xb=rng.normal(np.log(30.0), 1.0, shape_target) if bend else None,
        kappa=np.where(mask > 0, 0.0, rng.uniform(0.0, 0.01, shape_pair)) if interference else None,
    )


def numpy_law(draws: LawDraws, amounts):
    """float64 (S, N, J) loss and the float32 condition number of each entry (see the module docstring)."""
    d = np.asarray(amounts, dtype=np.float64) / draws.data_scale  # (N, I)
    own = d @ draws.self_mask  # (N, J)
    with np.errstate(divide="ignore"):
        log_d = np.log(d)
    # (S, N, I, J) terms; a target's own source enters linearly, d = 0 contributes 0.
    off = (1 - draws.self_mask)[None, None]
    powered = np.where(d[None, :, :, None] > 0, np.exp(draws.beta[:, None] * np.where(d > 0, log_d, 0.0)[None, :, :, None]), 0.0)
    x = draws.x0[:, None] + own[None] + np.sum(off * draws.T[:, None] * powered, axis=2)
    delta = np.zeros_like(draws.E) if draws.delta is None else draws.delta
    xb = np.ones_like(draws.E) if draws.log_xb is None else np.exp(draws.log_xb)
    bend = (1 + x / xb[:, None]) ** -delta[:, None]
    loss = draws.E[:, None] + draws.A[:, None] * x ** -draws.alpha[:, None] * bend
    if draws.kappa is not None:
        loss = loss + np.einsum("ni,sij->snj", d, draws.kappa * (1 - draws.self_mask))
    exponent = np.max(np.where(d[None, :, :, None] > 0, np.abs(draws.beta[:, None] * np.where(d > 0, log_d, 0.0)[None, :, :, None]), 0.0), axis=2)
    cond = (1 + draws.alpha[:, None] * (1 + exponent) + np.abs(draws.alpha[:, None] * np.log(x))
            + delta[:, None] * np.log1p(x / xb[:, None]) + np.abs(np.log(draws.A))[:, None])
    return loss, cond


def allocations(rng, n, n_sources):
    a = rng.uniform(0, 40 * 16, (n, n_sources)) * (rng.uniform(size=(n, n_sources)) < 0.7)
    a[:3] = 0.0
    a[1, 0] = 8.0  # a single source
    a[2] = 1e-3  # tiny amounts: d^beta at very negative log d
    a[3] = 1e5  # far past the data
    return a


CASES = {
    "square": (("a", "b", "c", "d", "e", "f", "g", "h"), ("a", "b", "c", "d", "e", "f", "g", "h")),
    # a target no source feeds directly (z) and sources that are not targets (c, d)
    "rectangular": (("a", "b", "c", "d"), ("a", "b", "z")),
    "one source": (("a",), ("a", "b")),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("variant", ["plain", "bend", "interference", "bend+interference"])
def test_loss_draws_matches_float64_numpy(case, variant):
    rng = np.random.default_rng(zlib.crc32(f"{case}|{variant}".encode()))
    sources, targets = CASES[case]
    draws = make_draws(rng, sources, targets, bend="bend" in variant, interference="interference" in variant)
    amounts = allocations(rng, 150, len(sources))
    ref, cond = numpy_law(draws, amounts)
    tol = 8 * U * cond
    # chunks of 64: the last one padded; the default chunk: one call
    for chunk in (64, None):
        got = transfer.loss_draws(draws, amounts, chunk=chunk)
        assert got.shape == ref.shape and got.dtype == np.float32
        rel = np.abs(got / ref - 1)
        assert np.all(rel <= tol), f"chunk {chunk}: worst {rel.max():.2e} vs tol {tol[np.unravel_index(rel.argmax(), rel.shape)]:.2e}"
        logged = transfer.loss_draws(draws, amounts, chunk=chunk, log=True)
        err = np.abs(logged - np.log(ref))
        assert np.all(err <= tol * (1 + np.abs(np.log(ref)))), f"log, chunk {chunk}: worst {err.max():.2e}"
    single = predict_loss_draws(draws, amounts[7])
    assert single.shape == (draws.n_draws, len(targets))
    np.testing.assert_array_less(np.abs(single / ref[:, 7] - 1), tol[:, 7])


def test_zero_terms_are_skipped_exactly():
    """delta = 0 and kappa = 0 give the same numbers as a posterior without a bend or interference."""
    rng = np.random.default_rng(3)
    draws = make_draws(rng, ("a", "b", "c"), ("a", "b", "c"), bend=True, interference=True)
    amounts = allocations(rng, 50, 3)
    plain = transfer.LawDraws(**{**draws.__dict__, "delta": None, "log_xb": None, "kappa": None})
    zeroed = transfer.LawDraws(**{**draws.__dict__, "delta": np.zeros_like(draws.E), "kappa": np.zeros_like(draws.T)})
    for log in (False, True):
        np.testing.assert_allclose(transfer.loss_draws(zeroed, amounts, log=log), transfer.loss_draws(plain, amounts, log=log),
                                   rtol=4 * np.finfo(np.float32).eps, atol=0 if not log else 1e-7)
