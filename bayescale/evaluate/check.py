"""Extrapolation checks: predict held-out runs and score the predictions and their intervals."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import xarray as xr
from scipy import stats

from bayescale import laws
from bayescale.data import grid as grids
from bayescale.errors import InputError
from bayescale.evaluate.predict import add_observation_noise, loss_draws
from bayescale.evaluate.results import Calibration, CheckResult, CoverageCurve, LawScores, Scores
from bayescale.inference.fit import fit
from bayescale.inference.posterior import diagnostics, law_draws
from bayescale.laws.base import Draws

LEVELS = (0.5, 0.9)


def split_at_budget(grid: xr.Dataset, cut: float, where: str = "grid") -> xr.Dataset:
    """The grid with runs of budget <= ``cut`` marked ``fit`` and the rest ``holdout``.

    For extrapolation checks on grids without a held-out split (``check --holdout-above``).
    Refuses a cut that leaves nothing to check or too few runs to fit (fewer than the
    number of sources plus two: each source's law needs runs of its own).
    """
    if not np.isfinite(cut) or cut <= 0:
        raise InputError(f"cut must be a positive budget, got {cut}", parameter="cut")
    budgets = grid["data"].sum("source").values
    fit_runs = budgets <= cut * (1 + 1e-12)
    least = grid.sizes["source"] + 2
    if fit_runs.all():
        raise InputError(f"{where}: a cut at {cut:g} leaves no run above it to check (largest budget {budgets.max():g})")
    if fit_runs.sum() < least:
        raise InputError(f"{where}: a cut at {cut:g} leaves {int(fit_runs.sum())} run(s) to fit; need at least {least} (smallest budget {budgets.min():g})")
    return grid.assign_coords(split=("run", np.where(fit_runs, "fit", "holdout")))


def allocations_for(draws: Draws, grid: xr.Dataset, where: str = "grid") -> np.ndarray:
    """The grid's data as (run, posterior source) amounts; refuses a grid from another world."""
    grid_sources = [str(s) for s in grid["source"].values]
    unknown = [s for s in grid_sources if s not in draws.sources and float(grid["data"].sel(source=s).sum()) > 0]
    if unknown:
        raise InputError(f"{where}: source {unknown[0]!r} is not in the posterior (was it fitted to another grid?)")
    data = np.zeros((grid.sizes["run"], len(draws.sources)))
    for i, name in enumerate(draws.sources):
        if name in grid_sources:
            data[:, i] = grid["data"].sel(source=name).values
    return data


def holdout_predictions(draws: Draws, grid: xr.Dataset, *, split: str = "holdout", seed: int = 0, where: str = "grid") -> xr.Dataset:
    """Posterior predictive of every observed (run, target) cell of the grid's ``split`` runs.

    Returns a Dataset over (run, target) with ``observed``, ``median`` and ``lo``/``hi``
    bounds of the central 50 % and 90 % predictive intervals (observation noise included,
    and the grid's ``loss_se`` where it has one).
    """
    runs = grids.select_split(grid, split)
    if runs.sizes["run"] == 0:
        raise InputError(f"{where}: no runs with split == {split!r} to check against")
    targets = [t for t in draws.targets if t in [str(x) for x in runs["target"].values]]
    if not targets:
        raise InputError(f"{where}: none of the posterior's targets ({', '.join(draws.targets)}) is in the grid")
    data = allocations_for(draws, runs, where)
    log_pred = loss_draws(draws, data, log=True).astype(np.float64)  # (S, N, J)
    rng = np.random.default_rng(seed)
    predictive = add_observation_noise(log_pred, draws, rng, data)
    return predictive_bands(runs, targets, draws.targets, log_pred, predictive, rng)


def predictive_bands(runs: xr.Dataset, targets, draw_targets, log_pred, predictive, rng) -> xr.Dataset:
    """Observed loss, median and 50 % / 90 % bands of log-loss predictive draws (S, N, J) over
    (run, target); the runs' ``loss_se`` widens the predictive where given. Shared by every law."""
    draws_targets = list(draw_targets)
    if grids.cell_noise_se(runs) is not None:
        # A held-out loss measured with fresh noise of a known standard error is that much
        # noisier (a shared validation-set error is common to the fit runs: nothing to add).
        predictive = predictive + grids.relative_cell_noise(runs, draws_targets)[None] * rng.standard_normal(predictive.shape)
    quantiles = np.exp(np.quantile(predictive, [0.05, 0.25, 0.5, 0.75, 0.95], axis=0))
    # PIT: where the observation falls in its predictive distribution. Uniform on [0, 1] when
    # the predictive is calibrated; its spread gives coverage at every nominal level at once.
    observed_all = runs["loss"].reindex(target=draws_targets).transpose("run", "target").values
    with np.errstate(divide="ignore", invalid="ignore"):
        log_obs = np.log(observed_all)
    pit = np.where(np.isfinite(log_obs), (predictive < log_obs[None]).mean(axis=0), np.nan)
    cols = [draws_targets.index(t) for t in targets]
    coords = {"run": runs["run"].values, "target": targets}

    def da(values):
        return xr.DataArray(values[:, cols], coords=coords, dims=("run", "target"))

    return xr.Dataset(
        {
            "observed": runs["loss"].sel(target=targets).transpose("run", "target"),
            "median": da(quantiles[2]),
            "mean_law": da(np.exp(log_pred).mean(axis=0)),
            "lo50": da(quantiles[1]),
            "hi50": da(quantiles[3]),
            "lo90": da(quantiles[0]),
            "hi90": da(quantiles[4]),
            "pit": da(pit),
            "budget": runs["data"].sum("source"),
        }
    )


def score_predictions(pred: xr.Dataset) -> Scores:
    """Pearson r, median absolute relative error and 50 % / 90 % coverage over observed cells."""
    observed = pred["observed"].values.ravel()
    ok = np.isfinite(observed)
    if ok.sum() < 2:
        raise InputError("too few observed held-out losses to score (need at least 2)")
    return _scores(pred, observed, ok)


def score_by_target(pred: xr.Dataset) -> dict[str, Scores]:
    """:func:`score_predictions` per target (Pearson r is NaN for a target with one cell)."""
    out = {}
    for target in pred["target"].values:
        cell = pred.sel(target=[target])
        observed = cell["observed"].values.ravel()
        ok = np.isfinite(observed)
        if ok.any():
            out[str(target)] = _scores(cell, observed, ok)
    return out


def _scores(pred: xr.Dataset, observed: np.ndarray, ok: np.ndarray) -> Scores:
    obs, med = observed[ok], pred["median"].values.ravel()[ok]
    inside = {
        level: ((pred[f"lo{int(level * 100)}"].values.ravel()[ok] <= obs) & (obs <= pred[f"hi{int(level * 100)}"].values.ravel()[ok]))
        for level in LEVELS
    }
    return Scores(
        n=int(ok.sum()),
        pearson_r=float(np.corrcoef(med, obs)[0, 1]) if obs.size >= 2 else float("nan"),
        median_abs_rel_error=float(np.median(np.abs(med - obs) / obs)),
        coverage_50=float(inside[0.5].mean()),
        coverage_90=float(inside[0.9].mean()),
    )


# A held-out coverage this improbable under the nominal rate (one-sided binomial test)
# is reported as mis-calibration. Cells of one run share its noise, so the test is, if
# anything, quick to raise the flag — the safe direction for a warning.
CALIBRATION_ALPHA = 0.01


def coverage_curve(pred: xr.Dataset, levels=None) -> CoverageCurve:
    """Empirical coverage of central predictive intervals at each nominal level, from the PIT values.

    A cell is inside the central ``q`` interval when its PIT lies in [(1 - q) / 2, (1 + q) / 2].
    Returns ``{"nominal", "empirical", "lo", "hi", "n"}``; ``lo``/``hi`` bound the empirical coverage
    a calibrated predictive gives 95 % of the time with this many cells (binomial).
    """
    levels = np.linspace(0.05, 0.95, 19) if levels is None else np.asarray(levels, float)
    pit = pred["pit"].values.ravel()
    pit = pit[np.isfinite(pit)]
    n = pit.size
    if n == 0:
        raise InputError("no observed held-out cells to compute calibration from")
    empirical = np.array([np.mean(np.abs(pit - 0.5) <= q / 2) for q in levels])
    lo = stats.binom.ppf(0.025, n, levels) / n
    hi = stats.binom.ppf(0.975, n, levels) / n
    return CoverageCurve(nominal=levels.tolist(), empirical=empirical.tolist(), lo=lo.tolist(), hi=hi.tolist(), n=int(n))


def cluster_coverage_p(pred: xr.Dataset, level: float) -> tuple[float, float]:
    """One-sided p-values (too few inside, too many inside) of the held-out coverage at ``level``,
    with the cells of one run as one cluster (they share its model and seed).

    The coverage is a ratio of sums over runs; its variance under the nominal rate q is the
    cluster-robust (sandwich) sum_r (k_r - q n_r)^2 / (sum_r n_r)^2, and
    (coverage - q) / sd is referred to Student-t with (runs - 1) degrees of freedom. With one
    cell per run this is the binomial variance q (1 - q) / n."""
    tag = int(round(level * 100))
    obs = pred["observed"].transpose("run", "target").values
    inside = (pred[f"lo{tag}"].transpose("run", "target").values <= obs) & (obs <= pred[f"hi{tag}"].transpose("run", "target").values)
    observed = np.isfinite(obs)
    k = np.sum(inside & observed, axis=1)[observed.any(axis=1)]
    n = np.sum(observed, axis=1)[observed.any(axis=1)]
    if k.size < 2:
        return float("nan"), float("nan")
    total = n.sum()
    sd = np.sqrt(np.sum((k - level * n) ** 2)) / total
    if sd == 0:
        return (1.0, 1.0)
    t = (k.sum() / total - level) / sd
    df = k.size - 1
    return float(stats.t.cdf(t, df)), float(stats.t.sf(t, df))


def calibration_verdict(scores: Scores, pred: xr.Dataset | None = None) -> Calibration:
    """Are the held-out intervals over- or under-confident? ``{"verdict", "message", "p_values"}``.

    ``over-confident`` when fewer cells fall inside the 50 % or 90 % intervals than the
    nominal rate makes plausible (p < CALIBRATION_ALPHA): the law extrapolates worse than
    its intervals claim, typically because the truth is outside its family (a bend in
    the scaling curve past the fitted budgets) or the posterior is not converged.
    ``under-confident`` when more fall inside than plausible at both levels.

    With ``pred`` (the held-out predictions over run x target) the test counts the cells of one
    run as one cluster (:func:`cluster_coverage_p`); without, each cell is a Bernoulli trial
    (an exact binomial test, quick to flag where cells are correlated).
    """
    n = scores["n"]
    p_low, p_high = {}, {}
    clustered = pred is not None and pred.sizes.get("run", 0) >= 2
    for level in LEVELS:
        if clustered:
            p_low[level], p_high[level] = cluster_coverage_p(pred, level)
            continue
        inside = int(round(scores[f"coverage_{int(level * 100)}"] * n))
        p_low[level] = float(stats.binomtest(inside, n, level, alternative="less").pvalue)
        p_high[level] = float(stats.binomtest(inside, n, level, alternative="greater").pvalue)
    runs_note = f" of {pred.sizes['run']} runs, each run one cluster" if clustered else ""
    low = [level for level in LEVELS if p_low[level] < CALIBRATION_ALPHA]
    if low:
        worst = min(low, key=lambda level: p_low[level])
        verdict = "over-confident"
        message = (
            f"held-out intervals are over-confident: the {worst:.0%} intervals cover {scores[f'coverage_{int(worst * 100)}']:.0%} "
            f"of {n} cells{runs_note} (p = {p_low[worst]:.1g}); the law does not extrapolate as its posterior claims "
            "(truth outside the law's family, e.g. a bend in the scaling curve, or an unconverged fit) — widen or refit before trusting predictions"
        )
    elif all(p_high[level] < CALIBRATION_ALPHA for level in LEVELS):
        verdict = "under-confident"
        message = f"held-out intervals are wider than needed: 50 % / 90 % intervals cover {scores['coverage_50']:.0%} / {scores['coverage_90']:.0%} of {n} cells"
    else:
        verdict, message = "ok", f"held-out coverage consistent with the nominal 50 % / 90 % (n = {n})"
    return Calibration(verdict=verdict, message=message, p_values={f"{level:g}": p_low[level] for level in LEVELS})


def rising_losses(grid: xr.Dataset, sigma: dict[str, float], *, runs_needed: int = 3) -> list[dict]:
    """Targets whose loss *rises* with more data of one mixture: what no monotone law can predict.

    Runs of every split with the same mixture (data shares equal to 1e-6) and at least
    ``runs_needed`` distinct budgets form a series; a target is flagged where the loss at the
    series' largest budget exceeds its smallest loss at a smaller budget by more than twice its
    noise (``sigma[target]``, the posterior's median noise sd on log loss), e.g. a validation
    set a model over-trains past (seen on OpenLM's). One entry per (series, target), largest rise first."""
    data = grid["data"].transpose("run", "source").values
    totals = data.sum(axis=1)
    shares = np.round(data / np.where(totals > 0, totals, 1.0)[:, None], 6)
    out = []
    for mixture in np.unique(shares, axis=0):
        runs = np.flatnonzero(np.all(shares == mixture, axis=1) & (totals > 0))
        if np.unique(totals[runs]).size < runs_needed:
            continue
        largest = runs[totals[runs] == totals[runs].max()]
        smaller = runs[totals[runs] < totals[runs].max()]
        for target in map(str, grid["target"].values):
            loss = grid["loss"].sel(target=target).values
            last, before = np.nanmean(loss[largest]), loss[smaller]
            if not np.isfinite(last) or not np.isfinite(before).any() or target not in sigma:
                continue
            best = int(smaller[np.nanargmin(before)])
            rise = float(np.log(last / loss[best]))
            if rise > 2.0 * sigma[target]:
                out.append({"target": target, "mixture": {str(s): float(v) for s, v in zip(grid["source"].values, mixture) if v > 0},
                            "largest_budget": float(totals[largest[0]]), "lowest_at_budget": float(totals[best]),
                            "rise": float(np.exp(rise) - 1.0), "noise": float(sigma[target])})
    return sorted(out, key=lambda r: -r["rise"])


def checked(pred: xr.Dataset) -> CheckResult:
    """The scores of held-out predictions with the verdict on their intervals."""
    scores = score_predictions(pred)
    return CheckResult(scores=scores, calibration=calibration_verdict(scores, pred))


def check_holdout(draws: Draws, grid: xr.Dataset, *, split: str = "holdout", seed: int = 0, where: str = "grid") -> CheckResult:
    """Score the posterior's predictions of the grid's held-out runs (see :func:`score_predictions`),
    with a :func:`calibration_verdict` under ``"calibration"``."""
    return dataclasses.replace(checked(holdout_predictions(draws, grid, split=split, seed=seed, where=where)),
                               rising=rising_losses(grid, median_noise(draws)))


def median_noise(draws: Draws) -> dict[str, float]:
    """The posterior median of each target's noise sd on log loss."""
    return {t: float(np.median(draws.sigma[:, j])) for j, t in enumerate(draws.targets)}


def score_posterior(idata, grid: xr.Dataset, *, seed: int = 0, where: str = "grid") -> tuple[xr.Dataset, CheckResult]:
    """Held-out predictions and scores (with calibration verdict) of a posterior of any law family."""
    draws = law_draws(idata)
    pred = holdout_predictions(draws, grid, seed=seed, where=where)
    return pred, dataclasses.replace(checked(pred), rising=rising_losses(grid, median_noise(draws)))


def parse_law_families(text: str, parameter: str = "families") -> list[tuple[str, str]]:
    """``"transfer,linear,independent:student_t"`` -> [(law, likelihood), ...]; ``"all"`` is every
    registered law of data amounts (those that extrapolate in budget) but the stack, which mixes them."""
    items = [x.strip() for x in text.split(",") if x.strip()]
    if items == ["all"]:
        return [(name, family.likelihoods[0]) for name, family in laws.FAMILIES.items() if family.amounts and not family.members]
    out = []
    for item in items:
        law, _, likelihood = item.partition(":")
        if law not in laws.FAMILIES:
            raise InputError(f"{parameter}: unknown law {law!r} (choose from {', '.join(laws.names())}, or 'all')", parameter=parameter)
        family = laws.get(law)
        likelihood = likelihood or family.likelihoods[0]
        if likelihood not in family.likelihoods:
            raise InputError(f"{parameter}: unknown likelihood {likelihood!r} in {item!r} (choose from {', '.join(family.likelihoods)})",
                             parameter=parameter)
        if (law, likelihood) in out:
            raise InputError(f"{parameter}: {item!r} is given twice", parameter=parameter)
        out.append((law, likelihood))
    if not out:
        raise InputError(f"{parameter}: name at least one law, e.g. transfer,linear,independent", parameter=parameter)
    return out


def extrapolation_by_law(grid: xr.Dataset, families: list[tuple[str, str]], *, fit_options: dict | None = None,
                         seed: int = 0, where: str = "grid", fitted: dict | None = None, progress=None) -> list[LawScores]:
    """Fit every law family to the grid's ``fit`` runs and score each on its ``holdout`` runs.

    One row per family, in the order given: the held-out scores of :func:`score_predictions`,
    the calibration verdict, the fit's convergence diagnostics and its wall time. ``fitted``
    maps (law, likelihood) to a posterior already fitted on the same split (reused, not refitted).
    Shows which law extrapolates best on this grid, and whether its intervals can be trusted.
    """
    runs = grids.select_split(grid, "holdout")
    if runs.sizes["run"] == 0:
        raise InputError(f"{where}: no held-out runs (split == 'holdout') to score the laws on; mark them with split_at_budget (on the command line: --holdout-above BUDGET)")
    rows = []
    for law, likelihood in families:
        start = time.perf_counter()
        idata = (fitted or {}).get((law, likelihood))
        if idata is None:
            if progress is not None:
                progress(law, likelihood)
            idata = fit(grid, law=law, likelihood=likelihood, seed=seed, grid_name=where, **(fit_options or {}))
        seconds = time.perf_counter() - start
        pred, result = score_posterior(idata, grid, seed=seed, where=where)
        diag = diagnostics(idata)
        log_err = np.abs(np.log(pred["median"].values) - np.log(pred["observed"].values))
        rows.append(LawScores(
            law=law,
            likelihood=likelihood,
            scores=result.scores,
            calibration=result.calibration,
            mean_abs_log_error=float(np.nanmean(log_err)),
            divergences=int(diag.get("divergences", 0)),
            max_rhat=float(diag.get("max_rhat", float("nan"))),
            seconds=seconds,
        ))
    return rows
