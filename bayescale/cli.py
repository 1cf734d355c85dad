"""The ``bayescale`` command line: a thin layer over the Python API.

Every command maps to a function a user can call from a notebook; this module only
parses flags, calls it, prints, and turns :class:`InputError` into one line on stderr
with exit status 2.

This module is long because it declares every command's flags and help (typer
annotations), one function per command; the work itself happens in the layers below.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from bayescale.errors import InputError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Bayesian transfer scaling laws and risk-aware data allocation.")
grid_app = typer.Typer(no_args_is_help=True, help="Inspect loss grids.")
app.add_typer(grid_app, name="grid")
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


# Library errors name the Python parameter (``upper: ...``); the command line names its flag.
# A parameter not listed here is the flag spelled with dashes (``target_accept`` -> ``--target-accept``).
FLAG_NAMES = {"upper": "--max", "lower": "--min", "costs": "--cost", "groups": "--group", "allocation": "--alloc",
              "cut": "--holdout-above", "families": "--laws", "baselines": "--no-baselines"}


class _Flags(dict):
    def __missing__(self, parameter: str) -> str:
        return "--" + parameter.replace("_", "-")

    def __contains__(self, parameter) -> bool:
        return True


FLAGS = _Flags(FLAG_NAMES)


# Allocation options that allocate and propose share (the decision propose scores is allocate's).
WeightsOption = Annotated[Optional[str], typer.Option("--weights", help="Target weights, e.g. ct=2,pet=1 (default 1 each).")]
NormaliseOption = Annotated[bool, typer.Option("--normalise", help="Divide each target's loss by its posterior-mean loss at the uniform split.")]
CostOption = Annotated[Optional[str], typer.Option("--cost", help="Cost per data unit of a source, e.g. pet=3 (default 1).")]
MaxOption = Annotated[Optional[str], typer.Option("--max", help="Available data per source, e.g. ct=400,pet=80.")]
MinOption = Annotated[Optional[str], typer.Option("--min", help="Least data per source, e.g. pet=10.")]
FixedOption = Annotated[Optional[str], typer.Option("--fixed", help="Sources held at an amount, e.g. mri_t1_brain=40.")]


def exits_cleanly(fn):
    """Run a command; bad input becomes one line on stderr and exit status 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except InputError as exc:
            # escape: a message may quote TOML tables ("[training]"), which rich would take for markup and drop
            err_console.print(f"[bold red]error:[/] {escape(exc.naming(FLAGS))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("[bold red]interrupted[/]: finished outputs are kept; nothing half-written was left behind")
            sampling = sys.modules.get("bayescale.inference.sampling")
            if sampling is not None and sampling.computation_abandoned():
                # A sampler is still running in XLA; a normal shutdown under it aborts the process.
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(130)
            raise typer.Exit(130) from None
        finally:
            console.file = None  # back to whatever sys.stdout is (--json - moved it to stderr)

    return wrapper


def parse_mapping(text: str | None, flag: str) -> dict[str, float]:
    """``"ct=100,mri=50"`` -> {"ct": 100.0, "mri": 50.0}; a malformed entry names the flag."""
    if not text:
        return {}
    out: dict[str, float] = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise InputError(f"{flag}: expected name=value pairs separated by commas, got {item!r}")
        try:
            number = float(value)
        except ValueError:
            raise InputError(f"{flag}: value for {name!r} is {value.strip()!r}, not a number") from None
        if not math.isfinite(number):
            raise InputError(f"{flag}: value for {name!r} must be finite, got {value.strip()}")
        if name in out:
            raise InputError(f"{flag}: domain {name!r} is given twice")
        out[name] = number
    return out


def refuse_overwrite_of_input(out: Path, *inputs: Path) -> None:
    from bayescale._files import check_writable

    check_writable(out, "--out")  # before any work: an hour of sampling must not end in "is a directory"
    for path in inputs:
        if path is not None and out.resolve() == Path(path).resolve():
            raise InputError(f"--out {out} would overwrite the input file")


def load_unaware(path: Path, idata):
    """The posterior of ``--unaware``: of the independent law, fitted to the grid of ``idata``; else one line naming the flag."""
    from bayescale.inference.posterior import load_posterior
    from bayescale.workflows import check_unaware_posterior

    try:
        unaware = load_posterior(path)
    except InputError as exc:
        raise InputError(f"--unaware {exc}") from None
    check_unaware_posterior(unaware, idata)  # names the parameter "unaware": the command line says --unaware
    return unaware


def write_json(path: Path, payload) -> None:
    """Write a command's JSON result to ``path``; ``-`` puts it on stdout, alone: the command's
    table goes to stderr instead, so ``--json - | jq`` reads nothing else."""
    from bayescale.workflows import plain, write_json as write

    if str(path) != "-":
        write(path, payload)
        return
    console.file = sys.stderr  # undone when the command ends (exits_cleanly)
    sys.stdout.write(json.dumps(plain(payload), indent=2) + "\n")
    sys.stdout.flush()


@grid_app.command("info")
@exits_cleanly
def grid_info(grid: Annotated[Path, typer.Argument(help="Loss grid (.nc or .csv).")]):
    """Print a grid's domains, runs, budgets and splits."""
    from bayescale.data.grid import grid_summary, load_grid
    from bayescale.render.text import format_grid_summary

    console.print(format_grid_summary(grid_summary(load_grid(grid))), highlight=False)


@grid_app.command("ladders")
@exits_cleanly
def grid_ladders(
    grid: Annotated[Path, typer.Argument(help="Loss grid (.nc or .csv).")],
    top_ratio: Annotated[float, typer.Option("--top-ratio", help="Goal: each ladder's top rung at most this fraction of the baseline loss.")] = 0.75,
    max_spread: Annotated[float, typer.Option("--max-spread", help="Goal: seed-to-seed relative sd of every rung's loss at most this.")] = 0.02,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the goals check as JSON (- for stdout, the table then on stderr).")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 unless every ladder meets every goal (monotone included).")] = False,
):
    """Do the models learn? Each domain's own-data ladder against the grid's baseline (loss / baseline, seed spread, monotone)."""
    from bayescale.data.grid import load_grid
    from bayescale.data.ladders import LadderGoals, ladder_goals, own_domain_ladders
    from bayescale.render.text import format_ladders

    if not 0 < top_ratio:
        raise InputError(f"--top-ratio {top_ratio}: expected a positive fraction of the baseline")
    if not 0 <= max_spread:
        raise InputError(f"--max-spread {max_spread}: expected a non-negative relative sd")
    ladders = own_domain_ladders(load_grid(grid))
    goals = ladder_goals(ladders, LadderGoals(top_ratio=top_ratio, max_spread=max_spread))
    if json_out:
        write_json(json_out, goals)
    console.print(format_ladders(ladders, goals), highlight=False)
    if strict and not goals["all_met"]:
        raise typer.Exit(1)


