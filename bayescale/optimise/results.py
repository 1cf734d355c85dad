"""What :func:`~bayescale.optimise.allocate.allocate` returns: typed results, each with its JSON.

:class:`AllocationResult` and the records inside it are frozen dataclasses. Their
:meth:`~Record.to_dict` writes the JSON that ``bayescale allocate --json`` writes (the same
keys, in the same order, and the same numbers); a key that only some results have (the
baselines, the allocation path, ...) is a field that is ``None`` when it is absent.

Every record is also a read-only mapping over that JSON (``result["allocation"]``,
``result.get("path")``, ``"costs" in result``), so code written for the dict that
``allocate`` used to return, or for the JSON file read back, keeps working; nested values
read that way are plain dicts and lists.

Units: *raw data units* are the units of the grid's data amounts (``data_unit``); *cost
units* are raw units times the per-source ``costs`` (1 by default, so the budget is then in
raw units); *loss units* are the law's loss, times the target weights where a value is a
weighted objective.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from bayescale.records import Record, plain


@dataclasses.dataclass(frozen=True, eq=True)
class PredictedLoss(Record):
    """The posterior of one target's loss (loss units) under an allocation, over all posterior draws."""

    mean: float  #: posterior mean of the loss
    lo: float  #: lower end of the central credible interval (``interval`` of :func:`allocate`)
    hi: float  #: upper end of that interval

    def to_dict(self):
        return self._ordered(("mean", "lo", "hi"))


@dataclasses.dataclass(frozen=True, eq=True)
class Reduction(Record):
    """Relative reduction ``1 - R_rec / R_base`` of the weighted reducible loss ``sum_j v_j (L_j - E_j)``
    that the recommendation achieves against a baseline (a share: 0.1 is 10 % less); None where
    the baseline's reducible loss is zero in every draw."""

    of_means: float | None  #: of the posterior means of R_rec and R_base
    mean: float | None  #: posterior mean of the per-draw reduction
    lo: float | None  #: lower end of the central interval of the per-draw reduction
    hi: float | None  #: upper end of that interval
    probability_better: float | None  #: posterior probability that the recommendation has the lower R

    def to_dict(self):
        return self._ordered(("of_means", "mean", "lo", "hi", "probability_better"))


@dataclasses.dataclass(frozen=True, eq=True)
class BaselineResult(Record):
    """One comparison: a mixing rule (uniform, proportional, temperature), the transfer-unaware
    optimum (the program solved under the independent law fitted to the same grid) or the
    ``transfer_zeroed`` ablation (solved with T = 0 inside the transfer posterior).

    ``allocation`` is None (and only ``feasible`` and ``note`` say more) where the rule never meets
    the chance constraints under the caps, or the program without transfer is infeasible.
    Every comparison is judged under the real (transfer) posterior.
    """

    allocation: dict[str, float] | None  #: raw data units per source
    feasible: bool  #: meets the group and chance constraints (on the optimisation draws)
    objective_value: float | None = None  #: the objective on the optimisation draws (loss units; spend in cost units for the least budget)
    predicted: dict[str, PredictedLoss] | None = None  #: predicted loss per target, over all draws
    spend: float | None = None  #: cost-weighted spend (cost units)
    violations: list[str] | None = None  #: constraints it breaks, e.g. "group:ct_*>=0.3 (share 0.210)"
    reducible_loss_reduction: Reduction | None = None  #: what the recommendation gains against it
    note: str | None = None  #: why there is no allocation
    temperature: float | None = None  #: the temperature tau of the temperature-sampling rule
    objective_value_assumed: float | None = None  #: transfer-unaware / zeroed: its objective under the law it was solved with
    seconds: float | None = None  #: transfer-unaware / zeroed: wall-clock time of its solve
    description: str | None = None  #: transfer-unaware / zeroed: what this comparison is (the law it was solved under)

    def to_dict(self):
        if self.allocation is None:
            return self._ordered(("allocation", "feasible", "note", "temperature", "description"),
                                 omit_none=("note", "temperature", "description"))
        return self._ordered(
            ("allocation", "objective_value", "predicted", "spend", "feasible", "violations", "reducible_loss_reduction",
             "note", "temperature", "objective_value_assumed", "seconds", "description"),
            omit_none=("note", "temperature", "objective_value_assumed", "seconds", "description"),
        )


