"""Simulated sequential studies: does ``bayescale propose`` buy a good allocation with less run cost
than a fixed design? (issue 17)

    .venv/bin/python analyses/sequential_design.py [--out analyses/results/sequential-design]
        [--worlds 10] [--rounds 4] [--round-cost 96] [--budget 64] [--method nuts|svi]
        [--strategies propose,fixed,random,propose-refit] [--extrapolation] [--force]

Each *world* is a hidden truth: ``bayescale.data.simulate.draw_world(K, seed=w)`` for
``w = 0 .. worlds - 1`` (K = 5 domains, each a source and a target; a hub and an island). A study
in one world:

1. **Seed design** (shared by every strategy, cost not counted): every domain alone at 4 and 8
   volumes, and 5 Dirichlet mixtures (concentration 1, whole volumes, at least two domains:
   :func:`trainers.design.dirichlet_counts`) of 8 volumes: 15 runs, 100 volumes. Losses are
   simulated from the world with its own noise (log-normal, sd ``sigma_j``; the run effect where
   the world has one) by :func:`bayescale.data.simulate.simulate_runs`, the function
   ``simulate_grid`` uses.
2. **Rounds** ``r = 1 .. R`` (default 4): each strategy picks runs of total cost ``c_r`` (cost = a
   run's total volumes), they are simulated from the world, appended to the grid, and the law is
   refitted. Strategies:

   - ``propose``: :func:`bayescale.optimise.propose.propose` (EVOI for the allocation below, the
     default outcomes and decisions) on the current posterior over the ``auto`` candidate pool
     (:func:`bayescale.optimise.candidates.make_candidates`: singles, pairs and 32 Dirichlet
     mixtures at 32, 16, 8 and 4 volumes); its batch is taken in order, a run that would
     overspend the round skipped; if that leaves cost unspent, propose is asked again on the
     candidates that fit the rest (and were not taken this round), until the round is spent.
   - ``propose-refit``: the same, but each batch stops where propose's reweighted posterior would
     rest on fewer than 20 effective draws (its default ``min_effective_draws``), and that batch is
     simulated and the law refitted before the next is proposed (``propose`` above asks for the whole
     round on one posterior, ``min_effective_draws=0``, as first measured).
   - ``fixed``: the ladder-and-mixture design continued (``simulate.design_runs`` and
     ``trainers/design.py`` style): levels at 2x, 4x, ... the seed's largest run (16, 32, ...
     volumes), each every domain alone and 3 Dirichlet mixtures, taken in that order.
   - ``random``: candidates drawn uniformly (with replacement) from the same pool as
     ``propose``; one that would overspend the round is redrawn.

   **Equal cost**: the fixed design fills each round in order up to ``--round-cost`` and stops at
   the first run that does not fit; what it spends, ``c_r``, is round r's cost for every strategy
   (``propose`` and ``random`` fill it exactly). With the defaults (96 per round) ``c_r`` = 96 and
   the four rounds are exactly the 16- and 32-volume levels (5 singles + 3 mixtures each, 384
   volumes): the fixed design ends complete, not half-way through a level.
3. **Decision**: after the seed and after every round, the allocation of ``B`` = 64 volumes (8x
   the seed's largest run, twice the largest candidate) that minimises the posterior mean of the
   summed loss of the 5 targets (objective ``mean``, equal weights):
   ``allocate(draws, B, baselines=False, uncertainty=0)``.
4. **Regret**: its true summed loss minus the oracle's, the oracle being the same program
   solved for the true parameters (a :class:`~bayescale.laws.draws.LawDraws` holding the world
   as its one draw). Both are evaluated with the world's own float64 law
   (:meth:`~bayescale.data.simulate.World.loss`), so the regret is >= 0 up to the solver's
   tolerance; also reported relative to the oracle's loss. For scale, each world also records
   the regret of the uniform split of B.

**Fits**: ``fit(grid, method="nuts")`` by default, short chains (2 x (300 warm-up + 500 draws)):
25-45 s per fit on the two cores, about 9 minutes per world for the three strategies.
``--method svi`` (a full-rank Gaussian guide, 5000 steps, 1000 draws; 8-16 s a fit) was the first
default and is kept for comparison: its guides' Pareto k-hat was 2.2-10.3 on every fit, and with
them ``propose``, which reweights the posterior's draws, lost to the fixed design (the results in
``analyses/results/sequential-design-svi``); with NUTS it does not (``docs/propose.md``).
``extrapolation=False`` by default (the leave-future-out slope error doubles every fit; the worlds
follow the law exactly, so there is no misfit for it to find); ``--extrapolation`` turns it on.

**Headline** (the issue's goal: propose reaches the fixed design's final regret with <= 50 % of
its run cost): per world, the first added cost (0 = the seed alone) at which ``propose``'s regret
is at or below the fixed design's regret after its last round, as a share of the fixed design's
added cost (the seed is shared and not counted); "not reached" counts as > 100 %. Median and
spread over worlds. A noisy regret curve that dips once counts as reached (the issue's
definition); the table shows the curves whole.

**Resumable**: each (world, strategy) writes ``OUT/units/world<w>-<strategy>.json`` when it is
finished, with its settings; a rerun with the same settings reuses it (``--force`` recomputes), so
Ctrl-C loses only the unit in progress. ``OUT/summary.md`` and ``OUT/summary.json`` are rewritten
from all finished units for the requested worlds.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import NamedTuple

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import numpy as np

from bayescale._files import read_saved, write_text_atomic
from bayescale.errors import InputError

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "analyses" / "results" / "sequential-design"
FORMAT = "bayescale.sequential_design/1"
STRATEGIES = ("propose", "fixed", "random", "propose-refit")
DEFAULT_STRATEGIES = ("propose", "fixed", "random")  # propose-refit: asked for by name
SEED_SINGLES = (4, 8)  # every domain alone at these volumes
SEED_MIXTURES = 5  # Dirichlet mixtures at the largest seed budget
FIXED_MIXTURES = 3  # Dirichlet mixtures per level of the fixed design
LADDER = 4  # candidate budgets: --max-run and its halvings (bayescale.optimise.candidates.LADDER)
MAX_BATCH = 16  # runs asked of propose at once
REGRET_TOL = 1e-9  # relative: a regret below -REGRET_TOL * oracle loss is a solver failure


# ------------------------------------------------------------------------------------ the world


def truth_draws(world):
    """The world's true parameters as a :class:`LawDraws` of one draw (raw units: the world's data_scale)."""
    from bayescale.data.grid import self_mask_for
    from bayescale.laws.draws import LawDraws

    if world.broken is not None:
        raise InputError("a world with a broken power law has no LawDraws of its truth (the bend differs)")
    one = lambda v: np.asarray(v, dtype=np.float64)[None]
    kappa = None if world.interference is None else one(world.interference)
    return LawDraws(sources=tuple(world.domains), targets=tuple(world.domains),
                    self_mask=self_mask_for(world.domains, world.domains), E=one(world.E), A=one(world.A),
                    alpha=one(world.alpha), x0=one(world.x0), sigma=one(world.sigma), T=one(world.T),
                    beta=one(world.beta), data_scale=float(world.data_scale),
                    sigma_run=np.array([world.run_sigma]) if world.run_sigma else None, kappa=kappa)


def true_loss(world, allocation) -> float:
    """The summed (equal-weight) true loss of the targets under ``allocation`` (K,) raw units."""
    return float(world.loss(np.asarray(allocation, dtype=np.float64)[None])[0].sum())


def oracle(world, budget: float) -> dict:
    """The allocation of ``budget`` that minimises the true summed loss, and that loss."""
    from bayescale.optimise.allocate import allocate

    result = allocate(truth_draws(world), float(budget), objective="mean", baselines=False, uncertainty=0)
    alloc = np.array([result.allocation[d] for d in world.domains])
    return {"allocation": dict(zip(world.domains, alloc.tolist())), "loss": true_loss(world, alloc),
            "status": result.status}


def observe(world, runs: list[tuple[str, np.ndarray]], rng) -> list[dict]:
    """The runs' observed losses, simulated from the world with its own noise."""
    from bayescale.data.simulate import simulate_runs

    if not runs:
        return []
    amounts = np.array([a for _, a in runs], dtype=np.float64)
    losses = simulate_runs(world, amounts, rng)
    return [{"name": name, "data": a.tolist(), "loss": row.tolist()} for (name, a), row in zip(runs, losses)]