@app.command()
@exits_cleanly
def simulate(
    out: Annotated[Path, typer.Option("--out", help="Where to write the simulated grid (.nc).")],
    domains: Annotated[int, typer.Option("--domains", help="Number of domains K (ignored with --world).")] = 5,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the world's parameters and of the noise.")] = 0,
    world: Annotated[Optional[Path], typer.Option("--world", help="World TOML with parameters and design.")] = None,
):
    """Simulate a grid from a world with known parameters (stored in the grid's attrs)."""
    from bayescale.data.grid import grid_summary, save_grid
    from bayescale.render.text import format_grid_summary
    from bayescale.data.simulate import draw_world, load_world, simulate_grid

    w = load_world(world, seed=seed) if world else draw_world(domains, seed=seed)
    ds = simulate_grid(w, seed=seed)
    save_grid(ds, out)
    console.print(f"wrote {out}", highlight=False)
    console.print(format_grid_summary(grid_summary(ds)), highlight=False)


@app.command()
@exits_cleanly
def fit(
    grid: Annotated[Path, typer.Argument(help="Loss grid (.nc or .csv).")],
    out: Annotated[Optional[Path], typer.Option("--out", help="Where to write the posterior (.nc); with --prior-only, the check as JSON.")] = None,
    law: Annotated[str, typer.Option("--law", help="A registered law family: transfer | linear | independent | bend (curves may steepen past a break) | interference (other domains' data may raise a loss) | stack (Bayesian stacking of transfer, linear, independent and bend on leave-future-out scores) | mixing (the exponential mixing law, for grids at one fixed budget).")] = "transfer",
    likelihood: Annotated[str, typer.Option("--likelihood", help="normal | student_t (heavy tails for outlier runs)")] = "normal",
    method: Annotated[str, typer.Option("--method", help="nuts | svi (fast, approximate) | auto (SVI where its guide passes the Pareto k-hat check, else NUTS)")] = "nuts",
    chains: Annotated[int, typer.Option("--chains")] = 4,
    warmup: Annotated[int, typer.Option("--warmup")] = 500,
    draws: Annotated[int, typer.Option("--draws")] = 1000,
    svi_steps: Annotated[int, typer.Option("--svi-steps", help="Optimisation steps for --method svi.")] = 5000,
    target_accept: Annotated[float, typer.Option("--target-accept", help="NUTS target acceptance; raise it if there are divergences.")] = 0.98,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 unless the posterior passes its diagnostics. NUTS: r-hat <= 1.01, no divergences and bulk ESS >= 400 over the law's parameters and the hierarchy's mu_*, tau_* (and nu); SVI: Pareto k-hat of the guide <= 0.7.")] = False,
    prior_only: Annotated[bool, typer.Option("--prior-only", help="Prior predictive check only: do the priors cover the observed losses?")] = False,
    extrapolation: Annotated[bool, typer.Option("--extrapolation/--no-extrapolation", help="Also fit the law to the smaller fit budgets and score it on the larger ones, to calibrate its error past the fit runs' data (slope_error; widens every prediction beyond the largest fitted total). About twice the time of one fit.")] = True,
    centring: Annotated[str, typer.Option("--centring", help="none: every hierarchical entry non-centred (the default) | auto: centre each entry as far as a short SVI pilot says the data inform it, with a dense mass block over each target's level, scale, exponent and offset (try it when NUTS hits its tree depth: 1023 steps per draw).")] = "none",
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars and, after each NUTS warm-up, about how long its draws will take.")] = True,
):
    """Fit the hierarchical transfer law to the grid's fit runs (NUTS, or SVI as a fast approximation)."""
    from bayescale.inference.fit import fit as fit_law
    from bayescale.inference.fit import prior_predictive
    from bayescale.data.grid import load_grid
    from bayescale.inference.posterior import diagnostics, save_posterior
    from bayescale.render.text import format_diagnostics, format_extrapolation, format_sampling_estimate

    if out is None and not prior_only:
        raise InputError("--out is required (where to write the posterior)")
    if out is not None:
        refuse_overwrite_of_input(out, grid)
    ds = load_grid(grid)
    if prior_only:
        check = prior_predictive(ds, law=law, likelihood=likelihood, draws=draws, seed=seed, grid_name=str(grid))
        console.print(f"prior predictive check ({law} law, {draws} draws) at the grid's fit runs:", highlight=False)
        console.print(f"{'target':<20} {'observed min..max':>22} {'prior 5%..95%':>22} {'obs inside 90%':>15}", highlight=False)
        for name, row in check["targets"].items():
            o, p = row["observed"], row["prior_predictive"]
            console.print(
                f"{name:<20} {o['min']:>10.4g}..{o['max']:<10.4g} {p['q05']:>10.4g}..{p['q95']:<10.4g} {row['observed_inside_90']:>14.0%}",
                highlight=False,
            )
        if out is not None:
            write_json(out, check)
        return
    def report_warmup(estimate: dict) -> None:  # printed at once, between warm-up and the draws
        err_console.print(format_sampling_estimate(estimate), highlight=False)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        idata = fit_law(
            ds, law=law, likelihood=likelihood, method=method, chains=chains, warmup=warmup, draws=draws,
            svi_steps=svi_steps, target_accept=target_accept, seed=seed, progress=progress, grid_name=str(grid),
            extrapolation=extrapolation, centring=centring, on_warmup=report_warmup if progress else None,
        )
    for w in caught:
        if issubclass(w.category, UserWarning) and "bayescale" in str(w.filename):
            err_console.print(f"[yellow]warning:[/] {w.message}", highlight=False)
    save_posterior(idata, out)
    diag = diagnostics(idata)
    console.print(f"wrote {out}  ({law} law, {likelihood} likelihood, {idata.attrs.get('method', method)})", highlight=False)
    if idata.attrs.get("method_choice"):
        console.print(f"method: {idata.attrs['method_choice']}", highlight=False)
    console.print("diagnostics: " + format_diagnostics(diag), highlight=False)
    if "extrapolation" in idata.attrs:
        console.print("past the data: " + format_extrapolation(json.loads(idata.attrs["extrapolation"]), idata.attrs.get("data_unit", "")),
                      highlight=False)
    if diag["approximate"]:
        err_console.print("[bold yellow]NOTE: SVI gives an approximate posterior[/]; its intervals are not NUTS intervals.", highlight=False)
        if not diag["ok"]:
            err_console.print(
                f"[bold red]WARNING: the SVI guide fails its check[/] (PSIS k-hat "
                f"{'not computed' if math.isnan(diag['psis_khat']) else format(diag['psis_khat'], '.2f')}, want <= "
                f"{diag['khat_limit']:g}): importance sampling from it is unreliable, so are its intervals; refit with --method nuts.",
                highlight=False,
            )
            if strict:
                raise typer.Exit(1)
    elif not diag["ok"]:
        err_console.print(
            "[bold red]WARNING: the sampler did not converge cleanly[/] (want r-hat <= 1.01, no divergences, bulk ESS >= 400); "
            "do not trust these intervals — rerun with more --warmup/--draws or check the grid.",
            highlight=False,
        )
        if strict:
            raise typer.Exit(1)


