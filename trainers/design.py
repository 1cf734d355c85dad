"""The run design: which runs make the grid, how many volumes of each domain each one trains on.

From ``[design]`` of the config:

- single-domain ladders: one run per (seed, domain, fit budget), ``single-<domain>-n<B>-s<seed>``;
- Dirichlet mixtures: ``mixtures_per_budget`` draws per mixture budget (default: the fit budgets
  of at least two volumes), ``mix-b<B>-m<k>-s<seed>``; the proportions depend only on
  (design_seed, budget, k), so every seed replicates the same mixtures;
- held-out runs (``split = "holdout"``) at budgets above every fit run: mixtures
  (``holdout_mixtures_per_budget``) and, with ``holdout_single_domain``, ladders continued;
- explicit runs (``[[design.runs]]``) with their own id, data, seed and split, from the config or
  from a design file (:func:`trainers.config.with_extra_runs`); errors about a run from a design
  file name that file.

A run's data vector is the number of unique training volumes of each domain it may use; a run with
seed s uses the first n volumes of a fixed permutation of the domain's pool that depends only on
(s, domain), so within a seed the sets are nested. Its step count comes from the training config
(fixed, or proportional to its budget).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bayescale.errors import InputError
from trainers.config import TrainConfig


@dataclass(frozen=True)
class RunSpec:
    id: str
    data: dict[str, int]  # volumes per source domain (every design domain, zeros included)
    seed: int
    split: str  # "fit" | "holdout"
    kind: str  # "single" | "mixture" | "explicit"
    steps: int
    order: int = 0

    @property
    def budget(self) -> int:
        return int(sum(self.data.values()))

    def as_dict(self) -> dict:
        return {"id": self.id, "data": dict(self.data), "seed": self.seed, "split": self.split, "kind": self.kind,
                "steps": self.steps, "order": self.order}

    def same_work(self, other: dict) -> bool:
        """Whether a record's run spec asks for the same computation as this one."""
        return (
            {k: int(v) for k, v in other.get("data", {}).items() if int(v)} == {k: v for k, v in self.data.items() if v}
            and int(other.get("seed", -1)) == self.seed
            and int(other.get("steps", -1)) == self.steps
        )


def round_to_budget(weights: np.ndarray, budget: int) -> np.ndarray:
    """Integers >= 0 summing to ``budget`` closest to ``weights * budget`` (largest remainder)."""
    raw = np.asarray(weights, dtype=float) * budget
    counts = np.floor(raw).astype(int)
    short = budget - int(counts.sum())
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[:short]] += 1
    return counts


def dirichlet_counts(domains: list[str], budget: int, concentration: float, seed) -> dict[str, int]:
    """A Dirichlet mixture of ``budget`` volumes over ``domains`` with at least two domains present."""
    rng = np.random.default_rng(seed)
    counts = None
    for _ in range(100):
        counts = round_to_budget(rng.dirichlet(np.full(len(domains), concentration)), budget)
        if (counts > 0).sum() >= min(2, len(domains), budget):
            break
    return {d: int(c) for d, c in zip(domains, counts)}


def make_design(config: TrainConfig, available: dict[str, int]) -> list[RunSpec]:
    """Every run of the config's design, in a fixed order; checks each against the available volumes.

    ``available`` maps every domain (in manifest order) to the size of its training pool. A run
    asking for more volumes than a domain has, or naming an unknown domain, is an InputError.
    """
    design, training = config.design, config.training
    where = str(config.path)
    manifest_domains = list(available)
    if design.domains is not None:
        for d in design.domains:
            if d not in available:
                raise InputError(f"{where}: design.domains names {d!r}, which the manifest does not have (it has {', '.join(manifest_domains)})")
        domains = list(design.domains)
    else:
        domains = manifest_domains
    runs: list[RunSpec] = []
    origins: list[str] = []  # the file that defines each run, for its error messages

    def add(run_id, amounts, seed, split, kind, origin=where):
        data = {d: int(amounts.get(d, 0)) for d in domains}
        budget = sum(data.values())
        if budget <= 0:
            raise InputError(f"{origin}: run {run_id!r} has no training data")
        runs.append(RunSpec(id=run_id, data=data, seed=seed, split=split, kind=kind,
                            steps=training.steps_for(budget), order=len(runs)))
        origins.append(origin)

    mixture_budgets = design.mixture_budgets if design.mixture_budgets is not None else tuple(b for b in design.fit_budgets if b >= 2)
    fit_max = max(design.fit_budgets, default=0)
    for seed in design.seeds:
        if design.single_domain:
            for d in domains:
                for b in design.fit_budgets:
                    add(f"single-{d}-n{b:03d}-s{seed}", {d: b}, seed, "fit", "single")
        if len(domains) > 1:
            for b in mixture_budgets:
                for k in range(design.mixtures_per_budget):
                    counts = dirichlet_counts(domains, b, design.concentration, [design.design_seed, b, k])
                    add(f"mix-b{b:03d}-m{k}-s{seed}", counts, seed, "fit", "mixture")
        for b in design.holdout_budgets:
            if design.holdout_single_domain:
                for d in domains:
                    add(f"holdout-single-{d}-n{b:03d}-s{seed}", {d: b}, seed, "holdout", "single")
            if len(domains) > 1:
                for k in range(design.holdout_mixtures_per_budget):
                    counts = dirichlet_counts(domains, b, design.concentration, [design.design_seed, b, 1000 + k])
                    add(f"holdout-mix-b{b:03d}-m{k}-s{seed}", counts, seed, "holdout", "mixture")
    for r in design.runs:
        origin = where if r.source is None else str(r.source)
        for d in r.data:
            if d not in domains:
                raise InputError(f"{origin}: run {r.id!r} names domain {d!r}, which is not a design domain ({', '.join(domains)})")
        add(r.id, r.data, r.seed, r.split, "explicit", origin)

    seen: dict[str, str] = {}  # run id -> the file that defines it
    for run, origin in zip(runs, origins):
        if run.id in seen:
            first = "" if seen[run.id] == origin else f" (first in {seen[run.id]})"
            raise InputError(f"{origin}: run id {run.id!r} appears twice in the design{first}")
        seen[run.id] = origin
        for d, n in run.data.items():
            if n > available[d]:
                raise InputError(
                    f"{origin}: run {run.id!r} asks for {n} volumes of domain {d!r}, which has only {available[d]} "
                    "training volumes (after the validation split)"
                )
        if run.split == "holdout" and fit_max and run.budget <= fit_max:
            raise InputError(f"{origin}: held-out run {run.id!r} has budget {run.budget}, not above the largest fit budget {fit_max}")
    if mixture_budgets and fit_max and max(mixture_budgets) > fit_max:
        raise InputError(f"{where}: design.mixture_budgets go up to {max(mixture_budgets)}, above the largest fit budget {fit_max}")
    return runs


def pool_order(domain: str, seed: int, n: int) -> list[int]:
    """The order in which runs with ``seed`` take volumes from a pool of ``n``: nested prefixes."""
    from trainers.domains import stable_int

    return [int(i) for i in np.random.default_rng([int(seed), stable_int("pool", domain)]).permutation(n)]
