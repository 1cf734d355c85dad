"""One real round of ``bayescale propose`` on the phantom domains, next to runs of the fixed design's kind.

    .venv/bin/python analyses/propose_round.py [--out out/propose-round] [--posterior demo-out/fit.nc]
        [--batch 6] [--max-run-budget 48] [--workers 2] [--smoke]

1. **fit** the shipped phantom grid with the demo's settings (``data/configs/demo.toml``), or reuse
   ``--posterior`` when it was fitted to that grid (``make demo`` leaves one in ``demo-out/fit.nc``);
2. **propose** ``--batch`` runs for the demo's decision (budget 144 volumes, ``cvar:0.9``, the demo's
   availability caps) from the auto candidates up to ``--max-run-budget`` volumes; and, at the same
   total cost, the **fixed** design's kind: one single-domain run per domain and one Dirichlet(1)
   mixture, all at the same budget (cost / 6 volumes, each single capped at its domain's pool). Both
   sets, the recommendation and its intervals are written to ``OUT/plan.json`` before any training;
3. **train** the 2 x ``--batch`` runs with the shipped recipe (``data/configs/phantom.toml``'s
   phantoms, data, model and training: the grid's config hash), ``OUT/train.toml`` (resumable);
4. **refit** the shipped grid plus each set (as fit runs) with the same settings, and **compare**
   the recommendation before and after: its shares and how far they moved (total variation), its
   objective, the 90 % interval of its weighted loss, how far the per-draw optima lie from it (the
   decision's own uncertainty), and the held-out check of the shipped grid's 12 held-out runs.
   Writes ``OUT/results.json`` and ``OUT/results.md``.

``--smoke`` is a plumbing check, not a result: 20 steps per run, batch 2 and short NUTS fits.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from analyses.closed_loop import DEFAULT_CONFIG, DEFAULT_TRAIN_CONFIG, REPO, train_config_text  # noqa: E402
from bayescale.errors import InputError  # noqa: E402
from bayescale.inference.sampling import ensure_host_devices  # noqa: E402

DEFAULT_OUT = REPO / "out" / "propose-round"
STRATEGIES = ("proposed", "fixed")
SMOKE = {"steps": 20, "batch": 2, "fit": {"chains": 2, "warmup": 200, "draws": 200}}
PLAN_FORMAT = "bayescale.propose_round.plan/1"


def settings_from(config_path: Path, smoke: bool) -> dict:
    import tomllib

    config = tomllib.loads(Path(config_path).read_text())
    alloc = config.get("allocate", {})
    fit_cfg = dict(config.get("fit", {}))
    if smoke:
        fit_cfg.update(SMOKE["fit"])
    grid = (Path(config_path).resolve().parent / config["grid"]).resolve()
    shown = str(grid.relative_to(REPO)) if grid.is_relative_to(REPO) else str(grid)
    return {"grid": shown, "fit": fit_cfg,
            "budget": float(alloc.get("budget", 144)), "objective": alloc.get("objective", "mean"),
            "caps": {k: float(v) for k, v in (alloc.get("available") or {}).items()} or None}


def posterior_for(grid, settings: dict, path: Path | None, out: Path, name: str, console):
    """A posterior of ``grid`` with the settings: ``path`` if it was fitted to this grid, else
    ``out/name`` if there, else a new NUTS fit saved there."""
    from bayescale.data.grid import grid_fingerprint
    from bayescale.inference.fit import fit
    from bayescale.inference.posterior import load_posterior, save_posterior

    for candidate in (path, out / name):
        if candidate is not None and Path(candidate).is_file():
            idata = load_posterior(candidate)
            if idata.attrs.get("grid_fingerprint") == grid_fingerprint(grid):
                console.print(f"[bold]fit[/] reusing {candidate}")
                return idata
    console.print(f"[bold]fit[/] NUTS, {settings['fit']} ...")
    t0 = time.perf_counter()
    idata = fit(grid, seed=0, progress=False, **settings["fit"])
    save_posterior(idata, out / name)
    console.print(f"fit done in {time.perf_counter() - t0:.0f}s -> {out / name}", highlight=False)
    return load_posterior(out / name)


def fixed_runs(sources, cost: float, n_runs: int, caps: dict | None, seed: int = 0) -> list[dict]:
    """The fixed design's kind at a total of ``cost`` volumes: a single-domain run per domain and
    Dirichlet(1) mixtures for the rest, all at one budget (whole volumes; a single capped at its pool)."""
    from bayescale.optimise.candidates import shares_to_amounts

    budget = max(1, int(round(cost / n_runs)))
    rng = np.random.default_rng([seed, 41])
    runs = []
    for k in range(n_runs):
        if k < len(sources):
            amount = min(budget, int((caps or {}).get(sources[k], budget)))
            data = {sources[k]: amount}
            name = f"fixed-{sources[k]}-n{amount}"
        else:
            counts = shares_to_amounts(rng.dirichlet(np.ones(len(sources))), budget, True)
            data = {s: int(c) for s, c in zip(sources, counts) if c > 0}
            name = f"fixed-mix{k - len(sources)}-n{budget}"
        runs.append({"id": name, "data": data, "seed": 1001 + k, "strategy": "fixed"})
    return runs


def decision_summary(draws, settings: dict) -> dict:
    """The recommendation at the demo's decision and how sure it is."""
    from bayescale.optimise.allocate import allocate

    result = allocate(draws, settings["budget"], objective=settings["objective"], upper=settings["caps"], baselines=False)
    total = sum(result.allocation.values())
    unc = result.decision_uncertainty
    return {"allocation": dict(result.allocation), "shares": {s: a / total for s, a in result.allocation.items()},
            "objective_value": result.objective_value,
            "predicted": {t: p.to_dict() for t, p in result.predicted.items()},
            "interval_width_mean": float(np.mean([(p.hi - p.lo) / p.mean for p in result.predicted.values()])),
            "per_draw_distance_median": None if unc is None or unc.distance_to_recommendation is None
            else unc.distance_to_recommendation.median}


