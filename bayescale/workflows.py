"""Workflows that chain the layers below: the demo, the report of a posterior, the held-out
check with its refit, and JSON output.

``run_demo`` is what ``bayescale demo`` (and ``make demo``) runs on the shipped default;
each finished stage's file is kept, so an interrupted demo resumes where it stopped.

Where an allocation is built from a grid (the demo, the report), the independent law is fitted
to the same grid with the main fit's sampler settings (:func:`fit_unaware`), so the value of
transfer is measured against the fair transfer-unaware baseline: the optimum someone using
independent per-domain scaling laws would choose, judged under the transfer posterior.
"""

from __future__ import annotations

import dataclasses
import json
import time
import tomllib
from pathlib import Path

import xarray as xr
from rich.console import Console

from bayescale import laws
from bayescale._files import write_text_atomic
from bayescale.data import grid as grids
from bayescale.data.grid import grid_fingerprint
from bayescale.errors import InputError
from bayescale.evaluate.check import (
    check_holdout,
    checked,
    coverage_curve,
    extrapolation_by_law,
    holdout_predictions,
    score_posterior,
    split_at_budget,
)
from bayescale.evaluate.compare import loo_summary
from bayescale.evaluate.hubs import hub_island_table
from bayescale.inference.fit import fit
from bayescale.inference.posterior import diagnostics, law_draws, load_posterior, require_amounts, save_posterior
from bayescale.optimise.allocate import allocate
from bayescale.optimise.candidates import make_candidates
from bayescale.optimise.propose import propose
from bayescale.records import plain
from bayescale.render.report import write_report
from bayescale.render.text import (
    allocation_table,
    format_check,
    format_diagnostics,
    format_extrapolation,
    format_grid_summary,
    value_of_transfer_text,
)

REPO_DATA = Path(__file__).resolve().parent.parent / "data"
DEFAULT_CONFIG = REPO_DATA / "configs" / "demo.toml"


def load_demo_config(path: Path = DEFAULT_CONFIG) -> dict:
    if not path.is_file():
        raise InputError(f"{path}: demo config not found (run from a checkout of bayescale)")
    with path.open("rb") as fh:
        config = tomllib.load(fh)
    config["grid"] = str((path.parent / config["grid"]).resolve())
    return config


def default_budget(grid: xr.Dataset) -> float:
    """Twice the largest fit budget: a decision beyond what the grid has trained."""
    budgets = grids.run_budgets(grids.select_split(grid, "fit"))
    return float(2 * budgets.max())


def path_budgets(budget: float) -> list[float]:
    """Budgets of the allocation path the report draws: from an eighth of the budget to a quarter above it."""
    return [budget * f for f in (0.125, 0.25, 0.5, 0.75, 1.0, 1.25)]


#: Fitting methods the independent law's fit copies from the main fit (any other, e.g. a stack's, means NUTS).
SAMPLER_METHODS = ("nuts", "svi")


def sampler_settings(idata) -> dict:
    """The settings of the fit that made ``idata``, as far as the posterior records them: chains and
    draws (its shape), likelihood, method (NUTS unless it was SVI) and seed. Warmup is not recorded;
    the fit's default applies."""
    post = idata["posterior"]
    attrs = idata.attrs
    method = str(attrs.get("method", "nuts"))
    settings = {"chains": int(post.sizes["chain"]), "draws": int(post.sizes["draw"]),
                "likelihood": str(attrs.get("likelihood", "normal")), "seed": int(attrs.get("seed", 0)),
                "method": method if method in SAMPLER_METHODS else "nuts"}
    if settings["method"] == "svi" and "svi_steps" in attrs:
        settings["svi_steps"] = int(attrs["svi_steps"])
    return settings


def fit_unaware(idata, grid: xr.Dataset, *, grid_name: str = "", progress: bool = False, **settings):
    """The independent law fitted to ``grid`` with the settings of ``idata``'s fit (``settings`` override
    them): the posterior the fair transfer-unaware baseline solves under. A posterior of the
    independent law is its own."""
    if str(idata.attrs.get("law", "transfer")) == "independent":
        return idata
    # Only its expected loss is used (allocations judged under the transfer posterior): no error past the data.
    options = {**sampler_settings(idata), "extrapolation": False, **settings}
    family = laws.get("independent")
    if options.get("likelihood") not in family.likelihoods:
        options["likelihood"] = "normal"
    return fit(grid, law="independent", progress=progress, grid_name=grid_name, **options)