@dataclasses.dataclass(frozen=True, eq=True)
class ValueOfTransfer(Record):
    """The headline comparisons: against the reference rule and against ignoring transfer.

    Ignoring transfer is, when :func:`~bayescale.optimise.allocate.allocate` was given ``unaware``
    (a posterior of the independent law fitted to the same grid), the fair ``transfer_unaware``
    optimum; without it, the ``transfer_zeroed`` ablation, which is not what a planner without
    transfer modelling would choose, and ``note`` says so.

    JSON keys: ``reference``, ``vs_<name>`` (a :class:`Reduction`, or None) per compared baseline
    and, for the least budget, ``budget_saving_vs_<name>``: ``1 - spend / spend of <name>``
    (a share of that baseline's spend; None where it has none); then ``transfer_baseline`` and
    ``note`` (absent when None).
    """

    reference: str  #: the reference rule: "proportional" where every free source has a cap, else "uniform"
    reductions: dict[str, Reduction | None]  #: baseline name -> reducible-loss reduction against it
    budget_savings: dict[str, float | None] | None = None  #: least budget only: baseline name -> share of its spend saved
    transfer_baseline: str | None = None  #: which comparison stands for ignoring transfer: "transfer_unaware" or "transfer_zeroed"
    note: str | None = None  #: when the comparison is the ablation: why the figure is not the fair one

    def to_dict(self):
        out: dict[str, Any] = {"reference": self.reference}
        out.update({f"vs_{name}": plain(value) for name, value in self.reductions.items()})
        if self.budget_savings is not None:
            out.update({f"budget_saving_vs_{name}": value for name, value in self.budget_savings.items()})
        if self.transfer_baseline is not None:
            out["transfer_baseline"] = self.transfer_baseline
        if self.note is not None:
            out["note"] = self.note
        return out


@dataclasses.dataclass(frozen=True, eq=True)
class ChanceReport(Record):
    """How the recommendation meets one chance constraint ``P(L_target <= threshold) >= probability``.

    ``loss`` says which loss: ``"predictive"``, the loss one run will observe (the law's loss times
    one run's noise, drawn once per draw; on the held-out draws fresh noise), or ``"expected"``,
    the law's loss."""

    constraint: str  #: as normalised, e.g. "ct<=0.12@0.95"
    target: str  #: the target domain
    loss: str  #: "predictive" (one run's observed loss, noise included) or "expected" (the law's loss)
    threshold: float  #: loss threshold tau (loss units)
    probability: float  #: required probability p
    cvar_optimisation_draws: float  #: CVaR_p of that loss on the optimisation draws (<= tau: met)
    achieved_optimisation_draws: float  #: share of optimisation draws with that loss <= tau
    achieved_held_out: float | None  #: share of held-out draws (fresh noise) with that loss <= tau (None: none held out)
    held_out_se: float | None  #: binomial standard error of achieved_held_out, sqrt(p (1 - p) / n)
    held_out_draws: int  #: number of held-out draws
    met_held_out: bool | None  #: achieved_held_out >= probability (None: none held out)

    def to_dict(self):
        return self._ordered(("constraint", "target", "loss", "threshold", "probability", "cvar_optimisation_draws",
                              "achieved_optimisation_draws", "achieved_held_out", "held_out_se", "held_out_draws",
                              "met_held_out"))


