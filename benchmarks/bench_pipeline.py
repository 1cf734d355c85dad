"""Timing of the pipeline's stages on the shipped default grid (a benchmark, not a test).

    .venv/bin/python benchmarks/bench_pipeline.py [--repeats 3]

Prints one table: the median wall time of fit (NUTS with the demo settings), predict (one
allocation, all draws), allocate (mean and cvar:0.9) and check; the ESS per second of the
slowest-mixing law parameter; and the time to predict 10,000 allocations against 4,000
draws (vectorised JAX), against a plain NumPy evaluation of the same array for reference.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from rich.console import Console
from rich.table import Table

from bayescale.optimise.allocate import allocate
from bayescale.inference.sampling import ensure_host_devices
from bayescale.evaluate.check import check_holdout
from bayescale.inference.fit import fit
from bayescale.data.grid import load_grid
from bayescale.workflows import REPO_DATA, load_demo_config
from bayescale.inference.posterior import LawDraws, diagnostics, law_draws
from bayescale.evaluate.predict import loss_draws, predict


def timed(fn, repeats):
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def numpy_loss(draws: LawDraws, D: np.ndarray) -> np.ndarray:
    """The same (S, N, J) array in NumPy, draw by draw."""
    d = (D / draws.data_scale).astype(np.float32)
    out = np.empty((draws.n_draws, d.shape[0], len(draws.targets)), np.float32)
    off = 1 - draws.self_mask
    with np.errstate(divide="ignore"):
        logd = np.log(d)
    for s in range(draws.n_draws):
        powered = np.where(d[:, :, None] > 0, np.exp(draws.beta[s][None] * logd[:, :, None]), 0.0)
        x = draws.x0[s] + d @ draws.self_mask + np.einsum("ij,nij->nj", draws.T[s] * off, powered)
        out[s] = draws.E[s] + draws.A[s] * x ** -draws.alpha[s]
    return out


def main():
    ensure_host_devices()  # parallel chains: before anything starts JAX
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    console = Console()
    config = load_demo_config()
    grid = load_grid(REPO_DATA / "grids" / "default.nc")
    fit_cfg = config["fit"]
    alloc_cfg = config["allocate"]
    rows = []

    console.print(f"fitting the default grid {args.repeats}x …")
    t_fit, idata = timed(lambda: fit(grid, seed=0, **fit_cfg), args.repeats)
    diag = diagnostics(idata)
    rows.append((f"fit (NUTS {fit_cfg['chains']} chains, {fit_cfg['warmup']} warmup + {fit_cfg['draws']} draws)", f"{t_fit:.1f} s", f"min bulk ESS {diag['min_ess_bulk']:.0f}"))
    rows.append(("ESS/s of the slowest parameter", f"{diag['min_ess_bulk'] / t_fit:.1f}", f"max r-hat {diag['max_rhat']:.3f}"))

    draws = law_draws(idata)
    alloc = {s: 30.0 for s in draws.sources}
    predict(draws, alloc)  # compile once
    t_pred, _ = timed(lambda: predict(draws, alloc), args.repeats)
    rows.append((f"predict one allocation ({draws.n_draws} draws)", f"{t_pred * 1e3:.1f} ms", ""))

    for objective in ("mean", alloc_cfg["objective"]):
        t_alloc, result = timed(lambda: allocate(draws, alloc_cfg["budget"], objective=objective, upper=alloc_cfg["available"]), args.repeats)
        rows.append((f"allocate {objective} (budget {alloc_cfg['budget']})", f"{t_alloc:.2f} s", f"{result['draws_used']} draws, {result['solver']}"))

    t_check, scores = timed(lambda: check_holdout(draws, grid), args.repeats)
    rows.append(("check held-out runs", f"{t_check * 1e3:.0f} ms", f"r = {scores['pearson_r']:.4f}"))

    # 10,000 allocations x 4,000 draws: tile the posterior to 4,000 draws.
    big = draws.subset(np.resize(np.arange(draws.n_draws), 4000))
    D = np.random.default_rng(0).dirichlet(np.ones(len(draws.sources)), 10_000) * alloc_cfg["budget"]
    loss_draws(big, D)  # compile and touch the memory once
    t_big, out = timed(lambda: loss_draws(big, D), args.repeats)
    small = big.subset(slice(0, 200))
    t_np, ref = timed(lambda: numpy_loss(small, D), 1)
    t_np_full = t_np * 4000 / 200
    np.testing.assert_allclose(out[:200], ref, rtol=1e-3)
    rows.append(("predict 10,000 allocations x 4,000 draws (JAX)", f"{t_big:.2f} s", f"{out.size / t_big / 1e6:.0f} M losses/s"))
    rows.append(("  same in NumPy, draw by draw (extrapolated from 200 draws)", f"{t_np_full:.2f} s", f"JAX is {t_np_full / t_big:.1f}x faster"))

    table = Table(title=f"bayescale pipeline on data/grids/default.nc (median of {args.repeats})")
    table.add_column("stage")
    table.add_column("time", justify="right")
    table.add_column("note")
    for row in rows:
        table.add_row(*row)
    console.print(table)


if __name__ == "__main__":
    main()
