"""How good is the time ``fit`` announces after warm-up? (a benchmark, not a test; issue 15)

    .venv/bin/python benchmarks/bench_fit_estimate.py [--chains 4 --warmup 500 --draws 1000] [--out FILE.md]

Once NUTS's warm-up has ended, ``fit`` says how long the draws will take
(:func:`bayescale.inference.sampling.sampling_estimate`: warm-up's seconds per leapfrog step,
compiling excluded, times the draws' steps at the tree size warm-up ended with, plus compiling the
draws' loop). This fits three grids with ``fit``'s defaults (no leave-future-out fit, so one NUTS
run each) and compares the estimate with the time the draws then took (from the report to the
end of the fit): the shipped phantom grid (K = 5, 90 runs), the simulated demo grid
(``data/grids/default.nc``) and bench_fit's K = 8 world (100 fit runs). Writes the table to
``--out`` (default ``benchmarks/results/bench_fit_estimate.md``; ``--out ''`` to skip).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

from bayescale.inference.sampling import ensure_host_devices

ensure_host_devices()  # before JAX's backend starts: chains in parallel, as fit runs them

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bayescale.data.grid import load_grid  # noqa: E402
from bayescale.inference.fit import fit  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "bench_fit_estimate.md"


def grids() -> dict:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_fit import benchmark_grid

    return {"phantom (K = 5, 90 runs)": load_grid(REPO / "data" / "grids" / "phantom-mae.nc"),
            "simulated demo (default.nc)": load_grid(REPO / "data" / "grids" / "default.nc"),
            "simulated K = 8, 100 fit runs": benchmark_grid(0)}


def measure(grid, chains: int, warmup: int, draws: int) -> dict:
    reports = []

    def on_warmup(estimate):
        reports.append({**estimate, "at": time.perf_counter()})

    start = time.perf_counter()
    fit(grid, chains=chains, warmup=warmup, draws=draws, seed=0, extrapolation=False, on_warmup=on_warmup)
    end = time.perf_counter()
    (report,) = reports
    taken = end - report["at"]
    return {"warmup": report["warmup_seconds"], "estimated": report["estimated_seconds"], "taken": taken,
            "ratio": report["estimated_seconds"] / taken, "steps": report["steps_per_draw"], "total": end - start}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    rows = {name: measure(grid, args.chains, args.warmup, args.draws) for name, grid in grids().items()}
    load_after = os.getloadavg()[0]
    title = (f"fit's estimate after warm-up vs the draws' time, {args.chains} x ({args.warmup} + {args.draws}), "
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {load_before:.2f} / {load_after:.2f}")
    table = Table(title=title)
    for column in ("grid", "warm-up (s)", "estimated (s)", "draws took (s)", "estimated / took", "leapfrog steps per draw"):
        table.add_column(column)
    lines = [f"# {title}", "", "| grid | warm-up (s) | estimated (s) | draws took (s) | estimated / took | leapfrog steps per draw |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        cells = [name, f"{r['warmup']:.1f}", f"{r['estimated']:.1f}", f"{r['taken']:.1f}", f"{r['ratio']:.2f}", f"{r['steps']:.0f}"]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    ratios = [r["ratio"] for r in rows.values()]
    lines += ["", f"Median estimated / took: {statistics.median(ratios):.2f} (range {min(ratios):.2f}-{max(ratios):.2f}). "
              "'draws took' runs from the report to the end of fit (the draws, and the posterior's assembly). "
              "The load average before is the machine's; after, it includes the fits' own chains."]
    Console().print(table)
    print(lines[-1])
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