def same_domains(idata, grid: xr.Dataset, where: str) -> None:
    """The grid has the posterior's sources and targets (in its order), or a one-line error naming it."""
    for what in ("source", "target"):
        mine = [str(x) for x in idata["posterior"][what].values]
        theirs = [str(x) for x in grid[what].values]
        if mine != theirs:
            raise InputError(f"{where}: its {what}s ({', '.join(theirs)}) are not the posterior's ({', '.join(mine)}); "
                             f"the transfer-unaware baseline fits the independent law to the grid the posterior was fitted to")


def check_unaware_posterior(unaware, idata, parameter: str = "unaware") -> None:
    """``unaware`` must be a posterior of the independent law fitted to the grid ``idata`` was fitted to
    (when both record it), with data in the same units; else a one-line error about ``parameter``."""
    law = str(unaware.attrs.get("law", "transfer"))
    if law != "independent":
        raise InputError(f"{parameter}: is a posterior of the {law} law; the transfer-unaware baseline needs the "
                         "independent law fitted to the same grid (bayescale fit GRID --law independent)", parameter=parameter)
    for what in ("source", "target"):
        mine = [str(x) for x in idata["posterior"][what].values]
        theirs = [str(x) for x in unaware["posterior"][what].values]
        if mine != theirs:
            raise InputError(f"{parameter}: its {what}s ({', '.join(theirs)}) are not the posterior's ({', '.join(mine)}); "
                             "fit the independent law to the same grid", parameter=parameter)
    mine, theirs = idata.attrs.get("grid_fingerprint"), unaware.attrs.get("grid_fingerprint")
    if mine and theirs and mine != theirs:
        raise InputError(f"{parameter}: was fitted to another grid than the posterior (grid fingerprints {theirs} and "
                         f"{mine}); fit the independent law to the same grid", parameter=parameter)
    mine, theirs = idata.attrs.get("data_unit"), unaware.attrs.get("data_unit")
    if mine and theirs and mine != theirs:
        raise InputError(f"{parameter}: measures data in {theirs}, the posterior in {mine}", parameter=parameter)


def report_for(idata, grid: xr.Dataset, out: Path, *, budget: float | None = None, allocation: dict | None = None,
               grid_name: str = "", objective: str = "mean", upper: dict | None = None, diag: dict | None = None,
               unaware=None, progress=None) -> Path:
    """Compute what the report shows (allocation and its path, hubs, held-out predictions and
    calibration, diagnostics and LOO) and write it.

    Without ``allocation`` one is computed, its transfer-unaware baseline under ``unaware`` (a
    posterior of the independent law fitted to ``grid``); without that, the independent law is
    fitted here with ``idata``'s sampler settings (:func:`fit_unaware`; ``progress(message)`` is
    told first)."""
    if Path(out).exists() and not Path(out).is_dir():
        raise InputError(f"out: {out} exists and is not a folder (the report is a folder of HTML and PNG files)", parameter="out")
    draws = require_amounts(law_draws(idata), "the report")
    holdout = scores = None  # first: it refuses a grid the posterior does not fit before any sampling
    if "split" in grid.coords and (grid["split"] == "holdout").any():
        holdout = holdout_predictions(draws, grid, where=grid_name or "grid")
        scores = checked(holdout)
    if allocation is None:
        budget = budget or default_budget(grid)
        if unaware is None:
            same_domains(idata, grid, grid_name or "grid")
            if progress is not None:
                progress("fitting the independent law to the same grid (the transfer-unaware baseline) ...")
            unaware = fit_unaware(idata, grid, grid_name=grid_name)
        check_unaware_posterior(unaware, idata)
        allocation = allocate(draws, budget, objective=objective, upper=upper, budgets=path_budgets(budget),
                              unaware=law_draws(unaware))
    # A law without transfer (independent) has no hubs or islands to find.
    hubs = hub_island_table(idata) if laws.of_draws(draws).transfer else None
    diag = diag if diag is not None else diagnostics(idata)
    return write_report(
        out, idata=idata, grid=grid, allocation=allocation, holdout=holdout, scores=scores,
        diagnostics=diag, hubs=hubs, loo=loo_summary(idata),
        proposal=proposal_for(draws, grid, allocation, upper=upper, diagnostics=diag),
    )


#: Runs the report proposes to train next.
REPORT_BATCH = 6