def holdout_summary(draws, grid) -> dict:
    from bayescale.evaluate.check import check_holdout

    scores = check_holdout(draws, grid).scores
    return {k: scores[k] for k in ("n", "median_abs_rel_error", "pearson_r", "coverage_50", "coverage_90")}


def with_runs(shipped, measured, run_ids):
    """The shipped grid plus the measured runs ``run_ids`` as fit runs."""
    from bayescale.data import grid as grids

    new = measured.sel(run=list(run_ids))
    sources = [str(s) for s in shipped["source"].values]
    targets = [str(t) for t in shipped["target"].values]
    se = lambda g: g["loss_se"].transpose("run", "target").values if "loss_se" in g else np.full((g.sizes["run"], len(targets)), np.nan)  # noqa: E731
    combined = grids.make_grid(
        [str(r) for r in shipped["run"].values] + [str(r) for r in new["run"].values], sources, targets,
        np.vstack([shipped["data"].transpose("run", "source").values, new["data"].sel(source=sources).transpose("run", "source").values]),
        np.vstack([shipped["loss"].transpose("run", "target").values, new["loss"].sel(target=targets).transpose("run", "target").values]),
        seed=list(shipped["seed"].values) + list(new["seed"].values),
        split=list(shipped["split"].values) + ["fit"] * new.sizes["run"],
        loss_se=np.vstack([se(shipped), se(new.sel(target=targets))]),
        baseline_loss=shipped["baseline_loss"].values if "baseline_loss" in shipped else None, attrs=dict(shipped.attrs))
    return grids.validate_grid(combined, "shipped grid with the new runs")


def total_variation(a: dict, b: dict) -> float:
    return 0.5 * sum(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in set(a) | set(b))


