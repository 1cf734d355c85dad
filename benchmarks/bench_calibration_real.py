"""Do the intervals hold where users live? Every law family and the stack on every real grid in reach.

    .venv/bin/python benchmarks/bench_calibration_real.py [--cases phantom closed-loop openlm sim regmix]
        [--laws transfer linear independent bend interference stack] [--chains 2 --warmup 400 --draws 400] [--force]

Cases (each: fit on its fit runs, predict its held-out runs):

- ``phantom``: the shipped grid ``data/grids/phantom-mae.nc``, its held-out runs (32-48 volumes);
- ``closed-loop``: every run of the shipped grid fitted, the closed loop's 9 trained runs
  (144 volumes, 3 allocations x 3 seeds, ``analyses/results/closed-loop/results.json``) predicted;
- ``openlm``: each of the 12 OpenLM grids (runs at >= 16x Chinchilla tokens held out), and
  the 12 pooled;
- ``sim``: simulated worlds *outside* the family (K = 3): curves that steepen past a break,
  a saturating world (curves flatten past a break), and noise shared by a run's targets;
- ``regmix``: RegMix's 512 fixed-budget runs, a seeded random fifth held out, against
  RegMix's own predictor (LightGBM on the mixture weights) and the mixing law. Slow with NUTS
  (17 sources x 13 targets): opt in, e.g. ``--cases regmix --method svi --laws transfer bend mixing
  --out benchmarks/results/calibration-regmix`` (a law without SVI, the mixing law, is fitted with
  its own method, NUTS, and its row says so).

Prints one table: case, law, held-out cells, median |relative error|, pooled r, median
per-target r and Spearman rho, 50 % / 90 % coverage with 95 % cluster-bootstrap intervals
(runs resampled), mean relative width of the 90 % interval, and the KS p-value of the PIT.
Each (case, law) is saved as it finishes (``benchmarks/results/calibration-real/``) with the SBC's
hash of the transfer model that fitted it: an interrupted run resumes, a result of an older model is
refitted; ``--force`` refits.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import jax
import numpy as np
import xarray as xr

from bayescale import laws
from bayescale._files import read_saved, write_text_atomic
from bayescale.data import grid as grids
from bayescale.data import realgrids, simulate
from bayescale.evaluate.calibration import point_scores, real_grid_scores
from bayescale.evaluate.check import holdout_predictions
from bayescale.inference.fit import fit, fit_stack
from bayescale.inference.posterior import diagnostics, law_draws, load_posterior, save_posterior
from bayescale.inference import sbc
from bayescale.inference.sampling import ensure_host_devices
from bayescale.laws.transfer import TransferFamily

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "calibration-real"
LAWS = ("transfer", "linear", "independent", "bend", "interference", "stack")
CASES = ("phantom", "closed-loop", "openlm", "sim")


def closed_loop_grid() -> xr.Dataset:
    """The shipped grid (every run fitted) plus the closed loop's trained runs as held out."""
    shipped = grids.load_grid(ROOT / "data" / "grids" / "phantom-mae.nc")
    result = json.loads((ROOT / "analyses" / "results" / "closed-loop" / "results.json").read_text())
    sources, targets = [str(s) for s in shipped["source"].values], [str(t) for t in shipped["target"].values]
    runs, data, loss, seeds = [], [], [], []
    by_strategy: dict[str, dict[int, dict[str, float]]] = {}
    for row in result["comparison"]["rows"]:
        for seed, value in row["measured"].items():
            by_strategy.setdefault(row["strategy"], {}).setdefault(int(seed), {})[row["target"]] = value
    for strategy, per_seed in by_strategy.items():
        allocation = result["allocations"][strategy]
        for seed, values in sorted(per_seed.items()):
            runs.append(f"closed-loop-{strategy}-s{seed}")
            data.append([float(allocation.get(s, 0.0)) for s in sources])
            loss.append([values.get(t, np.nan) for t in targets])
            seeds.append(seed)
    shipped_loss_se = shipped["loss_se"].transpose("run", "target").values
    combined = grids.make_grid(
        [str(r) for r in shipped["run"].values] + runs, sources, targets,
        np.vstack([shipped["data"].transpose("run", "source").values, np.array(data)]),
        np.vstack([shipped["loss"].transpose("run", "target").values, np.array(loss)]),
        seed=list(shipped["seed"].values) + seeds,
        split=["fit"] * shipped.sizes["run"] + ["holdout"] * len(runs),
        loss_se=np.vstack([shipped_loss_se, np.full((len(runs), len(targets)), np.nan)]),
        baseline_loss=shipped["baseline_loss"].values,
        attrs=dict(shipped.attrs),
    )
    return grids.validate_grid(combined, "closed-loop grid")


def simulated_grids() -> dict[str, xr.Dataset]:
    """Worlds outside the law's family (one seed each; the fit never sees their mechanism)."""
    out = {}
    for name, change, seed in (("sim:steepens", {"broken": (1.0, 1.8)}, 11), ("sim:saturates", {"broken": (1.0, 0.4)}, 12),
                               ("sim:run-noise", {"run_sigma": 0.04}, 13)):
        world = simulate.draw_world(3, seed=seed)
        for key, value in change.items():
            setattr(world, key, value)
        out[name] = simulate.simulate_grid(world, seed=seed)
    return out