def grid_of(world, observed: list[dict]):
    """A loss grid (split ``fit``) of the observed runs."""
    from bayescale.data.grid import make_grid

    return make_grid(run=[r["id"] for r in observed], source=list(world.domains), target=list(world.domains),
                     data=np.array([r["data"] for r in observed]), loss=np.array([r["loss"] for r in observed]),
                     split="fit", attrs={"data_unit": world.data_unit, "loss_name": "simulated_loss",
                                         "true_params": world.to_json()})


# ------------------------------------------------------------------------------------ designs


def dirichlet_run(domains, budget: int, key) -> np.ndarray:
    from trainers.design import dirichlet_counts

    counts = dirichlet_counts(list(domains), int(budget), 1.0, key)
    return np.array([counts[d] for d in domains], dtype=np.float64)


def seed_design(domains, world_id: int) -> list[tuple[str, np.ndarray]]:
    """Every domain alone at SEED_SINGLES volumes and SEED_MIXTURES mixtures at the largest of them."""
    k = len(domains)
    runs = [(f"single-{d}-{b}", b * np.eye(k)[i]) for b in SEED_SINGLES for i, d in enumerate(domains)]
    top = max(SEED_SINGLES)
    runs += [(f"mix{m}-{top}", dirichlet_run(domains, top, [world_id, top, m])) for m in range(SEED_MIXTURES)]
    return runs