@dataclasses.dataclass(frozen=True, eq=True)
class Certificate(Record):
    """The certified optimality of the recommendation (see :mod:`bayescale.optimise.riskprog`)."""

    method: str  #: how the bound is found
    lower_bound: float | None  #: certified lower bound on the optimal objective (objective units; None: not finite)
    gap: float | None  #: objective - lower_bound (objective units)
    relative_gap: float | None  #: gap / |objective|; "optimal" needs it <= GAP_TOL
    iterations: int  #: SQP iterations
    qp_solves: int  #: quadratic subproblems solved
    seconds: float  #: wall-clock time of the solve
    max_chance_violation: float  #: largest relative excess of a chance constraint's CVaR over its threshold (0: met)

    def to_dict(self):
        return self._ordered(("method", "lower_bound", "gap", "relative_gap", "iterations", "qp_solves", "seconds",
                              "max_chance_violation"))


@dataclasses.dataclass(frozen=True, eq=True)
class PathEntry(Record):
    """The solution at one budget of the allocation path (``budgets``); ``message`` only when infeasible."""

    budget: float  #: the budget (cost units)
    status: str  #: "optimal", "optimal_inaccurate" or "infeasible"
    allocation: dict[str, float] | None = None  #: raw data units per source
    fractions: dict[str, float] | None = None  #: share of the total amount per source
    objective_value: float | None = None  #: the objective on the optimisation draws (loss units)
    shadow_price: float | None = None  #: d objective / d budget (loss units per cost unit, <= 0)
    relative_gap: float | None = None  #: certified relative gap (None: not finite)
    message: str | None = None  #: why the budget is infeasible
    seconds: float = 0.0  #: wall-clock time of this solve

    def to_dict(self):
        if self.status == "infeasible":
            return self._ordered(("budget", "status", "message", "seconds"))
        return self._ordered(("budget", "status", "allocation", "fractions", "objective_value", "shadow_price",
                              "relative_gap", "seconds"))


@dataclasses.dataclass(frozen=True, eq=True)
class IntegerRounding(Record):
    """The best whole-unit allocation next to the recommendation that meets every constraint."""

    allocation: dict[str, float] | None  #: whole raw units per source (fixed sources keep their amount); None: none found
    note: str  #: how it was found, or why there is none
    candidates_checked: int  #: roundings judged
    objective_value: float | None = None  #: its objective (loss units; spend for the least budget)
    objective_loss_vs_continuous: float | None = None  #: objective_value minus the continuous recommendation's
    predicted: dict[str, PredictedLoss] | None = None  #: predicted loss per target, over all draws

    def to_dict(self):
        if self.allocation is None:
            return self._ordered(("allocation", "note", "candidates_checked"))
        return self._ordered(("allocation", "objective_value", "objective_loss_vs_continuous", "predicted",
                              "candidates_checked", "note"))


@dataclasses.dataclass(frozen=True, eq=True)
class Spread(Record):
    """A posterior summary over the per-draw optima: mean, median and central interval (``interval``)."""

    mean: float
    median: float
    lo: float
    hi: float

    def to_dict(self):
        return self._ordered(("mean", "median", "lo", "hi"))


