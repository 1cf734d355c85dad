"""How the cost of a NUTS fit grows with the number of domains (a benchmark, not a test).

    .venv/bin/python benchmarks/bench_scaling.py [--domains 3 5 8 17 32] [--regmix] [--baseline-up-to 17]
        [--chains 4] [--warmup 500] [--draws 500] [--out-dir benchmarks/results/scaling] [--only-saved]

Each row fits the transfer law with ``bayescale.inference.fit.fit`` (no error past the data:
one fit, the sampler is what is measured) to a simulated world ``draw_world(K, seed=0)`` with
about 12 fit runs per domain (4 budgets x (K single-domain ladders + 2K Dirichlet mixtures)),
and, with ``--regmix``, to the RegMix grid (17 sources x 13 targets, 410 fit runs at one budget).
Settings: ``centred`` (``fit --centring auto``: partial centring from an SVI pilot and a dense
mass block over each target's level, scale, exponent and offset; ``bayescale.inference.reparam``)
and, up to ``--baseline-up-to`` domains (and for RegMix with ``--regmix-baseline``),
``non-centred`` (the default: every entry non-centred, a diagonal mass matrix).

Per row: wall time (pilot included, JAX compilation included: a user's refit pays it), gradient
evaluations (leapfrog steps, summed over chains), min bulk ESS over every parameter the
diagnostics cover (the law's and every ``mu_*``/``tau_*``), ESS per second and per 1,000
gradients (the machine-independent figure), max r-hat, divergences, and the load average before
and after. Rows are saved one JSON file each under ``--out-dir`` as they finish, so an
interrupted run resumes where it stopped; the summary (``summary.md``) adds the fitted growth
exponents of time and gradients in K (least squares on log-log).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from bayescale.inference.sampling import ensure_host_devices

ensure_host_devices()

import jax  # noqa: E402
import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bayescale.data import realgrids, simulate  # noqa: E402
from bayescale.inference.fit import fit  # noqa: E402
from bayescale.inference.posterior import diagnostics  # noqa: E402

SETTINGS = {
    "centred": {"centring": "auto", "dense_mass": None},  # fit --centring auto
    "non-centred": {"centring": "none", "dense_mass": None},  # fit's default (a diagonal mass matrix)
}


def world_grid(k: int):
    world = simulate.draw_world(k, seed=0)
    world.design = simulate.Design(fit_budgets=(8.0, 16.0, 32.0, 64.0), holdout_budgets=(128.0,), mixtures_per_budget=2 * k,
                                   holdout_mixtures_per_budget=3)
    return simulate.simulate_grid(world, seed=0)


def one_row(name: str, grid, setting: str, args) -> dict:
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    idata = fit(grid, chains=args.chains, warmup=args.warmup, draws=args.draws, seed=0, extrapolation=False,
                **SETTINGS[setting])
    wall = time.perf_counter() - t0
    diag = diagnostics(idata)
    steps = np.asarray(idata["sample_stats"]["n_steps"].values)
    grads = int(steps.sum())
    jax.clear_caches()
    return {
        "grid": name, "setting": setting, "sources": int(grid.sizes["source"]), "targets": int(grid.sizes["target"]),
        "fit_runs": int((grid["split"].values == "fit").sum()), "wall_s": wall, "gradients": grads,
        "steps_per_draw": float(steps.mean()), "min_ess_bulk": diag["min_ess_bulk"], "worst": diag["worst_ess_variable"],
        "max_rhat": diag["max_rhat"], "divergences": diag["divergences"], "ess_per_s": diag["min_ess_bulk"] / wall,
        "ess_per_1000_gradients": 1000 * diag["min_ess_bulk"] / grads, "ok": diag["ok"],
        "load_before": load_before, "load_after": os.getloadavg()[0],
        "chains": args.chains, "warmup": args.warmup, "draws": args.draws,
    }


def growth(rows: list[dict], key: str) -> float:
    """Least-squares exponent b of ``key ~ K^b`` over the simulated rows."""
    pts = [(r["sources"], r[key]) for r in rows if r["grid"].startswith("K=")]
    if len(pts) < 2:
        return float("nan")
    k, v = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(np.polyfit(k, v, 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", type=int, nargs="*", default=[3, 5, 8, 17, 32])
    parser.add_argument("--regmix", action="store_true", help="add the RegMix grid (needs ../shared/data)")
    parser.add_argument("--regmix-baseline", action="store_true", help="also the default (non-centred) sampler on RegMix (15+ minutes)")
    parser.add_argument("--baseline-up-to", type=int, default=17, help="also fit the default (non-centred) sampler up to this many domains")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--draws", type=int, default=500)
    parser.add_argument("--out-dir", type=Path, default=Path("benchmarks/results/scaling"))
    parser.add_argument("--only-saved", action="store_true", help="fit nothing: tabulate the saved rows")
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    console = Console()

    jobs = []
    for k in args.domains:
        jobs.append((f"K={k}", lambda k=k: world_grid(k), "centred"))
        if k <= args.baseline_up_to:
            jobs.append((f"K={k}", lambda k=k: world_grid(k), "non-centred"))
    if args.regmix:
        jobs.append(("RegMix", lambda: realgrids.regmix_grid(seed=0), "centred"))
        if args.regmix_baseline:
            jobs.append(("RegMix", lambda: realgrids.regmix_grid(seed=0), "non-centred"))
    rows = []
    for name, make_grid, setting in jobs:
        path = args.out_dir / f"{name.replace('=', '')}-{setting}.json"
        if path.exists():
            rows.append(json.loads(path.read_text()))
            continue
        if args.only_saved:
            continue
        console.print(f"fitting {name} ({setting}) ...", highlight=False)
        row = one_row(name, make_grid(), setting, args)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(row, indent=1))
        tmp.replace(path)
        rows.append(row)

    table = Table(title="NUTS cost against the number of domains")
    columns = ["grid", "sampler", "fit runs", "wall s", "gradients", "steps/draw", "min bulk ESS (worst)", "ESS/s",
               "ESS/1000 grad", "max r-hat", "div.", "load"]
    for c in columns:
        table.add_column(c, justify="left" if c in ("grid", "sampler", "min bulk ESS (worst)") else "right")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = [r["grid"], r["setting"], str(r["fit_runs"]), f"{r['wall_s']:.0f}", f"{r['gradients']:,}", f"{r['steps_per_draw']:.0f}",
                 f"{r['min_ess_bulk']:.0f} ({r['worst']})", f"{r['ess_per_s']:.2f}", f"{r['ess_per_1000_gradients']:.2f}",
                 f"{r['max_rhat']:.3f}", str(r["divergences"]), f"{r['load_before']:.1f} / {r['load_after']:.1f}"]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    console.print(table)
    exponents = {setting: {key: growth([r for r in rows if r["setting"] == setting], key) for key in ("wall_s", "gradients", "ess_per_s")}
                 for setting in SETTINGS}
    first = rows[0] if rows else {}
    notes = [
        *(f"- growth in K (simulated rows, {setting}): wall time ~ K^{e['wall_s']:.2f}, gradients ~ K^{e['gradients']:.2f}, "
          f"ESS/s ~ K^{e['ess_per_s']:.2f}" for setting, e in exponents.items()),
        f"- settings: {first.get('chains')} chains x ({first.get('warmup')} warm-up + {first.get('draws')} draws), target acceptance 0.98; "
        "wall time includes the SVI pilot and JAX compilation; load is the 1-minute load average before / after the fit "
        "(2 cores: a load above 2 means the fit shared the machine)",
        f"- machine: {os.cpu_count()} CPU cores, {jax.local_device_count()} XLA host devices, jax {jax.__version__}, Python {platform.python_version()}",
    ]
    for line in notes:
        console.print(line, highlight=False)
    (args.out_dir / "summary.md").write_text("# bench_scaling\n\n`benchmarks/bench_scaling.py " + " ".join(os.sys.argv[1:]) + "`\n\n"
                                             + "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n")


if __name__ == "__main__":
    main()