def markdown(result: dict) -> str:
    before = result["before"]
    lines = [f"# One round of propose on the phantom domains ({result['date']})", "",
             f"Decision: {result['settings']['objective']} at {result['settings']['budget']:g} volumes. "
             f"Each set costs {result['cost']:g} volumes of training.", "",
             "| | recommendation (shares) | moved (TV) | objective | mean 90 % width / loss | per-draw optima: median TV | "
             "held-out median error | held-out 50 / 90 % |", "|---|---|---:|---:|---:|---:|---:|---|"]

    def row(label, d, h, moved):
        shares = ", ".join(f"{s} {100 * v:.0f} %" for s, v in d["shares"].items() if v > 0.005)
        dist = "-" if d["per_draw_distance_median"] is None else f"{d['per_draw_distance_median']:.3f}"
        return (f"| {label} | {shares} | {moved} | {d['objective_value']:.5f} | {100 * d['interval_width_mean']:.1f} % | {dist} | "
                f"{100 * h['median_abs_rel_error']:.2f} % | {100 * h['coverage_50']:.0f} / {100 * h['coverage_90']:.0f} % |")

    lines.append(row("before (shipped grid)", before, result["holdout_before"], "-"))
    for strategy in STRATEGIES:
        after = result["after"].get(strategy)
        if after:
            lines.append(row(f"after {strategy}", after["decision"], after["holdout"], f"{after['moved']:.3f}"))
    lines += ["", "| set | runs (volumes per domain) |", "|---|---|"]
    for strategy in STRATEGIES:
        runs = [r for r in result["runs"] if r["strategy"] == strategy]
        lines.append(f"| {strategy} | " + "; ".join(", ".join(f"{s} {v}" for s, v in r["data"].items()) for r in runs) + " |")
    lines += ["", f"Proposal: expected gain {result['proposal']['expected_gain']:.3g} ± {result['proposal']['expected_gain_se']:.2g} "
              f"in {result['settings']['objective']}; {result['proposal']['effective_draws']:.0f} effective draws."]
    lines += [f"- {note}" for note in result.get("notes", [])]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ensure_host_devices()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--train-config", type=Path, default=DEFAULT_TRAIN_CONFIG)
    parser.add_argument("--posterior", type=Path, default=None, help="a fit of the shipped grid to reuse (e.g. demo-out/fit.nc)")
    parser.add_argument("--batch", type=int, default=6)
    parser.add_argument("--max-run-budget", type=float, default=48.0)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--draws", type=int, default=None, help="draws per chain of the refits (default: the demo's)")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    from rich.console import Console

    from bayescale._files import write_text_atomic
    from bayescale.data import grid as grids
    from bayescale.inference.posterior import law_draws
    from bayescale.optimise.candidates import make_candidates
    from bayescale.optimise.propose import propose
    from trainers.run import train_grid

    console = Console() if sys.stdout.isatty() else Console(width=200)
    try:
        if args.batch < 1:
            raise InputError(f"--batch {args.batch}: at least 1")
        out = args.out or (REPO / "out" / "propose-round-smoke" if args.smoke else DEFAULT_OUT)
        out.mkdir(parents=True, exist_ok=True)
        settings = settings_from(args.config, args.smoke)
        if args.draws is not None:
            settings["fit"]["draws"] = args.draws
        batch = SMOKE["batch"] if args.smoke else args.batch
        shipped = grids.load_grid(REPO / settings["grid"])
        idata = posterior_for(shipped, settings, args.posterior, out, "fit.nc", console)
        draws = law_draws(idata)
        sources = list(draws.sources)

        plan_path = out / "plan.json"
        if plan_path.is_file():
            plan = json.loads(plan_path.read_text())
            console.print(f"[bold]plan[/] reusing {plan_path} (pre-registered)")
        else:
            pool = make_candidates(sources, shipped, max_run_budget=args.max_run_budget)
            proposal = propose(draws, settings["budget"], pool, batch=batch,
                               options={"objective": settings["objective"], "upper": settings["caps"]})
            runs = [{"id": f"proposed-{k}-{r.name}".replace("+", "-"), "data": {s: int(round(a)) for s, a in r.amounts.items()},
                     "seed": 1000 + k, "strategy": "proposed"} for k, r in enumerate(proposal.batch, start=1)]
            cost = float(sum(sum(r["data"].values()) for r in runs))
            runs += fixed_runs(sources, cost, batch, settings["caps"])
            plan = {"format": PLAN_FORMAT, "settings": settings, "proposal": proposal.to_dict(), "runs": runs, "cost": cost,
                    "before": decision_summary(draws, settings), "holdout_before": holdout_summary(draws, shipped)}
            write_text_atomic(plan_path, json.dumps(plan, indent=1) + "\n")
            console.print(f"[bold]plan[/] wrote {plan_path}: {len(runs)} runs, {cost:g} volumes per set")

        write_text_atomic(out / "train.toml", train_config_text(Path(args.train_config), plan["runs"], out,
                                                                steps=SMOKE["steps"] if args.smoke else None,
                                                                description="propose round: proposed and fixed runs"))
        trained = train_grid(out / "train.toml", out / "runs.nc", workers=args.workers, console=console, progress=not args.quiet)
        measured = grids.load_grid(trained.out)

        result = {"date": time.strftime("%Y-%m-%d"), "settings": plan["settings"], "proposal": plan["proposal"],
                  "runs": plan["runs"], "cost": plan["cost"], "before": plan["before"],
                  "holdout_before": plan["holdout_before"], "after": {}, "notes": []}
        if args.smoke:
            result["notes"].append("--smoke: 20 steps per run and short fits; a plumbing check, not a result")
        for strategy in STRATEGIES:
            ids = [r["id"] for r in plan["runs"] if r["strategy"] == strategy]
            grid = with_runs(shipped, measured, ids)
            after_draws = law_draws(posterior_for(grid, settings, None, out, f"fit-{strategy}.nc", console))
            decision = decision_summary(after_draws, settings)
            result["after"][strategy] = {"decision": decision, "holdout": holdout_summary(after_draws, grid),
                                         "moved": total_variation(decision["shares"], plan["before"]["shares"])}
        write_text_atomic(out / "results.json", json.dumps(result, indent=1) + "\n")
        write_text_atomic(out / "results.md", markdown(result))
        console.print(markdown(result), highlight=False, markup=False)
        return 0
    except InputError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 2


if __name__ == "__main__":
    sys.exit(main())
