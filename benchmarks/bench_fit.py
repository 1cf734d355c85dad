"""Speed and calibration of the fit against the usual non-Bayesian alternative (a benchmark, not a test).

    .venv/bin/python benchmarks/bench_fit.py [--repeats 3] [--world-seed 0] [--resamples 1000] [--out FILE.md]

On a simulated K = 8 world (``draw_world(8)``) with 100 fit runs (4 budgets x (8 single-domain
ladders + 17 Dirichlet mixtures)) and 16 held-out mixtures at 128 and 256 volumes, above every
fit budget, it times in the same process:

- NUTS, 4 chains x (500 warmup + 1000 draws), the default target acceptance
  (``bayescale.inference.fit.fit``): wall time, min bulk ESS, ESS/s, divergences, max r-hat;
- SVI (``method="svi"``, full-rank Gaussian guide, 4000 draws);
- the Chinchilla-style alternative (``bayescale.inference.bootstrap``): Huber-loss (δ = 1e-3) BFGS point
  fit from a grid of initialisations, then 1000 bootstrap refits to resampled runs;

and scores each on the same held-out cells (``bayescale.evaluate.check.check_holdout``): Pearson r,
median relative error, 50 % and 90 % interval coverage. Times are medians over ``--repeats``
(seeds 0, 1, …; the first repeat includes JAX compilation, shown separately); scores are
medians too. The table is printed and written as Markdown to ``--out``
(default ``benchmarks/results/bench_fit.md``; ``--out ''`` to skip).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import jax
from rich.console import Console
from rich.table import Table

from bayescale.inference.bootstrap import bootstrap_fit, point_fit
from bayescale.inference.sampling import ensure_host_devices
from bayescale.evaluate.check import check_holdout
from bayescale.inference.fit import fit
from bayescale.data.grid import grid_summary
from bayescale.inference.posterior import diagnostics, law_draws
from bayescale.data.simulate import Design, draw_world, simulate_grid

DESIGN = Design(fit_budgets=(8.0, 16.0, 32.0, 64.0), holdout_budgets=(128.0, 256.0), mixtures_per_budget=17, holdout_mixtures_per_budget=7)
CHAINS, WARMUP, DRAWS = 4, 500, 1000


def benchmark_grid(world_seed: int):
    world = draw_world(8, seed=world_seed)
    world.design = DESIGN
    return simulate_grid(world, seed=world_seed)


def timed(fn):
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def one_repeat(grid, seed: int, resamples: int) -> dict:
    out = {}
    wall, idata = timed(lambda: fit(grid, chains=CHAINS, warmup=WARMUP, draws=DRAWS, seed=seed))
    diag = diagnostics(idata)
    out["nuts"] = {"wall": wall, "ess": diag["min_ess_bulk"], "ess_per_s": diag["min_ess_bulk"] / wall, "divergences": diag["divergences"],
                   "rhat": diag["max_rhat"], **check_holdout(law_draws(idata), grid, seed=seed)}
    try:
        wall, idata = timed(lambda: fit(grid, method="svi", chains=CHAINS, draws=DRAWS, seed=seed))
        out["svi"] = {"wall": wall, **check_holdout(law_draws(idata), grid, seed=seed)}
    except Exception as exc:  # a broken SVI path is reported in the table, not fatal to the benchmark
        out["svi"] = {"error": f"failed: {type(exc).__name__} {str(exc)[:80]}".strip()}
    wall_point, point = timed(lambda: point_fit(grid))
    wall_boot, draws = timed(lambda: bootstrap_fit(grid, resamples=resamples, seed=seed, point=point))
    out["bootstrap"] = {"wall": wall_point + wall_boot, **check_holdout(draws, grid, seed=seed)}
    out["point"] = {"wall": wall_point, **check_holdout(point.draws, grid, seed=seed)}
    return out


def median(results, method, key):
    values = [r[method][key] for r in results if key in r[method]]
    return statistics.median(values) if values else float("nan")


def calibration_error(results, method):
    return abs(median(results, method, "coverage_50") - 0.5) + abs(median(results, method, "coverage_90") - 0.9)


def main():
    ensure_host_devices()  # parallel chains: before anything starts JAX
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--world-seed", type=int, default=0)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_fit.md"))
    args = parser.parse_args()
    console = Console(width=220)
    grid = benchmark_grid(args.world_seed)
    summary = grid_summary(grid)
    load_before = os.getloadavg()
    results = []
    for seed in range(args.repeats):
        console.print(f"repeat {seed + 1}/{args.repeats}: NUTS, SVI, bootstrap …")
        results.append(one_repeat(grid, seed, args.resamples))
    load_after = os.getloadavg()

    def cells(method, with_coverage=True):
        if "error" in results[0][method]:
            return ["—"] * 6
        first = results[0][method]["wall"]
        row = [f"{median(results, method, 'wall'):.1f}", f"{first:.1f}"]
        row += [f"{median(results, method, 'pearson_r'):.4f}", f"{100 * median(results, method, 'median_abs_rel_error'):.2f} %"]
        row += [f"{100 * median(results, method, 'coverage_50'):.0f} %", f"{100 * median(results, method, 'coverage_90'):.0f} %"] if with_coverage else ["—", "—"]
        return row

    nuts_extra = (f"min bulk ESS {median(results, 'nuts', 'ess'):.0f}, {median(results, 'nuts', 'ess_per_s'):.2f} ESS/s, "
                  f"{median(results, 'nuts', 'divergences'):.0f} divergences, max r-hat {median(results, 'nuts', 'rhat'):.3f}")
    rows = [
        [f"NUTS ({CHAINS} chains x ({WARMUP} warmup + {DRAWS} draws))", *cells("nuts"), nuts_extra],
        ["SVI (full-rank Gaussian, 5000 steps)", *cells("svi"), results[0]["svi"].get("error", "approximate; no sampler diagnostics")],
        [f"Huber fit + bootstrap ({args.resamples} resamples of runs)", *cells("bootstrap"), "intervals of the fitted curve + residual noise, not a posterior"],
        ["  of which the Huber point fit alone", *cells("point", with_coverage=False), "12 starts per target, best kept"],
    ]
    header = ["method", "wall s (median)", "wall s (1st, compiles)", "held-out r", "median rel. error", "50 % cov.", "90 % cov.", "note"]
    ratio = median(results, "nuts", "wall") / median(results, "bootstrap", "wall")
    cal_nuts, cal_boot = calibration_error(results, "nuts"), calibration_error(results, "bootstrap")
    better = "NUTS" if cal_nuts < cal_boot else "bootstrap" if cal_boot < cal_nuts else "neither"
    lines = [
        f"NUTS time / bootstrap time: {ratio:.2f} (goal: <= 3 — {'met' if ratio <= 3 else 'not met'})",
        f"calibration error |cov50 - 50 %| + |cov90 - 90 %|: NUTS {100 * cal_nuts:.1f} pts, bootstrap {100 * cal_boot:.1f} pts, SVI "
        + ("—" if "error" in results[0]["svi"] else f"{100 * calibration_error(results, 'svi'):.1f} pts") + f" — better calibrated: {better}",
        f"grid: K = 8 (draw_world(8, seed={args.world_seed})), {summary['splits']['fit']} fit runs at {DESIGN.fit_budgets} volumes, "
        f"{summary['splits']['holdout']} held-out runs at {DESIGN.holdout_budgets} ({results[0]['nuts']['n']} held-out cells)",
        f"machine: {os.cpu_count()} CPU cores shared with other jobs (load average {load_before[0]:.1f} before, {load_after[0]:.1f} after), "
        f"{jax.local_device_count()} XLA host devices, jax {jax.__version__}, Python {platform.python_version()}; median of {args.repeats} repeat(s)",
    ]

    table = Table(title=f"fit: NUTS vs SVI vs Huber bootstrap, simulated K = 8 world (median of {args.repeats})")
    for name in header:
        table.add_column(name, justify="left" if name in ("method", "note") else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    for line in lines:
        console.print(line)

    if args.out:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        md = [f"# bench_fit ({time.strftime('%Y-%m-%d')})", "", "`" + " ".join(["benchmarks/bench_fit.py", f"--repeats {args.repeats}", f"--world-seed {args.world_seed}", f"--resamples {args.resamples}"]) + "`", ""]
        md += ["| " + " | ".join(header) + " |", "|" + "|".join("---" if h in ("method", "note") else "---:" for h in header) + "|"]
        md += ["| " + " | ".join(row) + " |" for row in rows]
        md += [""] + [f"- {line}" for line in lines] + [""]
        path.write_text("\n".join(md))
        console.print(f"written to {path}")


if __name__ == "__main__":
    main()
