"""Simulation-based calibration of the transfer-law fit over worlds drawn from the prior.

    .venv/bin/python benchmarks/bench_calibration.py [--worlds 100] [--domains 3] [--out DIR]

Each world: parameters and losses drawn from the model's prior (fixed loss scales, see
:mod:`bayescale.inference.sbc`), NUTS on its fit runs (``bayescale.inference.sbc.SAMPLER``), the rank of every true alpha, E, A, x0, sigma, T and beta
among 99 thinned draws, and the 50 % / 90 % predictive coverage of its held-out runs
(budgets above every fit budget). Finished worlds are saved one file each, so an
interrupted run resumes where it stopped. Prints one table: per quantity the chi-square
p-value of the rank histogram against uniform and the share of true values inside the
central 50 % / 90 % posterior intervals; then held-out coverage, worlds with divergences
and the worst r-hat.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from bayescale.inference import sbc
from bayescale.inference.sampling import ensure_host_devices

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    ensure_host_devices()  # parallel chains: before anything starts JAX
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", type=int, default=100)
    parser.add_argument("--domains", type=int, default=3)
    parser.add_argument("--law", default="transfer")
    parser.add_argument("--out", type=Path, default=None, help="folder of per-world results (default benchmarks/results/sbc-<law>-k<K>)")
    args = parser.parse_args()
    out = args.out or RESULTS / f"sbc-{args.law}-k{args.domains}"
    start = time.perf_counter()
    with Progress() as progress:
        task = progress.add_task("SBC worlds", total=args.worlds)
        results = sbc.run_sbc(args.worlds, out, domains=args.domains, law=args.law, **sbc.SAMPLER,
                              progress=lambda done, total: progress.update(task, completed=done))
    summary = sbc.summarise(results)
    table = Table(title=f"SBC: {summary['worlds']} prior worlds, K = {args.domains}, law {args.law} ({out})")
    for col in ("quantity", "ranks", "chi² p (uniform)", "inside 50 %", "inside 90 %", "rank histogram (10 bins)"):
        table.add_column(col)
    for name, q in summary["quantities"].items():
        table.add_row(name, str(q["n"]), f"{q['chi2_p']:.3f}", f"{q['inside_50']:.3f}", f"{q['inside_90']:.3f}", " ".join(map(str, q["histogram"])))
    console = Console()
    console.print(table)
    console.print(
        f"held-out predictive coverage: 50 % -> {summary['holdout_coverage_50']:.3f}, 90 % -> {summary['holdout_coverage_90']:.3f}; "
        f"worlds with divergences {summary['worlds_with_divergences']}/{summary['worlds']}; worst r-hat {summary['max_rhat']:.3f}; "
        f"wall time this call {time.perf_counter() - start:.0f} s"
    )


if __name__ == "__main__":
    main()