def proposal_for(draws, grid: xr.Dataset, allocation, *, upper: dict | None = None, diagnostics: dict | None = None):
    """The report's "what to train next": ``bayescale propose`` at the allocation's budget and objective
    over the auto candidates, or a one-line reason why there is none."""
    if allocation.get("mode") == "min_budget":
        return "No runs were proposed: the least-budget allocation has no objective for a run to improve."
    try:
        pool = make_candidates(draws.sources, grid)
        return propose(draws, float(allocation["budget"]), pool, batch=REPORT_BATCH,
                       options={"objective": allocation["objective"], "upper": upper}, diagnostics=diagnostics)
    except InputError as exc:
        return f"No runs were proposed: {exc}"


def run_demo(out: Path, *, grid: Path | None = None, seed: int = 0, console=None, config_path: Path = DEFAULT_CONFIG) -> dict:
    """Fit, allocate, check and report on the shipped grid; returns the summary it prints."""
    console = console or Console()
    config = load_demo_config(config_path)
    grid_path = Path(grid) if grid else Path(config["grid"])
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"out: {out} exists and is not a folder", parameter="out")
    ds = grids.load_grid(grid_path)  # before the output folder exists: a bad grid leaves nothing behind
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    console.rule("bayescale demo")
    console.print(format_grid_summary(grids.grid_summary(ds)), highlight=False)

    fit_cfg = config.get("fit", {})
    fit_path = out / "fit.nc"
    t0 = time.perf_counter()
    idata = _reuse_fit(fit_path, ds, fit_cfg, seed)
    if idata is None:
        console.print(f"[bold]fit[/] NUTS, {fit_cfg.get('chains', 4)} chains in parallel…")
        idata = fit(ds, seed=seed, progress=True, grid_name=str(grid_path), **fit_cfg)
        save_posterior(idata, fit_path)
    else:
        console.print(f"[bold]fit[/] reusing {fit_path} (same grid, same settings)")
    timings["fit"] = time.perf_counter() - t0
    diag = diagnostics(idata)
    console.print("diagnostics: " + format_diagnostics(diag), highlight=False)
    if "extrapolation" in idata.attrs:
        console.print("past the data: " + format_extrapolation(json.loads(idata.attrs["extrapolation"]), idata.attrs.get("data_unit", "")),
                      highlight=False)
    if not diag["ok"]:
        console.print("[bold red]WARNING: sampler diagnostics are bad; intervals are not to be trusted[/]")
    draws = law_draws(idata)

    # The fair transfer-unaware baseline: the independent law fitted to the same grid, same settings.
    unaware_cfg = {**fit_cfg, "law": "independent", "extrapolation": False}  # its expected loss is all that is used
    unaware_path = out / "unaware.nc"
    t0 = time.perf_counter()
    unaware = idata if fit_cfg.get("law", "transfer") == "independent" else _reuse_fit(unaware_path, ds, unaware_cfg, seed)
    if unaware is idata:
        console.print("[bold]fit[/] the main fit is of the independent law: it is its own transfer-unaware baseline")
    elif unaware is None:
        console.print("[bold]fit[/] the independent law (no transfer) to the same grid, for the transfer-unaware baseline…")
        unaware = fit(ds, seed=seed, progress=True, grid_name=str(grid_path), **unaware_cfg)
        save_posterior(unaware, unaware_path)
    else:
        console.print(f"[bold]fit[/] reusing {unaware_path} (same grid, same settings)")
    if unaware is not idata:
        console.print("diagnostics of the independent law: " + format_diagnostics(diagnostics(unaware)), highlight=False)
    timings["fit_unaware"] = time.perf_counter() - t0

    alloc_cfg = config.get("allocate", {})
    t0 = time.perf_counter()
    budget = float(alloc_cfg.get("budget", default_budget(ds)))
    objective = alloc_cfg.get("objective", "mean")
    upper = alloc_cfg.get("available") or None
    allocation = allocate(draws, budget, objective=objective, upper=upper, weights=alloc_cfg.get("weights"),
                          budgets=path_budgets(budget), unaware=law_draws(unaware))
    write_json(out / "allocation.json", allocation.to_dict())
    timings["allocate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    scores = check_holdout(draws, ds, where=str(grid_path))
    write_json(out / "check.json", scores)
    timings["check"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    report_path = report_for(idata, ds, out, allocation=allocation, grid_name=str(grid_path), diag=diag, upper=upper)
    timings["report"] = time.perf_counter() - t0

    table = allocation_table(allocation, budget, str(ds.attrs.get("data_unit", "units")), objective)
    console.print(table)
    console.print(value_of_transfer_text(allocation), highlight=False, markup=False)
    console.print(format_check(scores), highlight=False)
    if scores["calibration"]["verdict"] != "ok":
        console.print(f"[bold red]warning:[/] {scores['calibration']['message']}", highlight=False)
    console.print("stage times: " + " · ".join(f"{k} {v:.1f}s" for k, v in timings.items()), highlight=False)
    fits = "fit.nc" if unaware is idata else "fit.nc unaware.nc"
    console.print(f"outputs in {out}/: {fits} allocation.json check.json {report_path.name}", highlight=False)
    return {"diagnostics": diag, "allocation": allocation, "check": scores, "timings": timings, "report": str(report_path)}


def _reuse_fit(path: Path, ds: xr.Dataset, fit_cfg: dict, seed: int):
    """A finished fit of this very grid with these settings, or None (then the stage reruns)."""
    if not path.is_file():
        return None
    try:
        idata = load_posterior(path)
    except InputError:
        return None
    attrs = idata.attrs
    same = (
        attrs.get("grid_fingerprint") == grid_fingerprint(ds)
        and int(attrs.get("seed", -1)) == seed
        and attrs.get("law") == fit_cfg.get("law", "transfer")
    )
    post = idata["posterior"]
    same = same and post.sizes["chain"] == fit_cfg.get("chains", 4) and post.sizes["draw"] == fit_cfg.get("draws", 500)
    same = same and ("extrapolation" in attrs) == bool(fit_cfg.get("extrapolation", True))  # calibrated past the data, or not
    return idata if same else None


def write_json(path: Path, payload) -> None:
    """Write a result as indented JSON, atomically; typed results (at any depth) are written by their ``to_dict()``."""
    write_text_atomic(path, json.dumps(plain(payload), indent=2) + "\n")


def fitted_to(idata, grid: xr.Dataset) -> bool:
    """Was this posterior fitted to this very grid (same runs, domains, data and losses)?"""
    return idata.attrs.get("grid_fingerprint") == grid_fingerprint(grid)


def check_with_refit(idata, grid: xr.Dataset, *, cut: float | None = None, families: list[tuple[str, str]] | None = None,
                     chains: int = 4, warmup: int = 500, draws: int = 500, seed: int = 0, where: str = "grid",
                     progress=None) -> tuple[xr.Dataset, dict]:
    """Score a posterior on the grid's held-out runs, refitting where the question needs it.

    ``cut``: refit the posterior's own law and likelihood on the runs with budget <= ``cut``
    and score the runs above it (ignoring the grid's split). ``families``: also fit these
    (law, likelihood) pairs on the same split and tabulate how each extrapolates
    (``scores["laws"]``); the given posterior stands in for its own family when it was fitted on
    this very split, so it is not fitted twice. ``progress(message)`` is told of each refit.
    Returns the held-out predictions and the scores with a coverage curve.
    """
    fit_options = {"chains": chains, "warmup": warmup, "draws": draws}
    own = (str(idata.attrs.get("law", "transfer")), str(idata.attrs.get("likelihood", "normal")))
    same_split = fitted_to(idata, grid)
    if cut is not None:
        grid = split_at_budget(grid, cut, where)
        if progress is not None:
            progress(f"refitting the {own[0]} law on the {int((grid['split'] == 'fit').sum())} runs with budget <= {cut:g} ...")
        idata = fit(grid, law=own[0], likelihood=own[1], seed=seed, grid_name=where, **fit_options)
        same_split = True
    pred, result = score_posterior(idata, grid, where=where)
    rows = None
    if families is not None:
        rows = extrapolation_by_law(
            grid, families, fit_options=fit_options, seed=seed, where=where,
            fitted={own: idata} if same_split else None,
            progress=None if progress is None else (lambda law, lik: progress(f"fitting the {law} law ({lik} likelihood) ...")),
        )
    return pred, dataclasses.replace(result, coverage_curve=coverage_curve(pred), holdout_above=cut, laws=rows)


def check(posterior, grid: xr.Dataset, *, cut: float | None = None, families: list[tuple[str, str]] | None = None,
          chains: int = 4, warmup: int = 500, draws: int = 500, seed: int = 0, where: str = "grid") -> dict:
    """The held-out scores of a posterior (a DataTree, or a path to one) on ``grid``: Pearson r,
    median |relative error|, 50 % / 90 % coverage, the calibration verdict and the coverage curve;
    see :func:`check_with_refit` for ``cut`` and ``families``."""
    idata = load_posterior(posterior) if isinstance(posterior, (str, Path)) else posterior
    return check_with_refit(idata, grid, cut=cut, families=families, chains=chains, warmup=warmup, draws=draws, seed=seed,
                            where=where)[1]