def cases(selected) -> dict[str, xr.Dataset]:
    out = {}
    if "phantom" in selected:
        out["phantom"] = grids.load_grid(ROOT / "data" / "grids" / "phantom-mae.nc")
    if "closed-loop" in selected:
        out["closed-loop"] = closed_loop_grid()
    if "openlm" in selected:
        for (corpus, model), grid in realgrids.openlm_grids().items():
            out[f"openlm:{corpus}/{model}"] = grid
    if "sim" in selected:
        out.update(simulated_grids())
    if "regmix" in selected:
        out["regmix"] = realgrids.regmix_grid(holdout_fraction=0.2, seed=0)
    return out


def stem_and_settings(name: str, law: str, settings: dict, grid: xr.Dataset) -> tuple[str, dict]:
    """The file stem of a (case, law) result and the settings it is saved under.

    The settings carry the grid's fingerprint: a retrained grid (the phantom grid, the closed loop's
    runs) is refitted, not served from a result of the grid it replaced.
    """
    stem = name.replace(":", "__").replace("/", "_") + f"__{law}"
    settings = {**settings, "grid": grids.grid_fingerprint(grid)}
    family = laws.get(law)
    if settings.get("method", "nuts") not in family.methods:  # e.g. the mixing law has NUTS only
        settings = {**settings, "method": family.methods[0]}
    if family.members:
        settings = {**settings, "members": list(family.members)}  # a stack of other members is another result
    if isinstance(family, TransferFamily):  # every family but the mixing law runs the transfer model:
        settings = {**settings, "model": sbc.model_hash("transfer")}  # a result of an older model is refitted
    return stem, settings


def saved(name: str, law: str, settings: dict, folder: Path, grid: xr.Dataset) -> bool:
    stem, settings = stem_and_settings(name, law, settings, grid)
    return read_saved(folder / f"{stem}.json", settings, folder / f"{stem}.nc") is not None


def run_case(name: str, grid: xr.Dataset, law: str, settings: dict, folder: Path, force: bool) -> tuple[dict, xr.Dataset]:
    family = laws.get(law)
    stem, settings = stem_and_settings(name, law, settings, grid)
    fit_settings = {k: v for k, v in settings.items() if k not in ("members", "model", "grid")}
    json_path, pred_path = folder / f"{stem}.json", folder / f"{stem}.nc"
    if not force and (saved := read_saved(json_path, settings, pred_path)) is not None:
        return saved, xr.load_dataset(pred_path)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if family.members:  # reuse the members' fits of this run (the same grid and settings)
            case = stem.rsplit("__", 1)[0]
            member_settings = {k: v for k, v in settings.items() if k != "members"}  # the model hash kept
            fitted = {m: load_posterior(folder / f"{case}__{m}.posterior.nc") for m in family.members
                      if read_saved(folder / f"{case}__{m}.json", member_settings, folder / f"{case}__{m}.posterior.nc") is not None}
            idata = fit_stack(grids.validate_grid(grid, name), family, grid_name=name, fitted=fitted, **fit_settings)
        else:
            idata = fit(grid, law=law, grid_name=name, **fit_settings)
    seconds = time.perf_counter() - start
    pred = holdout_predictions(law_draws(idata), grid, where=name)
    # Every fit compiles anew; without this, LLVM runs out of mappable memory after ~30 fits
    # in one process (measured: a segfault in the OpenLM grids).
    jax.clear_caches()
    row = {"case": name, "law": law, "settings": settings, "seconds": seconds, "diagnostics": diagnostics(idata),
           **real_grid_scores(pred)}
    if "extrapolation" in idata.attrs:
        row["extrapolation"] = json.loads(idata.attrs["extrapolation"])
    for key in ("stack_weights", "stack_split"):
        if key in idata.attrs:
            row[key] = json.loads(idata.attrs[key])
    folder.mkdir(parents=True, exist_ok=True)
    if not family.members:
        save_posterior(idata, folder / f"{stem}.posterior.nc")  # for the stack of this case (not committed)
    pred.to_netcdf(pred_path)
    write_text_atomic(json_path, json.dumps(row, indent=1, default=float))
    return row, pred


def pooled(name: str, law: str, preds: list[xr.Dataset]) -> dict:
    """One row over several grids' held-out cells (runs renamed apart, targets kept)."""
    parts = [p.assign_coords(run=[f"{i}:{r}" for r in p["run"].values]) for i, p in enumerate(preds)]
    pred = xr.concat(parts, dim="run", join="outer")
    return {"case": name, "law": law, **real_grid_scores(pred)}


