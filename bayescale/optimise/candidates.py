"""The runs ``bayescale propose`` chooses among: generated (single domains, pairs, Dirichlet mixtures
at a ladder of budgets) or listed in a CSV, each with its cost.

A candidate is one proxy run to train: an amount of data per source in the grid's raw units. Its
cost is what training it takes: by default its total data (``volumes``: a run's steps grow with its
data), or per-source unit costs from a file.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import math
import tomllib
from pathlib import Path

import numpy as np
import xarray as xr

from bayescale.errors import InputError

#: Budgets of generated runs: the largest (``max_run_budget``) and its halvings, this many in all.
LADDER = 4
#: Generated Dirichlet mixtures per budget (concentration 1: every share pattern as likely).
MIXTURES_PER_BUDGET = 32


@dataclasses.dataclass(frozen=True)
class Candidates:
    """Candidate runs: ``names`` (C,), ``amounts`` (C, I) raw units over ``sources``, ``costs`` (C,)."""

    sources: tuple[str, ...]
    names: tuple[str, ...]
    amounts: np.ndarray
    costs: np.ndarray
    cost_unit: str  # what a cost counts: "volumes" (total data) or the cost file's name

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, index) -> Candidates:
        index = np.asarray(index)
        return dataclasses.replace(self, names=tuple(self.names[i] for i in index), amounts=self.amounts[index],
                                   costs=self.costs[index])


def integer_units(grid: xr.Dataset) -> bool:
    """Whether every data amount of the grid is a whole number (volumes): then candidates are too."""
    data = grid["data"].values
    return bool(np.all(np.isfinite(data)) and np.all(data == np.round(data)))


def largest_fit_budget(grid: xr.Dataset) -> float:
    fit = grid["split"].values == "fit"
    return float(grid["data"].values[np.flatnonzero(fit)].sum(axis=-1).max() if fit.any() else grid["data"].values.sum(-1).max())


def auto_candidates(sources, grid: xr.Dataset, *, max_run_budget: float | None = None, ladder: int = LADDER,
                    mixtures_per_budget: int = MIXTURES_PER_BUDGET, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """Generated runs: every single source, every pair half and half, and ``mixtures_per_budget``
    Dirichlet mixtures, at ``max_run_budget`` (default: the grid's largest fit run) and its ``ladder - 1``
    halvings. Whole units where the grid's amounts are whole (volumes); duplicates dropped."""
    sources = list(sources)
    top = largest_fit_budget(grid) if max_run_budget is None else float(max_run_budget)
    if not (math.isfinite(top) and top > 0):
        raise InputError(f"max_run_budget {max_run_budget}: expected a positive number", parameter="max_run_budget")
    whole = integer_units(grid)
    budgets = sorted({round(top / 2**k) if whole else top / 2**k for k in range(ladder)} - {0})
    rng = np.random.default_rng([seed, 17])
    out, seen = [], set()

    def add(name, shares, budget):
        amounts = shares_to_amounts(np.asarray(shares, dtype=np.float64), budget, whole)
        key = tuple(np.round(amounts, 9))
        if amounts.sum() > 0 and key not in seen:
            seen.add(key)
            out.append((name, amounts))

    for budget in budgets:
        label = f"{budget:g}"
        for i, s in enumerate(sources):
            add(f"{s}-{label}", np.eye(len(sources))[i], budget)
        for i, j in itertools.combinations(range(len(sources)), 2):
            shares = np.zeros(len(sources))
            shares[[i, j]] = 0.5
            add(f"{sources[i]}+{sources[j]}-{label}", shares, budget)
        for k in range(mixtures_per_budget):
            add(f"mix{k}-{label}", rng.dirichlet(np.ones(len(sources))), budget)
    return out


def shares_to_amounts(shares: np.ndarray, budget: float, whole: bool) -> np.ndarray:
    """``shares`` (summing to 1) of ``budget``; in whole units by largest remainder where ``whole``."""
    raw = shares / shares.sum() * budget
    if not whole:
        return raw
    counts = np.floor(raw)
    short = int(round(budget - counts.sum()))
    counts[np.argsort(-(raw - counts), kind="stable")[:short]] += 1
    return counts


def read_candidates(path: Path, sources) -> list[tuple[str, np.ndarray, float | None]]:
    """Runs listed in a CSV: a column per source (raw units; a missing source column is 0), an
    optional ``name`` and an optional ``cost``. One line per bad cell, naming file, row and column."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"candidates {path}: no such file (give auto or a CSV with a column per source)", parameter="candidates")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise InputError(f"{path}: no candidate rows")
    columns = set(rows[0])
    unknown = sorted(columns - set(sources) - {"name", "cost"})
    if unknown:
        raise InputError(f"{path}: column {unknown[0]!r} is not a source of the posterior ({', '.join(sources)}), "
                         "nor 'name' or 'cost'")
    if not columns & set(sources):
        raise InputError(f"{path}: no column names a source ({', '.join(sources)})")
    out = []
    for k, row in enumerate(rows, start=2):  # line 1 is the header
        amounts = np.array([_number(path, k, s, row.get(s) or "0") for s in sources])
        if np.any(amounts < 0) or amounts.sum() <= 0:
            raise InputError(f"{path}: line {k}: amounts must be >= 0 with some data")
        cost = None
        if (row.get("cost") or "").strip():
            cost = _number(path, k, "cost", row["cost"])
            if cost <= 0:
                raise InputError(f"{path}: line {k}: cost {cost:g} must be > 0")
        out.append(((row.get("name") or "").strip() or f"line{k}", amounts, cost))
    return out


def _number(path, line, column, text) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{path}: line {line}, column {column!r}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise InputError(f"{path}: line {line}, column {column!r}: {text!r} is not finite")
    return value


def unit_costs(spec: str, sources) -> tuple[np.ndarray, str]:
    """Cost per raw unit of each source: ``volumes`` (1 each: a run costs its total data) or a TOML
    file of ``source = cost`` (sources it leaves out cost 1)."""
    if spec == "volumes":
        return np.ones(len(sources)), "volumes"
    path = Path(spec)
    if not path.is_file():
        raise InputError(f"run_cost {spec}: neither 'volumes' nor a file", parameter="run_cost")
    try:
        table = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"run_cost {path}: not TOML ({str(exc).splitlines()[0]})", parameter="run_cost") from None
    costs = np.ones(len(sources))
    for name, value in table.items():
        if name not in sources:
            raise InputError(f"run_cost {path}: {name!r} is not a source ({', '.join(sources)})", parameter="run_cost")
        if isinstance(value, bool) or not isinstance(value, int | float) or not (math.isfinite(value) and value > 0):
            raise InputError(f"run_cost {path}: {name} = {value!r}; a cost per unit must be a number > 0", parameter="run_cost")
        costs[list(sources).index(name)] = float(value)
    return costs, path.name


def make_candidates(sources, grid: xr.Dataset, spec: str | Path = "auto", *, run_cost: str = "volumes",
                    max_run_budget: float | None = None, mixtures_per_budget: int = MIXTURES_PER_BUDGET,
                    seed: int = 0) -> Candidates:
    """The candidate runs of ``spec`` (``auto`` or a CSV path) with their costs."""
    sources = tuple(sources)
    per_unit, unit = unit_costs(run_cost, sources)
    if str(spec) == "auto":
        rows = [(name, amounts, None) for name, amounts in auto_candidates(
            sources, grid, max_run_budget=max_run_budget, mixtures_per_budget=mixtures_per_budget, seed=seed)]
    else:
        rows = read_candidates(Path(spec), sources)
    amounts = np.array([r[1] for r in rows], dtype=np.float64)
    costs = np.array([per_unit @ a if c is None else c for (_, a, c) in rows], dtype=np.float64)
    names = tuple(r[0] for r in rows)
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise InputError(f"candidates {spec}: the name {dup!r} is used twice", parameter="candidates")
    return Candidates(sources=sources, names=names, amounts=amounts, costs=costs, cost_unit=unit)


__all__ = ["Candidates", "auto_candidates", "make_candidates", "read_candidates", "unit_costs"]