@app.command()
@exits_cleanly
def compare(
    posteriors: Annotated[list[Path], typer.Argument(help="Two or more posteriors of the same grid.")],
    grid: Annotated[Optional[Path], typer.Option("--grid", help="The grid, to add each fit's held-out score.")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the table as JSON (- for stdout, the table then on stderr).")] = None,
):
    """Compare fits by PSIS-LOO (with Pareto-k warnings) and, given --grid, by their held-out score."""
    from bayescale.evaluate.compare import compare_fits
    from bayescale.data.grid import load_grid
    from bayescale.inference.posterior import load_posterior

    fits = {str(p): load_posterior(p) for p in posteriors}
    rows = compare_fits(fits, load_grid(grid) if grid else None)
    if json_out:
        write_json(json_out, {"fits": rows})
    console.print(
        f"{'fit':<28} {'law':<12} {'elpd_loo':>10} {'se':>7} {'Δelpd':>8} {'p_loo':>7} {'k>0.7':>6} {'r':>7} {'cov90':>6}",
        highlight=False,
    )
    for row in rows:
        held = row.get("holdout") or {}
        console.print(
            f"{Path(row['fit']).name:<28} {row['law']:<12} {row['elpd_loo']:>10.1f} {row['se']:>7.1f} {row['elpd_diff']:>8.1f} "
            f"{row['p_loo']:>7.1f} {row['pareto_k_bad']:>6d} {held.get('pearson_r', float('nan')):>7.4f} {held.get('coverage_90', float('nan')):>6.0%}",
            highlight=False,
        )
    for row in rows:
        if row["pareto_k_bad"]:
            err_console.print(
                f"[yellow]warning:[/] {row['fit']}: {row['pareto_k_bad']} observations with Pareto k > 0.7; LOO is unreliable there",
                highlight=False,
            )


@app.command()
@exits_cleanly
def predict(
    posterior: Annotated[Path, typer.Argument(help="Posterior from `bayescale fit`.")],
    alloc: Annotated[str, typer.Option("--alloc", help="Data per source, e.g. ct=100,mri=50,pet=0.")],
    interval: Annotated[float, typer.Option("--interval", help="Central credible interval.")] = 0.9,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the result as JSON (- for stdout, the table then on stderr).")] = None,
):
    """Predicted loss per target for one allocation, with a credible interval."""
    from bayescale.inference.posterior import law_draws, load_posterior
    from bayescale.evaluate.predict import predict as predict_loss

    draws = law_draws(load_posterior(posterior))
    result = predict_loss(draws, parse_mapping(alloc, "--alloc"), interval)
    if json_out:
        write_json(json_out, result)
    pct = round(interval * 100)
    console.print(f"{'target':<20} {'mean':>10} {'median':>10} {f'{pct}% lo':>10} {f'{pct}% hi':>10}", highlight=False)
    for name, row in result["targets"].items():
        console.print(f"{name:<20} {row['mean']:>10.4g} {row['median']:>10.4g} {row['lo']:>10.4g} {row['hi']:>10.4g}", highlight=False)


@app.command()
@exits_cleanly
def allocate(
    posterior: Annotated[Path, typer.Argument(help="Posterior from `bayescale fit`.")],
    budget: Annotated[Optional[float], typer.Option("--budget", help="Total data budget (cost-weighted) in the grid's data units.")] = None,
    objective: Annotated[str, typer.Option("--objective", help="mean | cvar:GAMMA | worst | minimax | minimax:cvar:GAMMA | minimax:worst")] = "mean",
    weights: WeightsOption = None,
    normalise: NormaliseOption = False,
    cost: CostOption = None,
    max_: MaxOption = None,
    min_: MinOption = None,
    fixed: FixedOption = None,
    group: Annotated[Optional[list[str]], typer.Option("--group", help="Share of the budget for matching sources (of the spend with --min-budget), e.g. 'ct_*>=0.3' (repeatable).")] = None,
    chance: Annotated[Optional[list[str]], typer.Option("--chance", help="Chance constraint TARGET<=LOSS@PROB, e.g. 'mri_t2_abdomen<=0.12@0.95' (repeatable).")] = None,
    chance_on: Annotated[str, typer.Option("--chance-on", help="predictive (default): --chance is about the loss one run will observe, the law's noise included | expected: about the law's expected loss.")] = "predictive",
    min_budget: Annotated[bool, typer.Option("--min-budget", help="Find the least budget that meets every --chance constraint.")] = False,
    budgets: Annotated[Optional[str], typer.Option("--budgets", help="Also solve these budgets (the allocation path), e.g. 100,200,400,800.")] = None,
    temperature: Annotated[float, typer.Option("--temperature", help="Temperature tau of the temperature-sampling baseline (amounts ~ available^(1/tau)).")] = 3.0,
    uncertainty: Annotated[int, typer.Option("--uncertainty", help="Draws whose own optimum shows how sure the recommendation is (0: skip).")] = 200,
    integer: Annotated[bool, typer.Option("--integer", help="Also round to whole units that respect every constraint.")] = False,
    no_baselines: Annotated[bool, typer.Option("--no-baselines", help="Skip the baselines and the transfer-unaware optimum.")] = False,
    unaware: Annotated[Optional[Path], typer.Option("--unaware", help="Posterior of the independent law fitted to the same grid (bayescale fit GRID --law independent): the transfer-unaware baseline is the optimum under it, judged under POSTERIOR. Without it ignoring transfer is measured only by an ablation (T = 0 inside POSTERIOR), and the output says so.")] = None,
    max_draws: Annotated[int, typer.Option("--max-draws", help="Posterior draws the program is solved on (a fixed-seed subset).")] = 2000,
    holdout: Annotated[float, typer.Option("--holdout", help="Share of draws kept out of the program to check chance constraints.")] = 0.25,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the draw subsets.")] = 0,
    interval: Annotated[float, typer.Option("--interval")] = 0.9,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the result as JSON (- for stdout, the table then on stderr).")] = None,
):
    """The allocation of the budget over sources that minimises the posterior risk (or the least budget that meets chance targets)."""
    from bayescale.optimise.allocate import allocate as solve
    from bayescale.render.text import format_allocation
    from bayescale.inference.posterior import law_draws, load_posterior

    idata = load_posterior(posterior)
    draws = law_draws(idata)
    unaware_draws = None if unaware is None else law_draws(load_unaware(unaware, idata))
    result = solve(
        draws,
        budget,
        objective=objective,
        weights=parse_mapping(weights, "--weights") or None,
        normalise=normalise,
        costs=parse_mapping(cost, "--cost") or None,
        upper=parse_mapping(max_, "--max") or None,
        lower=parse_mapping(min_, "--min") or None,
        fixed=parse_mapping(fixed, "--fixed") or None,
        groups=group or None,
        chance=chance or None,
        chance_on=chance_on,
        min_budget=min_budget,
        budgets=budgets,
        temperature=temperature,
        baselines=not no_baselines,
        uncertainty=uncertainty,
        integer=integer,
        interval=interval,
        max_draws=max_draws,
        holdout=holdout,
        seed=seed,
        unaware=unaware_draws,
    )
    if json_out:
        write_json(json_out, result.to_dict())
    console.print(format_allocation(result), highlight=False, markup=False)


@app.command()
@exits_cleanly
def propose(
    posterior: Annotated[Path, typer.Argument(help="Posterior from `bayescale fit`.")],
    grid: Annotated[Path, typer.Argument(help="The grid it was fitted to (the scale of generated candidates).")],
    budget: Annotated[float, typer.Option("--budget", help="The allocation budget the decision is about (as in allocate).")],
    candidates: Annotated[str, typer.Option("--candidates", help="auto (single domains, pairs and Dirichlet mixtures at a ladder of budgets) or a CSV with a column per source (optional name, cost).")] = "auto",
    batch: Annotated[int, typer.Option("--batch", help="Runs to propose.")] = 8,
    criterion: Annotated[str, typer.Option("--criterion", help="evoi: expected improvement of the allocation's objective | variance: expected fall of its posterior variance.")] = "evoi",
    run_cost: Annotated[str, typer.Option("--run-cost", help="volumes (a run costs its total data) or a TOML file of source = cost per unit.")] = "volumes",
    max_run_budget: Annotated[Optional[float], typer.Option("--max-run-budget", help="Largest total data of a generated candidate (default: the grid's largest fit run).")] = None,
    objective: Annotated[str, typer.Option("--objective", help="mean | cvar:GAMMA | minimax")] = "mean",
    weights: WeightsOption = None,
    normalise: NormaliseOption = False,
    cost: CostOption = None,
    max_: MaxOption = None,
    min_: MinOption = None,
    fixed: FixedOption = None,
    group: Annotated[Optional[list[str]], typer.Option("--group", help="Share of the budget for matching sources, e.g. 'ct_*>=0.3' (repeatable).")] = None,
    outcomes: Annotated[int, typer.Option("--outcomes", help="Simulated outcomes per batch.")] = 128,
    decisions: Annotated[int, typer.Option("--decisions", help="Per-draw optima in the decision set, besides the recommendation.")] = 64,
    min_effective_draws: Annotated[float, typer.Option("--min-effective-draws", help="Stop the batch early where one more run would leave the reweighted posterior on fewer effective draws (0: never).")] = 20.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the draw split, the outcomes and generated mixtures.")] = 0,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the proposal as JSON (- for stdout, the table then on stderr).")] = None,
    design: Annotated[Optional[Path], typer.Option("--design", help="Also write the batch as a design file for bayescale train CONFIG --design FILE.")] = None,
):
    """Which runs to train next: the batch whose losses are expected to improve the allocation most per unit of run cost."""
    from bayescale.data.grid import load_grid
    from bayescale.inference.posterior import diagnostics, law_draws, load_posterior, require_amounts
    from bayescale.optimise.candidates import make_candidates
    from bayescale.optimise.propose import design_toml, propose as choose
    from bayescale.render.text import format_proposal

    from bayescale._files import check_writable

    for flag, out in (("--json", json_out), ("--design", design)):
        if out is not None and str(out) != "-":
            check_writable(out, flag)
            if out.resolve() in (posterior.resolve(), grid.resolve()):
                raise InputError(f"{flag} {out} would overwrite an input file")
    idata = load_posterior(posterior)
    draws = require_amounts(law_draws(idata), "propose")
    pool = make_candidates(draws.sources, load_grid(grid), candidates, run_cost=run_cost, max_run_budget=max_run_budget, seed=seed)
    options = dict(objective=objective, weights=parse_mapping(weights, "--weights") or None, normalise=normalise,
                   costs=parse_mapping(cost, "--cost") or None, upper=parse_mapping(max_, "--max") or None,
                   lower=parse_mapping(min_, "--min") or None, fixed=parse_mapping(fixed, "--fixed") or None,
                   groups=group or None)
    with console.status(f"propose: scoring {len(pool)} candidates ...") as status:
        result = choose(draws, budget, pool, batch=batch, criterion=criterion, options=options, outcomes=outcomes,
                        decisions=decisions, seed=seed, min_effective_draws=min_effective_draws,
                        # only an approximate posterior can get the note: skip r-hat and ESS over a NUTS one
                        diagnostics=diagnostics(idata) if idata.attrs.get("approximate") or "stack_members" in idata.attrs else None,
                        progress=lambda scored, total: status.update(f"propose: {scored} scorings of {total} candidates "
                                                                     f"(batch of {batch}) ..."))
    text = design_toml(result) if design is not None else None  # before any file is written: whole volumes or nothing
    if json_out:
        write_json(json_out, result.to_dict())
    if design is not None:
        from bayescale._files import write_text_atomic

        write_text_atomic(design, text)
    console.print(format_proposal(result), highlight=False, markup=False)


