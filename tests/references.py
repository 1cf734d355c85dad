"""Reference computations the tests compare the library against, done another way than the library
does them: closed forms and root finding with SciPy where the library draws Monte Carlo samples."""

from __future__ import annotations

import numpy as np
import scipy.optimize
import scipy.stats


def normal_mixture_quantiles(mean: np.ndarray, sd: np.ndarray, probs) -> tuple[np.ndarray, np.ndarray]:
    """Quantiles of the equal-weight mixture of Normal(mean_s, sd_s) over the leading axis s, by
    root finding on its CDF, and the mixture's density there. ``mean``, ``sd``: (S, ...) arrays;
    returns two (len(probs), ...) arrays."""
    mean, sd = np.broadcast_arrays(np.asarray(mean, float), np.asarray(sd, float))
    flat_mean, flat_sd = mean.reshape(mean.shape[0], -1), sd.reshape(sd.shape[0], -1)
    probs = np.atleast_1d(np.asarray(probs, float))
    q = np.empty((probs.size, flat_mean.shape[1]))
    density = np.empty_like(q)
    for c in range(flat_mean.shape[1]):
        m, s = flat_mean[:, c], flat_sd[:, c]
        lo, hi = (m - 12 * s).min(), (m + 12 * s).max()
        for k, p in enumerate(probs):
            q[k, c] = scipy.optimize.brentq(lambda x: scipy.stats.norm.cdf((x - m) / s).mean() - p, lo, hi, xtol=1e-12)
            density[k, c] = (scipy.stats.norm.pdf((q[k, c] - m) / s) / s).mean()
    shape = (probs.size,) + mean.shape[1:]
    return q.reshape(shape), density.reshape(shape)


def quantile_standard_error(p, density, n: int):
    """Standard error of the sample p-quantile of n independent draws whose CDF has ``density`` there
    (asymptotic: sqrt(p (1 - p) / n) / f). For draws independent but not identically distributed
    (one per posterior draw) the variance of the empirical CDF is at most p (1 - p) / n: a bound."""
    p = np.asarray(p, float).reshape((-1,) + (1,) * (np.ndim(density) - 1))
    return np.sqrt(p * (1 - p) / n) / density


def transfer_loss(draws, D) -> np.ndarray:
    """The transfer law's loss (S, J) of one allocation ``D`` (I,) in raw data units, in NumPy."""
    d = np.asarray(D, float) / draws.data_scale
    with np.errstate(divide="ignore"):
        powered = np.where(d[None, :, None] > 0, d[None, :, None] ** draws.beta, 0.0)
    x = draws.x0 + d @ draws.self_mask + np.einsum("sij,sij->sj", draws.T * (1 - draws.self_mask), powered)
    return draws.E + draws.A * x ** -draws.alpha


def predictive_log_loss_mixture(draws, D, relative_se=0.0):
    """Per draw, the mean and sd of the normal predictive of one new run's log loss (S, J) at ``D``:
    the law, its error past the fit runs' largest total (``slope_error * log(total / reach)``, when
    past it) and independent normal noise of sd sigma (at the run's total data, where the draws carry a
    noise_slope), sigma_run (alike, where it falls with data) and ``relative_se`` (normal likelihood)."""
    assert draws.likelihood == "normal", "a normal mixture is the predictive of the normal likelihood only"
    mean = np.log(transfer_loss(draws, D))
    total = float(np.sum(D))
    if draws.slope_error is not None and draws.reach and total > draws.reach:
        mean = mean + draws.slope_error * np.log(total / draws.reach)
    # The misfit at this run's total: sigma (B / noise_reach)^-noise_slope, B clipped at noise_low;
    # the run effect scaled alike where it falls with data (run_effect_falls).
    factor = 1.0 if getattr(draws, "noise_slope", None) is None else (
        (max(total, draws.noise_low) / draws.noise_reach) ** -draws.noise_slope[:, None])
    misfit = draws.sigma * factor
    run = 0.0 if draws.sigma_run is None else (
        draws.sigma_run[:, None] * (factor if getattr(draws, "run_effect_falls", False) else 1.0)) ** 2
    sd = np.sqrt(misfit**2 + run + np.asarray(relative_se, float) ** 2)
    return mean, sd