@dataclasses.dataclass(frozen=True, eq=True)
class DecisionUncertainty(Record):
    """How sure the recommendation is: the optimal allocations of single posterior draws (``uncertainty`` of them).

    ``error`` instead of the summaries where computing them failed (the recommendation stands).
    """

    draws: int  #: posterior draws whose own optimum was sought
    solved: int | None = None  #: how many of them were solved
    fractions: dict[str, Spread] | None = None  #: per source: share of the total amount in the per-draw optima
    amounts: dict[str, Spread] | None = None  #: per source: raw data units in the per-draw optima
    largest_share: dict[str, float] | None = None  #: per source: share of draws whose optimum gives it the most
    distance_to_recommendation: Spread | None = None  #: total-variation distance of the shares to the recommendation's
    spend: Spread | None = None  #: cost-weighted spend of the per-draw optima (cost units)
    seconds: float | None = None  #: wall-clock time
    what: str | None = None  #: what was optimised per draw
    error: str | None = None  #: why there is no summary

    def to_dict(self):
        if self.error is not None:
            return self._ordered(("draws", "error"))
        return self._ordered(("draws", "solved", "fractions", "amounts", "largest_share", "distance_to_recommendation",
                              "spend", "seconds", "what"), omit_none=("distance_to_recommendation", "spend"))

    @classmethod
    def from_summary(cls, summary: Mapping, *, seconds: float, what: str) -> DecisionUncertainty:
        """From :func:`bayescale.optimise.decisions.summarise_decisions`' dict."""
        spread = lambda d: None if d is None else Spread(**d)  # noqa: E731
        return cls(
            draws=summary["draws"], solved=summary["solved"],
            fractions={k: Spread(**v) for k, v in summary["fractions"].items()},
            amounts={k: Spread(**v) for k, v in summary["amounts"].items()},
            largest_share=dict(summary["largest_share"]),
            distance_to_recommendation=spread(summary.get("distance_to_recommendation")),
            spend=spread(summary.get("spend")), seconds=seconds, what=what,
        )