@app.command()
@exits_cleanly
def hubs(
    posterior: Annotated[Path, typer.Argument(help="Posterior from `bayescale fit` (transfer or linear law).")],
    reference_data: Annotated[Optional[float], typer.Option("--reference-data", help="Amount of source data (raw units) at which transfer is measured (default D0).")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the classification as JSON (- for stdout, the table then on stderr).")] = None,
    figure: Annotated[Optional[Path], typer.Option("--figure", help="Also save the transfer graph as PNG.")] = None,
):
    """Hub and island domains, each with its posterior probability, and how much each domain gives and takes."""
    from bayescale.evaluate.hubs import hub_island_table, summary_from_table
    from bayescale.render.text import hubs_command_output
    from bayescale.inference.posterior import load_posterior
    from bayescale.render.figures import plot_transfer_graph

    idata = load_posterior(posterior)
    table = hub_island_table(idata, reference_data=reference_data)
    if json_out:
        write_json(json_out, summary_from_table(table))
    if figure:
        from bayescale._files import atomic_path

        with atomic_path(figure) as tmp:
            plot_transfer_graph(idata, table).savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    console.print(hubs_command_output(idata, table=table), highlight=False)


@app.command()
@exits_cleanly
def check(
    posterior: Annotated[Path, typer.Argument(help="Posterior from `bayescale fit`.")],
    grid: Annotated[Path, typer.Argument(help="The grid with held-out runs (split == 'holdout').")],
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the scores as JSON (- for stdout, the table then on stderr).")] = None,
    holdout_above: Annotated[Optional[float], typer.Option("--holdout-above", help="Refit the posterior's law on runs with budget <= this and score the runs above it (ignores the grid's split).")] = None,
    chains: Annotated[int, typer.Option(help="Chains of the refit (--holdout-above).")] = 4,
    warmup: Annotated[int, typer.Option(help="Warmup of the refit (--holdout-above).")] = 500,
    draws: Annotated[int, typer.Option(help="Draws per chain of the refit (--holdout-above).")] = 500,
    seed: Annotated[int, typer.Option(help="Seed of the refit (--holdout-above) and of the --laws fits.")] = 0,
    laws: Annotated[Optional[str], typer.Option("--laws", help="Also fit these law families on the same split and tabulate how each extrapolates, e.g. transfer,linear,independent or all (law:student_t for a Student-t likelihood).")] = None,
    figure: Annotated[Optional[Path], typer.Option("--figure", help="Also save predicted-vs-observed and calibration (PIT, coverage vs nominal) as PNG.")] = None,
):
    """Score predictions of the grid's held-out runs: Pearson r, relative error, interval coverage, calibration verdict."""
    from bayescale.data.grid import load_grid
    from bayescale.evaluate.check import parse_law_families
    from bayescale.render.text import format_check, format_law_table, format_rising
    from bayescale.inference.posterior import load_posterior
    from bayescale.workflows import check_with_refit

    if chains < 1 or warmup < 1 or draws < 1:
        raise InputError(f"--chains, --warmup and --draws must be >= 1, got {chains}, {warmup}, {draws}")
    families = parse_law_families(laws) if laws is not None else None
    if figure is not None and figure.suffix.lower() != ".png":
        raise InputError(f"--figure {figure}: the figure is written as PNG; give a .png path")
    idata, ds = load_posterior(posterior), load_grid(grid)
    pred, scores = check_with_refit(idata, ds, cut=holdout_above, families=families, chains=chains, warmup=warmup, draws=draws,
                                    seed=seed, where=str(grid), progress=lambda message: console.print(message, highlight=False))
    if figure is not None:
        from bayescale._files import atomic_path
        from bayescale.render.figures import plot_check

        with atomic_path(figure) as tmp:
            plot_check(pred, scores).savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    if json_out:
        write_json(json_out, scores)
    console.print(format_check(scores), highlight=False)
    if scores["calibration"]["verdict"] != "ok":
        console.print(f"[bold red]warning:[/] {scores['calibration']['message']}", highlight=False)
    for row in scores.get("rising") or []:
        console.print(f"[bold red]warning:[/] {format_rising(row, idata.attrs.get('data_unit', ''))}", highlight=False)
    if families is not None:
        console.print(format_law_table(scores["laws"]), highlight=False, markup=False)


@app.command()
@exits_cleanly
def report(
    posterior: Annotated[Path, typer.Argument(help="Posterior from `bayescale fit`.")],
    grid: Annotated[Path, typer.Option("--grid", help="The grid the posterior was fitted to.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for report.html and its PNG figures.")],
    budget: Annotated[Optional[float], typer.Option("--budget", help="Budget for the allocation section (default: 2x the largest fit budget).")] = None,
    unaware: Annotated[Optional[Path], typer.Option("--unaware", help="Posterior of the independent law fitted to the same grid, for the transfer-unaware baseline (default: fit it here with the posterior's chains, draws and seed).")] = None,
):
    """Write an HTML report with figures: scaling curves, transfer matrix, allocation, held-out check."""
    from bayescale.data.grid import load_grid
    from bayescale.workflows import report_for
    from bayescale.inference.posterior import load_posterior

    idata = load_posterior(posterior)
    path = report_for(idata, load_grid(grid), out, budget=budget, grid_name=str(grid),
                      unaware=None if unaware is None else load_unaware(unaware, idata),
                      progress=lambda message: console.print(message, highlight=False))
    console.print(f"wrote {path}", highlight=False)


@app.command()
@exits_cleanly
def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for fit.nc, allocation.json, check.json, report.html.")] = Path("demo-out"),
    grid: Annotated[Optional[Path], typer.Option("--grid", help="Grid to run on (default: the shipped data/grids/default.nc).")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
):
    """The main job end to end on the shipped grid: fit, allocate, check, report."""
    from bayescale.workflows import run_demo

    run_demo(out, grid=grid, seed=seed, console=console)


# --- trainers (need the [train] extra) ---


def _import_trainers(what: str):
    """Import trainers lazily: bayescale itself must import without torch."""
    import importlib

    try:
        return importlib.import_module(what)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or str(exc)
        raise InputError(
            f"this command needs the training extra ({missing} is not importable); install it with pip install -e '.[train]'"
        ) from None


@app.command()
@exits_cleanly
def phantoms(
    out: Annotated[Path, typer.Option("--out", help="Folder for the NIfTI phantoms (one subfolder per domain).")],
    per_domain: Annotated[int, typer.Option("--per-domain", help="Volumes per domain.")] = 20,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the phantom population.")] = 0,
):
    """Write procedural CT, MRI and PET phantom volumes (NIfTI) for training runs."""
    if per_domain < 1:
        raise InputError(f"--per-domain {per_domain}: expected at least 1")
    if seed < 0:
        raise InputError(f"--seed {seed}: expected a seed >= 0")
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder")
    module = _import_trainers("trainers.phantoms")
    written = module.write_phantoms(out, per_domain=per_domain, seed=seed)
    total = sum(len(paths) for paths in written.values())
    console.print(f"wrote {total} volumes ({per_domain} per domain, seed {seed}) under {out}", highlight=False)


@app.command()
@exits_cleanly
def train(
    config: Annotated[Path, typer.Argument(help="Training config (.toml): data, model, training and design.")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the loss grid (.nc); run records go to OUT.records/.")],
    executor: Annotated[str, typer.Option("--executor", help="local | ray")] = "local",
    address: Annotated[Optional[str], typer.Option("--address", help="Ray cluster address (with --executor ray).")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Runs in parallel (default: CPU cores / threads per run).")] = None,
    collect_only: Annotated[bool, typer.Option("--collect-only", help="Only rebuild the grid from the finished runs' records.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
    design: Annotated[Path | None, typer.Option("--design", help=r"Also train the explicit runs of this design file (\[\[design.runs]]; e.g. from bayescale propose --design).")] = None,  # \[: rich would read [..] as markup
):
    """Train the config's runs (skipping finished ones) and write their loss grid."""
    refuse_overwrite_of_input(out, config, design)
    run = _import_trainers("trainers.run")
    result = run.train_grid(config, out, executor=executor, address=address, workers=workers, collect_only=collect_only,
                            progress=progress, console=console, design=design)
    from bayescale.data.grid import grid_summary, load_grid
    from bayescale.render.text import format_grid_summary

    what = "collected" if collect_only else f"trained {result.trained}, skipped {result.skipped} finished"
    console.print(f"wrote {result.out} ({result.runs} runs; {what}; {result.seconds:.0f}s); records in {result.records_dir}", highlight=False)
    console.print(format_grid_summary(grid_summary(load_grid(result.out))), highlight=False)


@app.command()
@exits_cleanly
def finetune(
    config: Annotated[Path, typer.Argument(help="Fine-tuning config (.toml): pretraining config, labelled manifest, recipe.")],
    encoder: Annotated[str, typer.Option("--encoder", help="Run id (its checkpoint RECORDS/RUN_ID.pt), a checkpoint path (.pt), or scratch.")],
    target: Annotated[str, typer.Option("--target", help="Labelled domain of the config's manifest to fine-tune and test on.")],
    task: Annotated[str, typer.Option("--task", help="segmentation | classification")],
    records: Annotated[Optional[Path], typer.Option("--records", help="Records folder of the pretraining runs (default: the config's records).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the new layers' initial weights, crops and batches.")] = 0,
    out: Annotated[Optional[Path], typer.Option("--out", help="Also write the result as JSON (- for stdout, the table then on stderr).")] = None,
):
    """Fine-tune a pretrained encoder (or one from scratch) on a labelled domain; Dice per structure or AUROC on a fixed test split."""
    if out is not None:
        refuse_overwrite_of_input(out, config)
    module = _import_trainers("trainers.finetune")
    result = module.run_finetune(config, encoder, target, task, seed=seed, records=records, console=console)
    console.print(module.format_result(result), highlight=False)
    if out is not None:
        write_json(out, result)
        console.print(f"wrote {out}", highlight=False)


def main() -> None:
    from bayescale.inference.sampling import ensure_host_devices

    # Before any command touches JAX: several commands sample (fit, check's refits), and
    # XLA fixes its device count when its backend starts.
    ensure_host_devices()
    try:
        code = app(prog_name="bayescale", standalone_mode=False)
    except typer.TyperException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare command group: its help, as typer shows it
            from typer import rich_utils

            rich_utils.rich_format_error(exc)
        else:
            # A flag of the wrong type, an unknown flag or a missing argument: one line naming it,
            # status 2, as for every other bad input (not click's usage block and boxed message).
            where = f" (see '{exc.ctx.command_path} --help')" if getattr(exc, "ctx", None) is not None else ""
            err_console.print(f"[bold red]error:[/] {escape(exc.format_message())}{where}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("[bold red]interrupted[/]: finished outputs are kept; nothing half-written was left behind")
        sys.exit(130)
    # Without standalone mode typer returns an exit status (typer.Exit) or the command's value (None).
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    sys.exit(main())
