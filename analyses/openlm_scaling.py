"""The transfer scaling law on the OpenLM scaling runs (Gadre et al. 2024): extrapolation
to over-trained models, per training corpus and model size.

    .venv/bin/python analyses/openlm_scaling.py [--out DIR] [--chains 2 --warmup 500 --draws 500]
        [--holdout-from 16] [--only CORPUS/MODEL ...] [--force]

Reads the published runs (``$BAYESCALE_SHARED_DATA/openlm-scaling`` or
``../shared/data/openlm-scaling``; exits 0 with a message when absent). For each (corpus,
model size) with enough runs it builds a loss grid (:func:`bayescale.data.realgrids.openlm_grid`:
one source, the corpus, with data in billions of training tokens; 8 validation sets as
targets; ``loss_se`` from the published 95 % intervals), fits the transfer law with NUTS on
the runs below ``--holdout-from`` x the Chinchilla-optimal tokens, and scores its
predictions of the over-trained runs (Pearson r, median |relative error|, 50 % / 90 %
coverage). The baseline ``last`` predicts each held-out loss by the loss of the most-trained
fit run (no extrapolation at all), so its error is what the law has to beat.

Resumable: each (corpus, model) writes ``DIR/fits/<corpus>__<model>.json`` and ``.nc`` (its
held-out predictions); a rerun with the same settings reuses them (``--force`` refits).
Writes ``DIR/openlm_scores.json`` and ``DIR/openlm_holdout.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import xarray as xr

from bayescale._files import read_saved
from bayescale.data import realgrids
from bayescale.evaluate.check import holdout_predictions, score_predictions
from bayescale.inference.fit import fit
from bayescale.inference.posterior import diagnostics, law_draws
from bayescale.inference.sampling import ensure_host_devices


def last_run_baseline(grid: xr.Dataset) -> float:
    """Median |relative error| of predicting every held-out loss by the most-trained fit run's."""
    fit_runs = grid.isel(run=np.flatnonzero(grid["split"].values == "fit"))
    held = grid.isel(run=np.flatnonzero(grid["split"].values == "holdout"))
    last = fit_runs["loss"].isel(run=int(np.argmax(fit_runs["data"].sum("source").values))).values
    observed = held["loss"].values
    return float(np.nanmedian(np.abs(last[None, :] - observed) / observed))


def fit_one(grid: xr.Dataset, key: tuple[str, str], folder: Path, settings: dict, force: bool) -> tuple[dict, xr.Dataset]:
    stem = f"{key[0]}__{key[1]}"
    json_path, pred_path = folder / f"{stem}.json", folder / f"{stem}.nc"
    if not force and (saved := read_saved(json_path, settings, pred_path)) is not None:
        return saved, xr.load_dataset(pred_path)
    start = time.perf_counter()
    idata = fit(grid, chains=settings["chains"], warmup=settings["warmup"], draws=settings["draws"], seed=settings["seed"],
                grid_name=f"openlm:{key[0]}/{key[1]}")
    seconds = time.perf_counter() - start
    draws = law_draws(idata)
    pred = holdout_predictions(draws, grid, seed=settings["seed"])
    diag = diagnostics(idata)
    row = {
        "settings": settings,
        "corpus": key[0],
        "model": key[1],
        "params": int(grid.attrs["params"]),
        "fit_runs": int((grid["split"] == "fit").sum()),
        "holdout_runs": int((grid["split"] == "holdout").sum()),
        "holdout_multipliers": sorted(float(m) for m in grid["chinchilla_multiplier"].values[grid["split"].values == "holdout"]),
        "scores": score_predictions(pred).to_dict(),
        "baseline_last_median_abs_rel_error": last_run_baseline(grid),
        "nuts_seconds": round(seconds, 1),
        "max_rhat": diag["max_rhat"],
        "min_ess_bulk": diag["min_ess_bulk"],
        "divergences": diag["divergences"],
    }
    pred = pred.assign_coords(corpus=("run", grid["corpus"].sel(run=pred["run"]).values.astype(str)))
    pred.to_netcdf(pred_path)
    json_path.write_text(json.dumps(row, indent=2))
    return row, pred


def print_table(rows: list[dict]) -> None:
    print(f"{'corpus':<12} {'model':<16} {'params':>7} {'fit/ho':>6} {'r':>6} {'med|rel|':>9} {'last':>6} "
          f"{'cov50':>6} {'cov90':>6} {'r-hat':>6} {'div':>4} {'sec':>5}")
    for row in rows:
        s = row["scores"]
        print(f"{row['corpus']:<12} {row['model']:<16} {row['params'] / 1e6:>6.0f}M "
              f"{row['fit_runs']:>2}/{row['holdout_runs']:<3} "
              f"{s['pearson_r']:>6.3f} {s['median_abs_rel_error']:>9.4f} {row['baseline_last_median_abs_rel_error']:>6.3f} "
              f"{s['coverage_50']:>6.2f} {s['coverage_90']:>6.2f} {row['max_rhat']:>6.3f} {row['divergences']:>4} "
              f"{row['nuts_seconds']:>5.0f}")
    cov50 = np.mean([r["scores"]["coverage_50"] for r in rows])
    cov90 = np.mean([r["scores"]["coverage_90"] for r in rows])
    rel = np.median([r["scores"]["median_abs_rel_error"] for r in rows])
    base = np.median([r["baseline_last_median_abs_rel_error"] for r in rows])
    print(f"over {len(rows)} grids: mean coverage 50 % {cov50:.2f}, 90 % {cov90:.2f}; median of median |rel. error| {rel:.4f} "
          f"(last-run baseline {base:.3f})")