def lightgbm_row(grid: xr.Dataset) -> dict:
    """RegMix's own predictor: one LightGBM regressor per target on the mixture weights (their paper's setup)."""
    import lightgbm as lgb

    fit_runs, held = grids.select_split(grid, "fit"), grids.select_split(grid, "holdout")
    X = fit_runs["data"].values / fit_runs["data"].values.sum(axis=1, keepdims=True)
    Xh = held["data"].values / held["data"].values.sum(axis=1, keepdims=True)
    pred = np.empty(held["loss"].shape)
    params = {"objective": "regression", "learning_rate": 0.01, "num_leaves": 15, "min_data_in_leaf": 10, "verbose": -1, "seed": 0}
    for j in range(grid.sizes["target"]):
        model = lgb.train(params, lgb.Dataset(X, fit_runs["loss"].values[:, j]), num_boost_round=1000)
        pred[:, j] = model.predict(Xh)
    return {"case": "regmix", "law": "lightgbm (RegMix)", **point_scores(held["loss"].values, pred)}


def law_label(row: dict) -> str:
    """The row's law, with its method where it is not NUTS (an SVI row carries the guide's Pareto k-hat)."""
    method = (row.get("settings") or {}).get("method", "nuts")
    if method == "svi":
        khat = (row.get("diagnostics") or {}).get("psis_khat")
        return f"{row['law']} (SVI, k̂ {khat:.1f})" if khat is not None else f"{row['law']} (SVI)"
    return row["law"]


def markdown(rows: list[dict]) -> str:
    """The table as markdown (``summary.md`` beside ``summary.json``)."""
    def f(value, fmt):
        return "—" if value is None or (isinstance(value, float) and not np.isfinite(value)) else format(value, fmt)

    def cover(row, level):
        c = row.get(f"coverage_{level}")
        return "—" if c is None else f"{c['coverage']:.2f} [{c['lo']:.2f}, {c['hi']:.2f}]"

    lines = ["| case | law | cells | median \\|rel. err\\| | r | r per target | Spearman per target | 50 % coverage | 90 % coverage | 90 % width | PIT KS p |",
             "|---|---|---:|---:|---:|---:|---:|---|---|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['case']} | {law_label(row)} | {row['cells']} | {f(row['median_abs_rel_error'], '.2%')} | {f(row['pearson_r'], '.3f')} | "
                     f"{f(row.get('per_target_r'), '.3f')} | {f(row.get('per_target_spearman'), '.3f')} | {cover(row, 50)} | {cover(row, 90)} | "
                     f"{f(row.get('width_90'), '.1%')} | {f(row.get('pit_ks_p'), '.2g')} |")
    return "\n".join(lines) + "\n"


def print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Held-out calibration on real grids (coverage: 95 % cluster-bootstrap interval over runs)")
    for col in ("case", "law", "cells", "med |rel err|", "r", "r/target", "ρ/target", "50 % cover", "90 % cover", "90 % width", "PIT KS p", "fit s"):
        table.add_column(col)

    def cover(row, level):
        c = row.get(f"coverage_{level}")
        return "—" if c is None else f"{c['coverage']:.2f} [{c['lo']:.2f}, {c['hi']:.2f}]"

    def f(value, fmt):
        return "—" if value is None or (isinstance(value, float) and not np.isfinite(value)) else format(value, fmt)

    for row in rows:
        table.add_row(row["case"], law_label(row), str(row["cells"]), f(row["median_abs_rel_error"], ".2%"), f(row["pearson_r"], ".3f"),
                      f(row.get("per_target_r"), ".3f"), f(row.get("per_target_spearman"), ".3f"), cover(row, 50), cover(row, 90),
                      f(row.get("width_90"), ".2%"), f(row.get("pit_ks_p"), ".2g"), f(row.get("seconds"), ".0f"))
    Console(width=200).print(table)


def main(argv=None) -> int:
    ensure_host_devices()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES + ("regmix",))
    parser.add_argument("--laws", nargs="+", default=list(LAWS))
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=400)
    parser.add_argument("--draws", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--method", default="nuts", choices=("nuts", "svi"),
                        help="svi: the fast approximation (RegMix's 17 x 13 grid; issue 15 makes NUTS scale)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--no-extrapolation", action="store_true",
                        help="fit without the law's error past the fit runs' data (bayescale.inference.extrapolation)")
    parser.add_argument("--only-saved", action="store_true", help="tabulate the saved results of the cases and laws asked for; fit nothing")
    args = parser.parse_args(argv)
    settings = {"chains": args.chains, "warmup": args.warmup, "draws": args.draws, "seed": args.seed,
                "extrapolation": not args.no_extrapolation}
    if args.method != "nuts":
        settings["method"] = args.method
    rows, by_law = [], {}
    for name, grid in cases(args.cases).items():
        for law in args.laws:
            if args.only_saved and not saved(name, law, settings, args.out, grid):
                continue
            print(f"{name} · {law} ...", file=sys.stderr, flush=True)
            row, pred = run_case(name, grid, law, settings, args.out, args.force)
            rows.append(row)
            if name.startswith("openlm:"):
                by_law.setdefault(law, []).append(pred)
        if name == "regmix":
            rows.append(lightgbm_row(grid))
    for law, preds in by_law.items():
        rows.append(pooled(f"openlm ({len(preds)} grids pooled)", law, preds))
    write_text_atomic(args.out / "summary.json", json.dumps(rows, indent=1, default=float))
    write_text_atomic(args.out / "summary.md", markdown(rows))
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
