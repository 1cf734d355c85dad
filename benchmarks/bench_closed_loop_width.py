"""Where the width of the closed loop's intervals comes from (issue 14; a measurement, not a test).

    .venv/bin/python benchmarks/bench_closed_loop_width.py [--posterior PATH]

Reads the transfer posterior that ``bench_calibration_real.py --cases closed-loop`` fitted to every
shipped run (``benchmarks/results/calibration-real/closed-loop__transfer.posterior.nc``) and predicts
the closed loop's 9 trained runs at 144 volumes. Prints:

- the single-run predictive sd on log loss split into the law's spread, the noise (per-target sigma
  and the run effect) and the slope error past the fit runs' data, against the sd of the misses;
- 50 % / 90 % coverage when every draw's noise, or its slope error, is scaled down: what a noise scale
  that falls with a run's data could at most change;
- the coverage that replicates drawn from the predictive itself give (its slope error shared by a
  target's cells, its run effect by a run's), as a 95 % range and a one-sided p of the measured coverage.

docs/calibration.md reports what this measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_calibration_real

from bayescale.data import grid as grids
from bayescale.evaluate import check
from bayescale.evaluate.predict import add_observation_noise, loss_draws
from bayescale.inference import posterior
from bayescale.laws.noise import extrapolation_distance

DEFAULT = ROOT / "benchmarks" / "results" / "calibration-real" / "closed-loop__transfer.posterior.nc"


def coverage(draws, grid) -> tuple[float, float]:
    scores = check.score_predictions(check.holdout_predictions(draws, grid))
    return scores["coverage_50"], scores["coverage_90"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posterior", type=Path, default=DEFAULT)
    args = parser.parse_args(argv)
    if not args.posterior.exists():
        raise SystemExit(f"{args.posterior}: no posterior; run bench_calibration_real.py --cases closed-loop --laws transfer first")
    draws = posterior.law_draws(posterior.load_posterior(args.posterior))
    grid = bench_calibration_real.closed_loop_grid()
    runs = grids.select_split(grid, "holdout")
    amounts = check.allocations_for(draws, runs)
    targets = list(draws.targets)
    log_law = loss_draws(draws, amounts, log=True).astype(np.float64)  # (S, N, J)
    predictive = add_observation_noise(log_law, draws, np.random.default_rng(0), amounts)
    log_obs = np.log(runs["loss"].reindex(target=targets).transpose("run", "target").values)
    observed = np.isfinite(log_obs)
    distance = float(extrapolation_distance(amounts, draws.reach).mean())
    noise = float(np.sqrt(np.mean(draws.sigma**2) + (np.mean(draws.sigma_run**2) if draws.sigma_run is not None else 0.0)))
    misses = (log_obs - np.median(predictive, axis=0))[observed]
    print(f"{int(observed.sum())} cells of {runs.sizes['run']} runs, {distance:.2f} in log total data past the fit runs")
    print("| part of the predictive sd | on log loss |\n|---|---:|")
    print(f"| law's spread | {log_law.std(axis=0).mean():.3f} |\n| noise (sigma and run effect) | {noise:.3f} |")
    print(f"| slope error | {np.std(draws.slope_error) * distance:.3f} |\n| all (one run) | {predictive.std(axis=0).mean():.3f} |")
    print(f"| the misses (observed - predictive median) | {misses.std():.3f} |\n")

    print("| noise × | slope error × | 50 % / 90 % coverage |\n|---:|---:|---|")
    for noise_factor, slope_factor in ((1.0, 1.0), (0.75, 1.0), (0.5, 1.0), (0.3, 1.0), (0.5, 0.5), (1.0, 0.0), (0.5, 0.0)):
        scaled = dataclasses.replace(draws, sigma=draws.sigma * noise_factor, slope_error=draws.slope_error * slope_factor,
                                     sigma_run=None if draws.sigma_run is None else draws.sigma_run * noise_factor)
        c50, c90 = coverage(scaled, grid)
        print(f"| {noise_factor:g} | {slope_factor:g} | {c50:.0%} / {c90:.0%} |")

    print("\n| level | measured | replicates' 95 % range | P(replicate ≥ measured) |\n|---:|---:|---|---:|")
    for level in (0.5, 0.9):
        lo, hi = np.quantile(predictive, [(1 - level) / 2, (1 + level) / 2], axis=0)
        measured = float(((log_obs >= lo) & (log_obs <= hi))[observed].mean())
        replicated = ((predictive >= lo) & (predictive <= hi))[:, observed].mean(axis=1)  # one replicate per draw
        q = np.quantile(replicated, [0.025, 0.975])
        print(f"| {level:.0%} | {measured:.0%} | {q[0]:.0%}–{q[1]:.0%} | {(replicated >= measured).mean():.3f} |")


if __name__ == "__main__":
    main()
