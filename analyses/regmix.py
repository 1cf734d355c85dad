"""The exponential data mixing law on RegMix's 512 fixed-budget runs: held-out prediction.

    .venv/bin/python analyses/regmix.py [--out DIR] [--chains 2 --warmup 500 --draws 500] [--seed 0] [--force]

Reads the published RegMix 1M-parameter runs (``$BAYESCALE_SHARED_DATA/regmix-1m`` or
``../shared/data/regmix-1m``; exits 0 with a message when absent), holds out a seeded
random 20 % of the runs, fits L_j(r) = c_j + k_j exp(sum_i t_ij r_i) with NUTS
(:mod:`bayescale.laws.mixing`) to the rest, and scores its predictions of the held-out runs
(Pearson r, median |relative error|, 50 % / 90 % coverage), overall and per target,
against two baselines: the fit runs' mean loss per target, and RegMix's own linear
regression of loss on the mixture weights (least squares per target).

Writes ``DIR/regmix_scores.json``, ``DIR/regmix_predictions.nc`` (the held-out
predictions) and ``DIR/regmix_holdout.png``. A rerun with the same settings reuses the
saved predictions (``--force`` refits).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import xarray as xr

from bayescale.laws import mixing
from bayescale.inference.sampling import ensure_host_devices
from bayescale.data import realgrids
from bayescale.evaluate.check import holdout_predictions, score_by_target, score_predictions
from bayescale.inference.fit import fit
from bayescale.inference.posterior import diagnostics


def baselines(grid: xr.Dataset) -> dict:
    """Scores of two point predictors of the held-out runs: per-target mean of the fit
    runs, and a least-squares linear regression of loss on the mixture weights."""
    fit = grid.isel(run=np.flatnonzero(grid["split"].values == "fit"))
    held = grid.isel(run=np.flatnonzero(grid["split"].values == "holdout"))
    observed = held["loss"].values
    mean_pred = np.broadcast_to(fit["loss"].mean("run").values, observed.shape)
    r_fit = mixing.proportions(fit["data"].values)
    r_held = mixing.proportions(held["data"].values)
    # weights sum to 1, so the weights themselves span the intercept
    coef, *_ = np.linalg.lstsq(r_fit, fit["loss"].values, rcond=None)
    linear_pred = r_held @ coef

    def score(pred):
        return {
            "pearson_r": float(np.corrcoef(pred.ravel(), observed.ravel())[0, 1]),
            "median_abs_rel_error": float(np.median(np.abs(pred - observed) / observed)),
        }

    return {"fit_mean": score(mean_pred), "linear_regression": score(linear_pred)}


def run(out: Path, *, chains: int, warmup: int, draws: int, seed: int, force: bool) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    settings = {"chains": chains, "warmup": warmup, "draws": draws, "seed": seed, "holdout_fraction": 0.2}
    grid = realgrids.regmix_grid(seed=seed)
    scores_path, pred_path = out / "regmix_scores.json", out / "regmix_predictions.nc"
    if not force and scores_path.is_file() and pred_path.is_file():
        saved = json.loads(scores_path.read_text())
        if saved.get("settings") == settings:
            print(f"reusing {scores_path} (same settings; --force refits)")
            return saved | {"predictions": xr.load_dataset(pred_path)}
    start = time.perf_counter()
    idata = fit(grid, law="mixing", chains=chains, warmup=warmup, draws=draws, seed=seed, target_accept=0.9, grid_name="regmix-1m")
    seconds = time.perf_counter() - start
    draws_ = mixing.mixing_draws(idata)
    pred = holdout_predictions(draws_, grid, seed=seed)
    result = {
        "settings": settings,
        "runs": {"fit": int((grid["split"] == "fit").sum()), "holdout": int((grid["split"] == "holdout").sum())},
        "sources": int(grid.sizes["source"]),
        "targets": int(grid.sizes["target"]),
        "nuts_seconds": round(seconds, 1),
        "diagnostics": diagnostics(idata),
        "scores": score_predictions(pred).to_dict(),
        "by_target": {target: s.to_dict() for target, s in score_by_target(pred).items()},
        "baselines": baselines(grid),
        "posterior_median": {
            "c": dict(zip(draws_.targets, np.median(draws_.c, axis=0).round(4).tolist())),
            "k": dict(zip(draws_.targets, np.median(draws_.k, axis=0).round(4).tolist())),
            "sigma": dict(zip(draws_.targets, np.median(draws_.sigma, axis=0).round(4).tolist())),
        },
    }
    pred.to_netcdf(pred_path)
    scores_path.write_text(json.dumps(result, indent=2))
    return result | {"predictions": pred}


def print_table(result: dict) -> None:
    s, d = result["scores"], result["diagnostics"]
    print(f"RegMix 1M: {result['runs']['fit']} fit / {result['runs']['holdout']} held-out runs, "
          f"{result['sources']} sources, {result['targets']} targets")
    print(f"NUTS {result['nuts_seconds']:.0f} s, max r-hat {d['max_rhat']:.3f}, min bulk ESS {d['min_ess_bulk']:.0f}, "
          f"divergences {d['divergences']}")
    print(f"{'target':<20} {'r':>6} {'med|rel|':>9} {'cov50':>6} {'cov90':>6}")
    for target, row in result["by_target"].items():
        print(f"{target:<20} {row['pearson_r']:>6.3f} {row['median_abs_rel_error']:>9.3f} "
              f"{row['coverage_50']:>6.2f} {row['coverage_90']:>6.2f}")
    print(f"{'all (n=' + str(s['n']) + ')':<20} {s['pearson_r']:>6.3f} {s['median_abs_rel_error']:>9.3f} "
          f"{s['coverage_50']:>6.2f} {s['coverage_90']:>6.2f}")
    for name, row in result["baselines"].items():
        print(f"{'baseline ' + name:<28} r {row['pearson_r']:.3f}, med|rel| {row['median_abs_rel_error']:.3f}")


def figure(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pred = result["predictions"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 5.2), gridspec_kw={"width_ratios": [1.1, 1]})
    colors = plt.get_cmap("tab20")(np.linspace(0, 1, pred.sizes["target"]))
    for j, target in enumerate(pred["target"].values):
        p = pred.sel(target=target)
        ax.errorbar(p["observed"], p["median"], yerr=[p["median"] - p["lo90"], p["hi90"] - p["median"]], fmt="o", ms=2.5,
                    lw=0.5, alpha=0.6, color=colors[j], label=str(target))
    lo, hi = float(pred["observed"].min()), float(pred["observed"].max())
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    s = result["scores"]
    ax.set(xlabel="observed held-out loss", ylabel="predicted (median, 90 % interval)",
           title=f"mixing law, held-out runs: r {s['pearson_r']:.3f}, 90 % cov {s['coverage_90']:.0%}")
    ax.legend(fontsize=6, ncol=2, loc="upper left")
    targets = list(result["by_target"])
    x = np.arange(len(targets))
    bx.bar(x - 0.2, [result["by_target"][t]["median_abs_rel_error"] for t in targets], 0.4, label="median |rel. error|")
    bx.bar(x + 0.2, [result["by_target"][t]["coverage_90"] for t in targets], 0.4, label="90 % coverage")
    bx.axhline(0.9, color="k", lw=0.6, ls=":")
    bx.set_xticks(x, targets, rotation=60, ha="right", fontsize=7)
    bx.set(title="per target")
    bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv=None) -> int:
    ensure_host_devices()  # parallel chains: before anything starts JAX
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/regmix"))
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--draws", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="refit even if saved results with the same settings exist")
    args = parser.parse_args(argv)
    folder = realgrids.shared_data_dir()
    if folder is None or not (folder / realgrids.REGMIX_FOLDER).is_dir():
        print(f"RegMix data not found (set ${realgrids.DATA_ENV} or provide ../shared/data/{realgrids.REGMIX_FOLDER}); "
              "nothing to do")
        return 0
    result = run(args.out, chains=args.chains, warmup=args.warmup, draws=args.draws, seed=args.seed, force=args.force)
    print_table(result)
    figure(result, args.out / "regmix_holdout.png")
    print(f"wrote {args.out / 'regmix_scores.json'}, {args.out / 'regmix_predictions.nc'}, {args.out / 'regmix_holdout.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