@dataclasses.dataclass(frozen=True, eq=True)
class AllocationResult(Record):
    """The recommended allocation and everything around it (what ``bayescale allocate --json`` writes).

    Fields that are None are absent from :meth:`to_dict` (they belong to options not taken),
    except ``shadow_price``, which is always written.
    """

    status: str  #: "optimal" (certified gap <= GAP_TOL) or "optimal_inaccurate"
    mode: str  #: "budget" (minimise the objective within the budget) or "min_budget" (least spend meeting the chance constraints)
    objective: str  #: the objective's name ("mean", "cvar:0.9", "minimax:worst", ...), "spend" for the least budget
    objective_value: float  #: the objective on the optimisation draws (weighted loss units; cost units for "spend")
    allocation: dict[str, float]  #: raw data units per source
    fractions: dict[str, float]  #: share of the total raw amount per source
    predicted: dict[str, PredictedLoss]  #: predicted loss per target under the allocation, over all draws
    budget: float  #: the budget (cost units); the spend found, for the least budget
    spend: float  #: cost-weighted spend sum_i c_i D_i (cost units)
    weights: dict[str, float]  #: effective target weights (times 1 / posterior-mean loss at the uniform split when normalised)
    normalised: bool  #: whether target losses were normalised
    shadow_price: float | None  #: d objective / d budget (loss units per cost unit, <= 0); None for the least budget
    binding: list[str]  #: constraints met with equality: "budget", "max:<s>", "min:<s>", "fixed:<s>", "group:...", "chance:..."
    groups: dict[str, float]  #: per group constraint: the group's share of the budget (of the spend for the least budget)
    chance: list[ChanceReport]  #: one per chance constraint
    certificate: Certificate  #: certified optimality
    draws_used: int  #: posterior draws the program was solved on
    draws_held_out: int  #: posterior draws kept out to check the chance constraints
    solver: str  #: the QP solver of the subproblems
    solver_notes: list[str]  #: what happened on the way (fallbacks, polishing, warnings)
    seconds: float  #: wall-clock time of the whole call
    objective_value_all_draws: float | None = None  #: budget mode: the objective over all posterior draws
    chance_on: str | None = None  #: with chance constraints: "predictive" (one run's observed loss) or "expected"
    costs: dict[str, float] | None = None  #: cost per raw unit per source; absent when every cost is 1
    baselines: dict[str, BaselineResult] | None = None  #: the mixing rules "uniform" and (with caps) "proportional"
    temperature_sampling: BaselineResult | None = None  #: the temperature-sampling rule (with caps on every free source)
    transfer_unaware: BaselineResult | None = None  #: the optimum under the independent law (``unaware``), judged under the posterior
    transfer_zeroed: BaselineResult | None = None  #: ablation: the optimum with T = 0 inside the transfer posterior, judged under it
    value_of_transfer: ValueOfTransfer | None = None  #: the headline comparisons
    decision_uncertainty: DecisionUncertainty | None = None  #: the per-draw optima (``uncertainty`` > 0)
    path: list[PathEntry] | None = None  #: the allocation path (``budgets``)
    integer: IntegerRounding | None = None  #: whole units (``integer=True``)

    KEYS = ("status", "mode", "objective", "objective_value", "allocation", "fractions", "predicted", "budget", "spend",
            "weights", "normalised", "objective_value_all_draws", "costs", "shadow_price", "binding", "groups", "chance",
            "chance_on", "certificate", "draws_used", "draws_held_out", "solver", "solver_notes", "baselines", "temperature_sampling",
            "transfer_unaware", "transfer_zeroed", "value_of_transfer", "decision_uncertainty", "path", "integer", "seconds")
    OPTIONAL = ("objective_value_all_draws", "chance_on", "costs", "baselines", "temperature_sampling", "transfer_unaware",
                "transfer_zeroed", "value_of_transfer", "decision_uncertainty", "path", "integer")

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``bayescale allocate --json``: plain dicts, lists, numbers, strings, None."""
        return self._ordered(self.KEYS, omit_none=self.OPTIONAL)


@dataclasses.dataclass(frozen=True, eq=True)
class ProposedRun(Record):
    """One run of a proposed batch, in the order it was chosen (see :mod:`bayescale.optimise.propose`)."""

    name: str  #: the candidate's name
    amounts: dict[str, float]  #: raw data units per source (sources with data)
    cost: float  #: its run cost (``cost_unit``)
    gain: float  #: expected gain it adds to the runs chosen before it (objective units; variance units for "variance")
    gain_se: float  #: Monte Carlo standard error of that gain over the simulated outcomes
    gain_per_cost: float  #: gain / cost, what the greedy step maximised
    effective_draws: float  #: mean effective sample size of the importance weights with it added
    informs: dict[str, float]  #: the parameters whose posterior sd it shrinks most: expected sd after / before

    def to_dict(self):
        return self._ordered(("name", "amounts", "cost", "gain", "gain_se", "gain_per_cost", "effective_draws", "informs"))


@dataclasses.dataclass(frozen=True, eq=True)
class ProposalResult(Record):
    """What ``bayescale propose --json`` writes: the batch of runs to train next and what they are expected to buy."""

    criterion: str  #: "evoi" (expected improvement of the allocation's objective) or "variance"
    objective: str  #: the allocation objective ("mean", "cvar:0.9", "minimax")
    budget: float  #: the allocation budget the decision is about (cost units of allocate)
    recommendation: dict[str, float]  #: today's recommended allocation
    value_now: float  #: today's best objective over the decision set (variance: the recommendation's posterior variance)
    value_after: float  #: its expected value once the batch's losses are known
    expected_gain: float  #: value_now - value_after (>= 0): the batch's expected value of information
    expected_gain_se: float  #: its Monte Carlo standard error over the simulated outcomes
    cost: float  #: the batch's run cost
    cost_unit: str  #: "volumes" (a run costs its total data) or the cost file's name
    batch: list[ProposedRun]  #: the runs, in the order chosen
    candidates: int  #: candidate runs scored
    decisions: int  #: allocations in the decision set (the recommendation and per-draw optima)
    evaluation_draws: int  #: posterior draws reweighted
    outcomes: int  #: simulated outcomes per batch
    effective_draws: float  #: mean effective sample size of the whole batch's importance weights
    method: str  #: how the posterior after the batch was approximated
    notes: list[str]  #: warnings (few effective draws)
    seconds: float  #: wall-clock time

    KEYS = ("criterion", "objective", "budget", "recommendation", "value_now", "value_after", "expected_gain", "expected_gain_se", "cost",
            "cost_unit", "batch", "candidates", "decisions", "evaluation_draws", "outcomes", "effective_draws", "method",
            "notes", "seconds")

    def to_dict(self) -> dict[str, Any]:
        return self._ordered(self.KEYS)