def fixed_schedule(domains, world_id: int, rounds: int, round_cost: float, mixtures: int = FIXED_MIXTURES):
    """The fixed design's runs per round: levels at 2x, 4x, ... the seed's largest run, each every
    domain alone and ``mixtures`` Dirichlet mixtures, in that order; a round takes them in order up
    to ``round_cost`` and stops at the first that does not fit."""
    k, level, sequence = len(domains), 2 * max(SEED_SINGLES), []

    def grow():
        nonlocal level
        sequence.extend((f"single-{d}-{level}", level * np.eye(k)[i]) for i, d in enumerate(domains))
        sequence.extend((f"mix{m}-{level}", dirichlet_run(domains, level, [world_id, level, 1000 + m]))
                        for m in range(mixtures))
        level *= 2

    schedule, at = [], 0
    for r in range(rounds):
        taken, spent = [], 0.0
        while True:
            while at >= len(sequence):
                grow()
            cost = float(sequence[at][1].sum())
            if spent + cost > round_cost:
                break
            taken.append(sequence[at])
            spent += cost
            at += 1
        if not taken:
            raise InputError(f"--round-cost {round_cost:g}: smaller than the fixed design's next run "
                             f"({cost:g} volumes) in round {r + 1}")
        schedule.append(taken)
    return schedule


def candidate_pool(domains, grid, max_run: float, world_id: int):
    from bayescale.optimise.candidates import make_candidates

    return make_candidates(tuple(domains), grid, "auto", max_run_budget=max_run, seed=world_id)


def check_costs(settings: dict) -> list[float]:
    """The round costs c_r (the fixed design's spend); refuses settings the pool cannot fill exactly."""
    domains = [f"d{i}" for i in range(settings["domains"])]
    costs = [float(sum(a.sum() for _, a in runs))
             for runs in fixed_schedule(domains, 0, settings["rounds"], settings["round_cost"], settings["fixed_mixtures"])]
    sizes = sorted({round(settings["max_run"] / 2**k) for k in range(LADDER)} - {0})
    unit = sizes[0]
    if any(s % unit for s in sizes) or any(c % unit for c in costs):
        raise InputError(f"--max-run {settings['max_run']:g}: candidate runs of {', '.join(map(str, sizes))} volumes cannot "
                         f"fill rounds of {', '.join(f'{c:g}' for c in costs)} exactly (use a power of two)")
    return costs


# ------------------------------------------------------------------------------------ fit and decide


def fit_draws(grid, settings: dict, seed: int):
    """The posterior's draws and a record of the fit (seconds, warnings, SVI k-hat or NUTS diagnostics)."""
    from bayescale.inference.fit import fit
    from bayescale.inference.posterior import diagnostics, law_draws

    kwargs = {"method": settings["method"], "extrapolation": settings["extrapolation"], "progress": False,
              "draws": settings["draws"]}
    if settings["method"] == "svi":
        kwargs.update(chains=1, svi_steps=settings["svi_steps"])
    else:
        kwargs.update(chains=settings["chains"], warmup=settings["warmup"])
    t0 = time.perf_counter()
    for attempt in range(3):  # SVI can diverge at one seed; another seed settles
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                idata = fit(grid, seed=seed + 1000 * attempt, **kwargs)
            break
        except InputError as error:
            if settings["method"] != "svi" or "diverged" not in str(error) or attempt == 2:
                raise
    info = {"seconds": round(time.perf_counter() - t0, 2), "seed": seed + 1000 * attempt,
            "warnings": sorted({str(w.message).splitlines()[0][:200] for w in caught})}
    if settings["method"] == "svi":
        info["psis_khat"] = float(idata.attrs.get("psis_khat", float("nan")))
    else:
        diag = diagnostics(idata)
        info.update(max_rhat=diag.get("max_rhat"), divergences=diag.get("divergences"))
    return law_draws(idata), info


