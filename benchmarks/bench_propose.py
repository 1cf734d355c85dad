"""Time and accuracy of ``bayescale propose`` against a real refit per candidate (a benchmark, not a test).

    .venv/bin/python benchmarks/bench_propose.py [--domains 8] [--batch 8] [--mixtures 90] [--checks 3]
        [--objective mean] [--out-dir benchmarks/results/propose]

On ``bench_scaling``'s world (``draw_world(K, seed=0)``, 4 budgets x (K ladders + 2K mixtures)), fitted
once with NUTS (4 chains x (500 + 500), ``fit``'s defaults; the posterior is cached under ``--out-dir``):

1. **Speed.** Scores and selects a batch from the auto candidates (singles, pairs and ``--mixtures``
   Dirichlet mixtures per budget on a ladder of four budgets up to the largest fit run: >= 500 for
   K = 8), median of ``--repeats`` calls, against the thing the cheap update replaces: one NUTS refit
   per candidate (the grid with that run appended, measured ``--checks`` times, times the candidates).
2. **Accuracy of the cheap update.** For the first ``--checks`` runs of the batch: one outcome drawn
   from a posterior draw (the run's losses in that world), then the posterior given it two ways:
   the evaluation draws reweighted by its likelihood (what propose does) and a real NUTS refit of the
   grid with the run appended. Compared: the objective of every decision in propose's decision set
   and the law's parameters (alpha, log E per target; log T per pair), each difference in units of the
   refit's posterior sd, and whether both pick the same decision.

Prints two tables and writes ``summary.md`` under ``--out-dir``; docs/propose.md reports what was measured.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from bayescale.inference.sampling import ensure_host_devices

ensure_host_devices()

import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from bayescale.data import grid as grids  # noqa: E402
from bayescale.data import simulate  # noqa: E402
from bayescale.inference.fit import fit  # noqa: E402
from bayescale.inference.posterior import law_draws, load_posterior, save_posterior  # noqa: E402
from bayescale.optimise import propose as prop  # noqa: E402
from bayescale.optimise.candidates import make_candidates  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def world_grid(k: int) -> xr.Dataset:
    world = simulate.draw_world(k, seed=0)
    world.design = simulate.Design(fit_budgets=(8.0, 16.0, 32.0, 64.0), holdout_budgets=(128.0,), mixtures_per_budget=2 * k,
                                   holdout_mixtures_per_budget=3)
    return simulate.simulate_grid(world, seed=0)


def posterior(grid, path: Path, seed: int = 0):
    if path.exists():
        return load_posterior(path)
    t0 = time.perf_counter()
    idata = fit(grid, chains=4, warmup=500, draws=500, seed=seed)
    idata.attrs["bench_fit_seconds"] = time.perf_counter() - t0
    save_posterior(idata, path)
    return load_posterior(path)


def with_run(grid: xr.Dataset, amounts: np.ndarray, log_loss: np.ndarray, name: str) -> xr.Dataset:
    """The grid with one more fit run (its losses exp(log_loss) on every target)."""
    fit_runs = grids.select_split(grid, "fit")
    sources = [str(s) for s in fit_runs["source"].values]
    targets = [str(t) for t in fit_runs["target"].values]
    return grids.make_grid(
        [str(r) for r in fit_runs["run"].values] + [name], sources, targets,
        np.vstack([fit_runs["data"].transpose("run", "source").values, amounts[None]]),
        np.vstack([fit_runs["loss"].transpose("run", "target").values, np.exp(log_loss)[None]]),
        split=["fit"] * (fit_runs.sizes["run"] + 1), attrs=dict(grid.attrs))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--mixtures", type=int, default=90, help="Dirichlet mixtures per budget among the candidates (90: 504 for K = 8)")
    parser.add_argument("--checks", type=int, default=3, help="runs whose cheap update is compared with a real refit")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--objective", default="mean")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results" / "propose")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)

    grid = world_grid(args.domains)
    idata = posterior(grid, args.out_dir / f"k{args.domains}.posterior.nc")
    draws = law_draws(idata)
    budget = 8.0 * float(grids.select_split(grid, "fit")["data"].sum("source").max())
    pool = make_candidates(draws.sources, grid, mixtures_per_budget=args.mixtures)
    options = {"objective": args.objective}

    seconds, result = [], None
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        result = prop.propose(draws, budget, pool, batch=args.batch, options=options)
        seconds.append(time.perf_counter() - t0)
    t_propose = float(np.median(seconds))

    # The cheap update against a real refit, for the first runs of the batch.
    recommendation, spec, v, allocations = prop.decision_set(draws, budget, options, decisions=prop.DECISIONS,
                                                             max_draws=2000, seed=0)
    rng = np.random.default_rng(5)
    rows, refit_seconds = [], []
    for k, run in enumerate(result.batch[: args.checks]):
        c = pool.names.index(run.name)
        one = pool.subset([c])
        world = int(rng.integers(draws.n_draws))  # the outcome's world: one posterior draw
        y = prop.simulate_outcomes(draws.subset([world]), one, 1, seed=k)[0, 0]  # (J,)
        others = np.setdiff1d(np.arange(draws.n_draws), [world])
        evaluation = draws.subset(others)
        log_w = prop.candidate_log_likelihoods(evaluation, one, y[None, None, :])[0, 0].astype(np.float64)
        weights = prop.normalised(log_w)
        t0 = time.perf_counter()
        refit = law_draws(fit(with_run(grid, one.amounts[0], y, f"proposed-{k}"), chains=4, warmup=500, draws=500, seed=k + 1))
        refit_seconds.append(time.perf_counter() - t0)
        f_is = prop.per_draw_terms(evaluation, allocations, v, False)  # (S, A)
        f_refit = prop.per_draw_terms(refit, allocations, v, False)
        risk_is, risk_refit = weights @ f_is, f_refit.mean(axis=0)
        decision_sd = f_refit.std(axis=0)
        names, p_is = prop.tracked_parameters(evaluation)
        _, p_refit = prop.tracked_parameters(refit)
        mean_is = weights @ p_is
        sd_is = np.sqrt(np.maximum(weights @ p_is**2 - mean_is**2, 0.0))
        z_params = (mean_is - p_refit.mean(axis=0)) / p_refit.std(axis=0)
        rows.append({
            "run": run.name, "ess": float(prop.effective_sample_size(weights)),
            "decision_shift_sd_median": float(np.median(np.abs(risk_is - risk_refit) / decision_sd)),
            "decision_shift_sd_max": float(np.max(np.abs(risk_is - risk_refit) / decision_sd)),
            "same_choice": bool(np.argmin(risk_is) == np.argmin(risk_refit)),
            "regret_of_is_choice_sd": float((risk_refit[np.argmin(risk_is)] - risk_refit.min()) / np.median(decision_sd)),
            "param_shift_sd_median": float(np.median(np.abs(z_params))),
            "param_shift_sd_max": float(np.max(np.abs(z_params))),
            "param_worst": names[int(np.argmax(np.abs(z_params)))],
            "sd_ratio_median": float(np.median(sd_is / p_refit.std(axis=0))),
        })

    t_refit = float(np.median(refit_seconds))
    summary = {
        "domains": args.domains, "fit_runs": int((grid["split"].values == "fit").sum()), "candidates": len(pool),
        "batch": args.batch, "objective": args.objective, "decisions": result.decisions,
        "propose_seconds": seconds, "propose_median_seconds": t_propose, "refit_seconds": refit_seconds,
        "refit_per_candidate_seconds": t_refit * len(pool), "speedup": t_refit * len(pool) / t_propose,
        "batch_runs": [r.name for r in result.batch], "expected_gain": result.expected_gain,
        "expected_gain_se": result.expected_gain_se, "effective_draws": result.effective_draws, "checks": rows,
        "load_average": os.getloadavg()[0],
    }
    (args.out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    lines = [
        f"K = {args.domains}, {summary['fit_runs']} fit runs, {len(pool)} candidates, batch {args.batch}, objective {args.objective}, "
        f"{result.decisions} decisions (load {summary['load_average']:.1f})",
        "",
        "| what | seconds |", "|---|---:|",
        f"| propose: score and select (median of {args.repeats}) | {t_propose:.1f} |",
        f"| one NUTS refit with one run appended (median of {len(refit_seconds)}) | {t_refit:.0f} |",
        f"| a refit per candidate ({len(pool)}) | {t_refit * len(pool):.0f} ({summary['speedup']:.0f}x propose) |",
        "",
        "| run | ESS of the weights | decision objectives: median / max shift (refit sd) | same choice | "
        "parameters: median / max shift (refit sd), worst | sd ratio (median) |",
        "|---|---:|---|---|---|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['run']} | {r['ess']:.0f} | {r['decision_shift_sd_median']:.2f} / {r['decision_shift_sd_max']:.2f} | "
                     f"{'yes' if r['same_choice'] else 'no'} | {r['param_shift_sd_median']:.2f} / {r['param_shift_sd_max']:.2f}, "
                     f"{r['param_worst']} | {r['sd_ratio_median']:.2f} |")
    text = "\n".join(lines) + "\n"
    (args.out_dir / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
