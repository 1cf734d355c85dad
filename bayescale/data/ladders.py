"""Own-domain ladders of a loss grid: does a domain's loss fall with its own data, beyond a trivial predictor?

A ladder is the single-domain runs of one domain, scored on that same domain, at increasing
budgets. Before fitting any law to a grid it is worth knowing whether its models learn at all:
a scaling law fitted to runs that do no better than "predict the mean training volume" describes
noise around that baseline, not learning. For each ladder rung this module gives

* ``ratio``: the seed mean of ``loss / baseline_loss`` (below 1: better than the baseline);
* ``spread``: the seed-to-seed relative spread of the loss, its sample sd over the seed mean;
* ``seeds``: how many seeds the rung has;

and per ladder whether the seed means fall monotonically with the budget. :func:`ladder_goals`
checks them against goals (by default issue 16's: the top rung at least 25 % below the baseline,
monotone, every spread at most 2 %). Pure functions over the grid; no fitting.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

from bayescale.data.grid import validate_grid
from bayescale.errors import InputError


@dataclass(frozen=True)
class LadderGoals:
    """What a grid's ladders should show; the defaults are issue 16's recipe goals."""

    top_ratio: float = 0.75  # top rung's loss at most this fraction of the baseline
    max_spread: float = 0.02  # seed-to-seed relative sd of a rung's loss
    monotone: bool = True  # seed means fall (do not rise) with the budget


def own_domain_ladders(grid: xr.Dataset, split: str | None = None) -> xr.Dataset:
    """The own-domain ladders of ``grid``: dims (domain, budget).

    Single-domain runs only (one source with data, which is also a target); ``split`` keeps one
    split (default: every run, held-out single-domain runs included). Variables: ``loss`` (seed
    mean), ``ratio`` (seed mean of loss / baseline; NaN without a baseline), ``spread`` (sample sd
    over seeds / mean; NaN with one seed), ``seeds`` (count; 0 where a domain lacks that budget),
    and per domain ``monotone`` (seed means non-increasing over the budgets it has).
    """
    grid = validate_grid(grid)
    if split is not None:
        grid = grid.isel(run=grid["split"].values == split)
    data = grid["data"].values
    sources = [str(s) for s in grid["source"].values]
    targets = [str(t) for t in grid["target"].values]
    baseline = grid["baseline_loss"].values if "baseline_loss" in grid else np.full(len(targets), np.nan)
    cells: dict[tuple[str, float], list[float]] = {}
    for r in range(grid.sizes["run"]):
        used = np.flatnonzero(data[r] > 0)
        if used.size != 1 or sources[used[0]] not in targets:
            continue
        domain = sources[used[0]]
        value = float(grid["loss"].values[r, targets.index(domain)])
        if np.isfinite(value):
            cells.setdefault((domain, float(data[r, used[0]])), []).append(value)
    if not cells:
        raise InputError("the grid has no single-domain runs scored on their own domain: no ladders to show")
    domains = [t for t in targets if any(d == t for d, _ in cells)]
    budgets = sorted({b for _, b in cells})
    shape = (len(domains), len(budgets))
    loss, ratio, spread, seeds = np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan), np.zeros(shape, int)
    for (domain, budget), values in cells.items():
        i, j = domains.index(domain), budgets.index(budget)
        v = np.asarray(values)
        loss[i, j] = v.mean()
        base = baseline[targets.index(domain)]
        ratio[i, j] = v.mean() / base if np.isfinite(base) and base > 0 else np.nan
        spread[i, j] = v.std(ddof=1) / v.mean() if v.size > 1 else np.nan
        seeds[i, j] = v.size
    monotone = []
    for i in range(len(domains)):
        m = loss[i][np.isfinite(loss[i])]
        monotone.append(bool(np.all(np.diff(m) <= 0)))
    return xr.Dataset(
        {
            "loss": (("domain", "budget"), loss),
            "ratio": (("domain", "budget"), ratio),
            "spread": (("domain", "budget"), spread),
            "seeds": (("domain", "budget"), seeds),
            "monotone": (("domain",), np.array(monotone)),
        },
        coords={"domain": domains, "budget": budgets},
        attrs={"data_unit": grid.attrs.get("data_unit", ""), "loss_name": grid.attrs.get("loss_name", "")},
    )


def ladder_goals(ladders: xr.Dataset, goals: LadderGoals = LadderGoals()) -> dict:
    """Per domain: its top rung's budget and ratio, its worst spread, monotone, and whether each goal is met.

    Plain Python values, ready for JSON. ``all_met`` is the conjunction over domains and goals; a
    domain whose ratio or spread is unknown (no baseline, one seed) does not meet that goal.
    """
    out: dict = {"goals": {"top_ratio": goals.top_ratio, "max_spread": goals.max_spread, "monotone": goals.monotone}, "domains": {}}
    for domain in ladders["domain"].values:
        row = ladders.sel(domain=domain)
        have = np.flatnonzero(row["seeds"].values > 0)
        top = int(have[-1])
        top_ratio = float(row["ratio"].values[top])
        spreads = row["spread"].values[have]
        worst = float(np.max(spreads)) if np.all(np.isfinite(spreads)) else float("nan")
        monotone = bool(row["monotone"].values)
        met = {
            "top_ratio": bool(np.isfinite(top_ratio) and top_ratio <= goals.top_ratio),
            "spread": bool(np.isfinite(worst) and worst <= goals.max_spread),
            "monotone": monotone or not goals.monotone,
        }
        out["domains"][str(domain)] = {
            "top_budget": float(ladders["budget"].values[top]), "top_ratio": top_ratio, "worst_spread": worst,
            "monotone": monotone, "met": met,
        }
    out["all_met"] = all(all(d["met"].values()) for d in out["domains"].values())
    return out