def decide(draws, world, budget: float, best: float) -> dict:
    """The recommended allocation of ``budget`` and its regret under the world."""
    from bayescale.optimise.allocate import allocate

    result = allocate(draws, float(budget), objective="mean", baselines=False, uncertainty=0)
    alloc = np.array([result.allocation[d] for d in world.domains])
    loss = true_loss(world, alloc)
    return {"allocation": dict(zip(world.domains, alloc.tolist())), "true_loss": loss, "regret": loss - best,
            "relative_regret": (loss - best) / best, "status": result.status}


# ------------------------------------------------------------------------------------ strategies


def propose_within(draws, settings: dict, pool, available, left: float, seed: int, strategy: str, **options):
    """One propose call on the candidates still available that fit the ``left`` volumes of the round,
    and the runs of its batch taken in order while they fit: (result, [(name, amounts)], volumes left).
    ``available`` (a mask over ``pool``) is updated."""
    from bayescale.optimise.propose import propose

    # Only runs after which the rest of the round can still be filled exactly: taking every
    # 1-volume run early once left 1 volume that no run fitted.
    fits = np.array([k for k in np.flatnonzero(available & (pool.costs <= left + 1e-9))
                     if can_fill(left - pool.costs[k], pool.costs[others(available, k)])], dtype=int)
    if fits.size == 0:
        raise InputError(f"{strategy}: no candidate run fits the {left:g} volumes left of the round")
    sub = pool.subset(fits)
    batch = int(min(settings["max_batch"], max(1, left // pool.costs.min()), len(sub)))
    result = propose(draws, settings["budget"], sub, batch=batch, options={"objective": "mean"},
                     outcomes=settings["outcomes"], decisions=settings["decisions"], seed=seed, **options)
    step = []
    for run in result.batch:
        k = pool.names.index(run.name)
        if run.cost <= left + 1e-9 and can_fill(left - run.cost, pool.costs[others(available, k)]):
            step.append((run.name, pool.amounts[k].copy()))
            available[k] = False
            left -= run.cost
    return result, step, left


def others(available, k: int):
    """``available`` without run ``k``: what is left to fill the round once ``k`` is taken."""
    return available & (np.arange(available.size) != k)


def can_fill(left: float, costs) -> bool:
    """Whether some of the runs of ``costs`` (each at most once) add up to ``left`` exactly: a
    subset sum over whole volumes (check_costs makes every cost a whole number of the smallest)."""
    target = round(left)
    if abs(left - target) > 1e-6 or target < 0:
        return False
    reachable = 1  # bit s set: a subset sums to s
    for c in np.rint(np.asarray(costs, dtype=np.float64)).astype(int):
        if 0 < c <= target:
            reachable |= (reachable << int(c)) & ((1 << (target + 1)) - 1)
    return bool(reachable >> target & 1)


def fill_by_propose(draws, settings: dict, pool, cost: float, seed: int) -> tuple[list, dict]:
    """Runs of total cost ``cost`` from propose's batches (see the module docstring)."""
    taken, left, calls = [], cost, []
    available = np.ones(len(pool), dtype=bool)
    while left > 0:
        result, step, left = propose_within(draws, settings, pool, available, left, seed + len(calls), "propose",
                                            min_effective_draws=0.0)  # the whole batch on one posterior (as first measured)
        calls.append({"batch": [r.name for r in result.batch], "expected_gain": result.expected_gain,
                      "expected_gain_se": result.expected_gain_se, "value_now": result.value_now,
                      "effective_draws": result.effective_draws, "notes": list(result.notes),
                      "seconds": round(result.seconds, 2)})
        taken += step
    return taken, {"propose_calls": calls}


def fill_by_propose_and_refit(world, observed: list[dict], draws, settings: dict, pool, cost: float, seed: int,
                              round_id: int) -> tuple[list, list, object, dict]:
    """Runs of total cost ``cost`` from propose's batches stopped where its reweighted posterior thins
    out (``min_effective_draws``, 20), each batch simulated and the law refitted before the next:
    (the round's runs, their observations, the last posterior, info)."""
    taken, seen, left, calls = [], [], cost, []
    available = np.ones(len(pool), dtype=bool)
    while left > 0:
        result, step, left = propose_within(draws, settings, pool, available, left, seed + len(calls), "propose-refit")
        new = observe(world, step, np.random.default_rng([settings["seed"], 7, seed, len(calls)]))
        seen += [{"id": f"r{round_id}-c{len(calls)}-{k}-{x['name']}", **x} for k, x in enumerate(new)]
        taken += step
        calls.append({"batch": [r.name for r in result.batch], "taken": len(step), "expected_gain": result.expected_gain,
                      "effective_draws": result.effective_draws, "notes": list(result.notes)})
        if left > 0:  # refit before the next batch; the round's last refit is the caller's
            draws, _ = fit_draws(grid_of(world, observed + seen), settings, seed=seed + 1000 + len(calls))
    return taken, seen, draws, {"propose_calls": calls}


def fill_at_random(pool, cost: float, rng) -> list:
    taken, left = [], cost
    if not np.any(pool.costs <= cost + 1e-9):
        raise InputError(f"random: no candidate run fits a round of {cost:g} volumes")
    while left > 0:
        k = int(rng.integers(len(pool)))
        if pool.costs[k] <= left + 1e-9:
            taken.append((pool.names[k], pool.amounts[k].copy()))
            left -= pool.costs[k]
    return taken


class SeedState(NamedTuple):
    """What every strategy of one world starts from: the seed runs, their fit and decision."""

    world: object
    observed: list[dict]
    draws: object
    record: dict
    oracle: dict
    uniform: dict


def seed_state(world_id: int, settings: dict) -> SeedState:
    from bayescale.data.simulate import draw_world

    world = draw_world(settings["domains"], seed=world_id)
    best = oracle(world, settings["budget"])
    runs = seed_design(world.domains, world_id)
    observed = [{"id": f"seed-{r['name']}", **r} for r in observe(world, runs, np.random.default_rng([settings["seed"], world_id, 0]))]
    draws, fit_info = fit_draws(grid_of(world, observed), settings, seed=settings["seed"])
    record = {"round": 0, "added_cost": 0.0, "total_cost": float(sum(sum(r["data"]) for r in observed)),
              "runs": len(observed), "new_runs": [r["name"] for r in observed], "fit": fit_info,
              **decide(draws, world, settings["budget"], best["loss"])}
    uniform = np.full(len(world.domains), settings["budget"] / len(world.domains))
    u_loss = true_loss(world, uniform)
    return SeedState(world, observed, draws, record, best,
                     {"true_loss": u_loss, "regret": u_loss - best["loss"], "relative_regret": (u_loss - best["loss"]) / best["loss"]})


def run_unit(world_id: int, strategy: str, settings: dict, start: SeedState, costs: list[float], log=print) -> dict:
    """One strategy's rounds in one world: the per-round records."""
    world = start.world
    t_unit = time.perf_counter()
    index = STRATEGIES.index(strategy)
    schedule = fixed_schedule(world.domains, world_id, settings["rounds"], settings["round_cost"], settings["fixed_mixtures"])
    pool = candidate_pool(world.domains, grid_of(world, start.observed), settings["max_run"], world_id)
    observed, draws = list(start.observed), start.draws
    records = [dict(start.record)]
    added = 0.0
    for r in range(1, settings["rounds"] + 1):
        t0 = time.perf_counter()
        cost, info = costs[r - 1], {}
        if strategy == "fixed":
            runs = schedule[r - 1]
        elif strategy == "random":
            runs = fill_at_random(pool, cost, np.random.default_rng([settings["seed"], world_id, index, r]))
        elif strategy == "propose-refit":
            runs, new, _, info = fill_by_propose_and_refit(world, observed, draws, settings, pool, cost,
                                                           seed=settings["seed"] + 100 * world_id + r, round_id=r)
        else:
            runs, info = fill_by_propose(draws, settings, pool, cost, seed=settings["seed"] + 100 * world_id + r)
        spent = float(sum(a.sum() for _, a in runs))
        if abs(spent - cost) > 1e-9:
            raise AssertionError(f"{strategy} spent {spent:g} volumes in round {r}, not {cost:g}")
        if strategy == "propose-refit":  # observed batch by batch, as it chose them
            observed += new
        else:
            new = observe(world, runs, np.random.default_rng([settings["seed"], world_id, 100 + index, r]))
            observed += [{"id": f"r{r}-{k}-{x['name']}", **x} for k, x in enumerate(new)]
        draws, fit_info = fit_draws(grid_of(world, observed), settings, seed=settings["seed"] + r)
        added += spent
        record = {"round": r, "added_cost": added, "total_cost": float(sum(sum(x["data"]) for x in observed)),
                  "runs": len(observed), "new_runs": [x["name"] for x in new],
                  "new_data": [x["data"] for x in new], "fit": fit_info, **info,
                  **decide(draws, world, settings["budget"], start.oracle["loss"])}
        record["seconds"] = round(time.perf_counter() - t0, 2)
        records.append(record)
        log(f"  world {world_id} {strategy:<7} round {r}/{settings['rounds']}: +{spent:g} volumes in {len(runs)} runs, "
            f"regret {record['regret']:.4g} ({100 * record['relative_regret']:.3f} % of the oracle loss), "
            f"{record['seconds']:.0f} s")
    return {"format": FORMAT, "settings": settings, "world": world_id, "strategy": strategy,
            "world_params": json.loads(world.to_json()), "budget": settings["budget"], "oracle": start.oracle,
            "uniform": start.uniform, "records": records, "seconds": round(time.perf_counter() - t_unit, 1)}


# ------------------------------------------------------------------------------------ summary


def unit_path(out: Path, world_id: int, strategy: str) -> Path:
    return out / "units" / f"world{world_id:02d}-{strategy}.json"


def _bootstrap_mean(values: np.ndarray, level: float = 0.9, n: int = 2000) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    means = values[rng.integers(0, values.size, (n, values.size))].mean(axis=1)
    return float(np.quantile(means, (1 - level) / 2)), float(np.quantile(means, (1 + level) / 2))


NOT_REACHED = 1e9  # a share "never": larger than any, finite so that sorting and quantiles need no NaN


def _finite(x) -> float | None:
    """A share for JSON: None where it is not reached."""
    return float(x) if np.isfinite(x) and x < NOT_REACHED else None


def reach_share(propose_records: list[dict], fixed_records: list[dict]) -> float:
    """The first added cost at which propose's regret is <= the fixed design's final regret, as a share
    of the fixed design's added cost (inf: never)."""
    target, total = fixed_records[-1]["regret"], fixed_records[-1]["added_cost"]
    for rec in propose_records:
        if rec["regret"] is not None and rec["regret"] <= target:
            return rec["added_cost"] / total
    return math.inf


def summarise(units: dict[tuple[int, str], dict]) -> dict:
    """Per strategy and round: regret over worlds (median, quartiles, mean and its bootstrap 90 % CI),
    worlds better than fixed; and the headline shares."""
    strategies = [s for s in STRATEGIES if any(k[1] == s for k in units)]
    worlds = sorted({w for w, _ in units})
    rows = []
    for s in strategies:
        mine = [units[(w, s)] for w in worlds if (w, s) in units]
        for r in range(len(mine[0]["records"])):
            if s != strategies[0] and r == 0:
                continue  # the seed design's row is the same for every strategy
            recs = [(u["world"], u["records"][r]) for u in mine]
            regret = np.array([x["regret"] for _, x in recs])
            rel = np.array([x["relative_regret"] for _, x in recs])
            better = [x["regret"] < units[(w, "fixed")]["records"][r]["regret"]
                      for w, x in recs if (w, "fixed") in units and s != "fixed" and r > 0]
            lo, hi = _bootstrap_mean(regret)
            rows.append({"strategy": "seed design" if r == 0 else s, "round": r, "added_cost": recs[0][1]["added_cost"],
                         "worlds": len(recs), "median": float(np.median(regret)),
                         "q25": float(np.quantile(regret, 0.25)), "q75": float(np.quantile(regret, 0.75)),
                         "mean": float(regret.mean()), "mean_lo90": lo, "mean_hi90": hi,
                         "median_relative": float(np.median(rel)),
                         "better_than_fixed": None if not better else int(sum(better)),
                         "compared": len(better)})
    headline = {}
    for s in ("propose", "propose-refit", "random"):
        pairs = [w for w in worlds if (w, s) in units and (w, "fixed") in units]
        if not pairs:
            continue
        shares = np.array([reach_share(units[(w, s)]["records"], units[(w, "fixed")]["records"]) for w in pairs])
        shares = np.minimum(shares, NOT_REACHED)
        headline[s] = {
            "worlds": pairs, "shares": [_finite(x) for x in shares],
            # empirical quantiles (no interpolation: halfway between 50 % and "never" means nothing)
            "median": _finite(np.quantile(shares, 0.5, method="inverted_cdf")),
            "q25": _finite(np.quantile(shares, 0.25, method="inverted_cdf")),
            "q75": _finite(np.quantile(shares, 0.75, method="inverted_cdf")),
            "min": _finite(shares.min()), "max": _finite(shares.max()),
            "at_most_half": int(np.sum(shares <= 0.5)), "not_reached": int(np.sum(shares >= NOT_REACHED)),
        }
        # the same on the mean curve over worlds
        mean_curve = np.mean([[x["regret"] for x in units[(w, s)]["records"]] for w in pairs], axis=0)
        fixed_final = float(np.mean([units[(w, "fixed")]["records"][-1]["regret"] for w in pairs]))
        costs = [x["added_cost"] for x in units[(pairs[0], s)]["records"]]
        hit = next((c for c, m in zip(costs, mean_curve) if m <= fixed_final), None)
        headline[s]["mean_curve_share"] = None if hit is None else hit / units[(pairs[0], "fixed")]["records"][-1]["added_cost"]
    uniform = np.array([units[(w, strategies[0])]["uniform"]["regret"] for w in worlds if (w, strategies[0]) in units])
    return {"rows": rows, "headline": headline, "worlds": worlds,
            "uniform_regret": {"median": float(np.median(uniform)), "mean": float(uniform.mean())}}


def _share(x) -> str:
    return "not reached" if x is None or not np.isfinite(x) else f"{100 * x:.0f} %"


def markdown(summary: dict, settings: dict, seconds: float | None = None) -> str:
    s = settings
    seed_runs = seed_design([f"d{i}" for i in range(s["domains"])], 0)
    lines = [
        "# Sequential design: propose vs fixed vs random (issue 17)", "",
        f"{len(summary['worlds'])} worlds (`draw_world({s['domains']}, seed=w)`, w = {', '.join(map(str, summary['worlds']))}); "
        f"seed design {len(seed_runs)} runs / {sum(a.sum() for _, a in seed_runs):g} volumes; {s['rounds']} rounds of {s['round_cost']:g} volumes; allocation of "
        f"B = {s['budget']:g} volumes, objective mean; fits: {s['method']}"
        + (f" ({s['svi_steps']} steps, {s['draws']} draws)" if s["method"] == "svi" else
           f" ({s['chains']} x ({s['warmup']} + {s['draws']}))")
        + f", extrapolation {'on' if s['extrapolation'] else 'off'}; candidate runs up to {s['max_run']:g} volumes.", "",
        ("Regret = true summed loss of the recommended allocation − the oracle's (the same program on the true "
         "parameters). Median [25 %, 75 %] and mean [bootstrap 90 % CI] over worlds; `rel.` is the median regret "
         "as a share of the oracle's loss; `< fixed` counts worlds where the strategy's regret is below the fixed "
         "design's at the same cost."), "",
        "| strategy | added cost | worlds | median regret [IQR] | mean regret [90 % CI] | median rel. | < fixed |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in summary["rows"]:
        better = "" if row["better_than_fixed"] is None else f"{row['better_than_fixed']}/{row['compared']}"
        lines.append(f"| {row['strategy']} | {row['added_cost']:g} | {row['worlds']} | {row['median']:.3g} "
                     f"[{row['q25']:.3g}, {row['q75']:.3g}] | {row['mean']:.3g} [{row['mean_lo90']:.3g}, {row['mean_hi90']:.3g}] "
                     f"| {100 * row['median_relative']:.3f} % | {better} |")
    u = summary["uniform_regret"]
    lines += ["", f"For scale: the uniform split of B has regret median {u['median']:.3g}, mean {u['mean']:.3g}.", ""]
    for name, h in summary["headline"].items():
        lines.append(
            f"**{name} reaching the fixed design's final regret**, share of the fixed design's added cost: median "
            f"{_share(h['median'])} (IQR {_share(h['q25'])} – {_share(h['q75'])}, range {_share(h['min'])} – {_share(h['max'])}); "
            f"≤ 50 % in {h['at_most_half']} of {len(h['worlds'])} worlds, never in {h['not_reached']}; "
            f"on the mean regret curve over worlds: {_share(h['mean_curve_share'])}. Per world: "
            + ", ".join(f"w{w} {_share(x)}" for w, x in zip(h["worlds"], h["shares"])) + ".")
        lines.append("")
    if seconds is not None:
        lines.append(f"The strategies' rounds took {seconds / 60:.1f} min in all (each unit's own time, whichever run "
                     "computed it; the seed designs' fits not counted).")
    return "\n".join(lines).rstrip() + "\n"


# ------------------------------------------------------------------------------------ command line


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{value} must be > 0")
    return value


def strategy_list(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in names if s not in STRATEGIES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(STRATEGIES)}")
    return list(dict.fromkeys(names))


def settings_of(args) -> dict:
    settings = {"format": FORMAT, "domains": args.domains, "budget": args.budget, "rounds": args.rounds,
                "round_cost": args.round_cost, "max_run": args.max_run, "fixed_mixtures": FIXED_MIXTURES,
                "method": args.method, "draws": args.draws, "extrapolation": args.extrapolation,
                "outcomes": args.outcomes, "decisions": args.decisions, "max_batch": MAX_BATCH, "seed": args.seed}
    if args.method == "svi":
        settings["svi_steps"] = args.svi_steps
    else:
        settings.update(chains=args.chains, warmup=args.warmup)
    return settings


def main(argv=None, log=print) -> int:
    from bayescale.inference.sampling import ensure_host_devices

    ensure_host_devices()  # parallel chains (--method nuts): before anything starts JAX
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder (default analyses/results/sequential-design)")
    parser.add_argument("--worlds", type=positive_int, default=10, help="worlds 0 .. N-1 (default 10)")
    parser.add_argument("--domains", type=positive_int, default=5, help="domains K per world (default 5)")
    parser.add_argument("--rounds", type=positive_int, default=4, help="rounds per strategy (default 4)")
    parser.add_argument("--round-cost", type=positive_float, default=96.0, help="volumes per round (default 96)")
    parser.add_argument("--budget", type=positive_float, default=64.0, help="allocation budget B in volumes (default 64)")
    parser.add_argument("--max-run", type=positive_float, default=32.0, help="largest candidate run (default 32 volumes)")
    parser.add_argument("--strategies", type=strategy_list, default=list(DEFAULT_STRATEGIES),
                        help="comma-separated of propose, fixed, random, propose-refit (default the first three)")
    parser.add_argument("--method", choices=("nuts", "svi"), default="nuts", help="how every posterior is fitted (default nuts)")
    parser.add_argument("--draws", type=positive_int, default=None, help="posterior draws (svi 1000; nuts per chain 500)")
    parser.add_argument("--svi-steps", type=positive_int, default=5000)
    parser.add_argument("--chains", type=positive_int, default=2, help="NUTS chains (default 2)")
    parser.add_argument("--warmup", type=positive_int, default=300, help="NUTS warm-up (default 300)")
    parser.add_argument("--extrapolation", action="store_true", help="calibrate the slope error past the data in every fit")
    parser.add_argument("--outcomes", type=positive_int, default=128, help="propose: simulated outcomes per batch (default 128)")
    parser.add_argument("--decisions", type=positive_int, default=64, help="propose: per-draw optima in the decision set (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulated noise, fits and proposals (default 0)")
    parser.add_argument("--force", action="store_true", help="recompute finished units")
    args = parser.parse_args(argv)
    if args.domains < 2:
        parser.error(f"--domains {args.domains}: at least 2")
    if args.outcomes < 2:
        parser.error(f"--outcomes {args.outcomes}: at least 2")
    if args.draws is None:
        args.draws = 1000 if args.method == "svi" else 500
    settings = settings_of(args)
    try:
        costs = check_costs(settings)
    except InputError as error:
        parser.error(str(error))
    out = args.out
    (out / "units").mkdir(parents=True, exist_ok=True)
    log(f"sequential design: {args.worlds} worlds x {', '.join(args.strategies)}; rounds of "
        f"{', '.join(f'{c:g}' for c in costs)} volumes; B = {args.budget:g}; fits {args.method}; results in {out}")
    units = {}
    try:
        for w in range(args.worlds):
            start = None
            for strategy in args.strategies:
                path = unit_path(out, w, strategy)
                saved = None if args.force else read_saved(path, settings)
                if saved is not None:
                    units[(w, strategy)] = saved
                    log(f"world {w} {strategy}: finished before (final regret {saved['records'][-1]['regret']:.4g})")
                    continue
                t0 = time.perf_counter()
                if start is None:
                    start = seed_state(w, settings)
                    log(f"world {w}: seed design fitted, regret {start.record['regret']:.4g} "
                        f"(oracle loss {start.oracle['loss']:.4f}, uniform split's regret {start.uniform['regret']:.4g})")
                unit = run_unit(w, strategy, settings, start, costs, log=log)
                write_text_atomic(path, json.dumps(unit, indent=1) + "\n")
                units[(w, strategy)] = unit
                # Every round's grid has a new size, so a new compiled sampler: XLA keeps them all, and
                # about 60 of them exhausted the process's memory maps (LLVM "Cannot allocate memory").
                jax.clear_caches()
                log(f"world {w} {strategy}: done in {time.perf_counter() - t0:.0f} s, final regret "
                    f"{unit['records'][-1]['regret']:.4g}")
    except KeyboardInterrupt:
        log("interrupted: finished units are saved; the same command resumes")
        return 130
    except InputError as error:
        log(f"error: {error}")
        return 2
    summary = summarise(units)
    text = markdown(summary, settings, sum(unit["seconds"] for unit in units.values()))
    write_text_atomic(out / "summary.md", text)
    write_text_atomic(out / "summary.json", json.dumps({"settings": settings, **summary}, indent=1) + "\n")
    log("")
    log(text)
    log(f"wrote {out / 'summary.md'} and {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