def by_validation_set(preds: list[xr.Dataset]) -> dict[str, dict]:
    """Held-out scores per validation set, pooled over all (corpus, model) grids, with the
    median signed error of log loss (> 0: the law predicts too high a loss)."""
    out = {}
    for target in dict.fromkeys(str(t) for p in preds for t in p["target"].values):
        cells = [p.sel(target=[target]) for p in preds if target in p["target"].values]
        obs = np.concatenate([c["observed"].values.ravel() for c in cells])
        ok = np.isfinite(obs)

        def pooled(name):
            return np.concatenate([c[name].values.ravel() for c in cells])[ok]

        o, med = obs[ok], pooled("median")
        out[target] = {
            "n": int(ok.sum()),
            "median_abs_rel_error": float(np.median(np.abs(med - o) / o)),
            "median_log_bias": float(np.median(np.log(med) - np.log(o))),
            "coverage_50": float(np.mean((pooled("lo50") <= o) & (o <= pooled("hi50")))),
            "coverage_90": float(np.mean((pooled("lo90") <= o) & (o <= pooled("hi90")))),
        }
    return out


def print_by_validation_set(table: dict[str, dict]) -> None:
    print(f"{'validation set (all grids)':<38} {'n':>3} {'med|rel|':>9} {'bias':>7} {'cov50':>6} {'cov90':>6}")
    for target, row in table.items():
        print(f"{target:<38} {row['n']:>3} {row['median_abs_rel_error']:>9.4f} {row['median_log_bias']:>+7.3f} "
              f"{row['coverage_50']:>6.2f} {row['coverage_90']:>6.2f}")


def figure(rows: list[dict], preds: list[xr.Dataset], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 4.4), squeeze=False)
    colors = {"c4_original": "tab:blue", "rpj": "tab:orange", "rw_original": "tab:green"}
    for ax, model in zip(axes[0], models):
        for row, pred in zip(rows, preds):
            if row["model"] != model:
                continue
            obs, med = pred["observed"].values.ravel(), pred["median"].values.ravel()
            yerr = [med - pred["lo90"].values.ravel(), pred["hi90"].values.ravel() - med]
            ax.errorbar(obs, med, yerr=yerr, fmt="o", ms=3, lw=0.7, alpha=0.8, color=colors.get(row["corpus"], "k"),
                        label=f"{row['corpus']} (r {row['scores']['pearson_r']:.3f}, cov90 {row['scores']['coverage_90']:.0%})")
        lims = ax.get_xlim()
        ax.plot(lims, lims, "k--", lw=0.7)
        ax.set(title=model, xlabel="observed held-out loss (nats/token)")
        ax.legend(fontsize=7, loc="upper left")
    axes[0][0].set_ylabel("predicted: median, 90 % interval")
    fig.suptitle("OpenLM scaling: transfer law fit below the held-out multiplier, predicting over-trained runs", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv=None) -> int:
    ensure_host_devices()  # parallel chains: before anything starts JAX
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/openlm"))
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--draws", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--holdout-from", type=float, default=16.0, help="hold out runs at >= this Chinchilla multiplier")
    parser.add_argument("--only", nargs="*", default=None, help="CORPUS/MODEL pairs to fit (default: all)")
    parser.add_argument("--force", action="store_true", help="refit even where saved results with the same settings exist")
    args = parser.parse_args(argv)
    folder = realgrids.shared_data_dir()
    if folder is None or not (folder / realgrids.OPENLM_FOLDER).is_dir():
        print(f"OpenLM data not found (set ${realgrids.DATA_ENV} or provide ../shared/data/{realgrids.OPENLM_FOLDER}); "
              "nothing to do")
        return 0
    grids = realgrids.openlm_grids(folder / realgrids.OPENLM_FOLDER, holdout_from=args.holdout_from)
    if args.only:
        wanted = {tuple(item.split("/", 1)) for item in args.only}
        grids = {k: v for k, v in grids.items() if k in wanted}
    fits = args.out / "fits"
    fits.mkdir(parents=True, exist_ok=True)
    settings = {"chains": args.chains, "warmup": args.warmup, "draws": args.draws, "seed": args.seed,
                "holdout_from": args.holdout_from}
    rows, preds = [], []
    for key, grid in grids.items():
        row, pred = fit_one(grid, key, fits, settings, args.force)
        rows.append(row)
        preds.append(pred)
        s = row["scores"]
        print(f"  {key[0]}/{key[1]}: r {s['pearson_r']:.3f}, med|rel| {s['median_abs_rel_error']:.4f}, "
              f"cov50 {s['coverage_50']:.2f}, cov90 {s['coverage_90']:.2f} ({row['nuts_seconds']:.0f} s)", flush=True)
    print_table(rows)
    targets = by_validation_set(preds)
    print_by_validation_set(targets)
    (args.out / "openlm_scores.json").write_text(json.dumps({"grids": rows, "by_validation_set": targets}, indent=2))
    figure(rows, preds, args.out / "openlm_holdout.png")
    print(f"wrote {args.out / 'openlm_scores.json'} and {args.out / 'openlm_holdout.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
