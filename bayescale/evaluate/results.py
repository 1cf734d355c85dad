"""What the held-out check and the hub analysis return: typed records (:class:`~bayescale.records.Record`).

Each record's :meth:`to_dict` writes the JSON of ``bayescale check --json`` or ``bayescale
hubs --json`` (the same keys, in the same order, as before results were typed), and the
record reads as a mapping over that JSON. Losses are in the grid's loss units; coverages
and probabilities are shares in [0, 1].
"""

from __future__ import annotations

import dataclasses
from typing import Any

from bayescale.records import Record

SCORE_FIELDS = ("n", "pearson_r", "median_abs_rel_error", "coverage_50", "coverage_90")


@dataclasses.dataclass(frozen=True, eq=True)
class Scores(Record):
    """How well predictions of held-out cells match what was measured."""

    n: int  #: observed held-out (run, target) cells scored
    pearson_r: float  #: Pearson correlation of predicted median and observed loss (NaN for one cell)
    median_abs_rel_error: float  #: median over cells of |median - observed| / observed
    coverage_50: float  #: share of cells inside their central 50 % predictive interval
    coverage_90: float  #: share of cells inside their central 90 % predictive interval

    def to_dict(self) -> dict[str, Any]:
        return self._ordered(SCORE_FIELDS)


@dataclasses.dataclass(frozen=True, eq=True)
class Calibration(Record):
    """Are the held-out intervals over- or under-confident (one-sided binomial tests)?"""

    verdict: str  #: "ok", "over-confident" or "under-confident"
    message: str  #: one line for a person
    p_values: dict[str, float]  #: per nominal level ("0.5", "0.9"): P(so few cells inside | calibrated)

    def to_dict(self) -> dict[str, Any]:
        return self._ordered(("verdict", "message", "p_values"))


@dataclasses.dataclass(frozen=True, eq=True)
class CoverageCurve(Record):
    """Empirical coverage of central predictive intervals at each nominal level (from the PIT values)."""

    nominal: list[float]  #: nominal levels
    empirical: list[float]  #: share of cells inside the central interval of each level
    lo: list[float]  #: 2.5 % binomial bound of the empirical coverage of a calibrated predictive with n cells
    hi: list[float]  #: 97.5 % bound
    n: int  #: cells

    def to_dict(self) -> dict[str, Any]:
        return self._ordered(("nominal", "empirical", "lo", "hi", "n"))


@dataclasses.dataclass(frozen=True, eq=True)
class LawScores(Record):
    """One law family fitted on the check's split and scored on its held-out runs."""

    law: str  #: registered family
    likelihood: str  #: its likelihood
    scores: Scores  #: held-out scores
    calibration: Calibration  #: verdict on its intervals
    mean_abs_log_error: float  #: mean over cells of |log median - log observed|
    divergences: int  #: NUTS divergences of its fit
    max_rhat: float  #: largest r-hat over its parameters (NaN for an approximate posterior)
    seconds: float  #: wall time of its fit (0 when an existing posterior was reused)

    def to_dict(self) -> dict[str, Any]:
        return {"law": self.law, "likelihood": self.likelihood, **self.scores.to_dict(), "calibration": self.calibration.to_dict(),
                **self._ordered(("mean_abs_log_error", "divergences", "max_rhat", "seconds"))}


@dataclasses.dataclass(frozen=True, eq=True)
class CheckResult(Record):
    """The held-out check of a posterior: scores, calibration and, where asked for, more.

    ``to_dict()`` flattens ``scores`` into the top level, as ``bayescale check --json`` writes it.
    """

    scores: Scores  #: held-out scores
    calibration: Calibration  #: verdict on the intervals
    coverage_curve: CoverageCurve | None = None  #: coverage at 19 nominal levels
    holdout_above: float | None = None  #: the budget cut of a refit (``cut``), if the check refitted
    laws: list[LawScores] | None = None  #: other families fitted on the same split, if asked for
    #: targets whose loss rises with more data of one mixture (no monotone law predicts them)
    rising: list[dict] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**self.scores.to_dict(), "calibration": self.calibration.to_dict(),
                **self._ordered(("coverage_curve", "holdout_above", "laws", "rising"),
                                omit_none=("coverage_curve", "holdout_above", "laws", "rising"))}


@dataclasses.dataclass(frozen=True, eq=True)
class HubsSummary(Record):
    """Hubs and islands with their posterior probabilities (the JSON of ``bayescale hubs``)."""

    definitions: dict[str, str]  #: what hub, island, out- and in-transfer mean here
    reference: float  #: source amount at which transfer is measured, in law units (multiples of D0)
    reference_data: float  #: the same amount in the grid's data units
    data_scale: float  #: D0
    thresholds: dict[str, float]  #: hub, hub_ratio and island thresholds of the labels
    interval: float  #: central interval of the transfer measures
    law: str  #: the posterior's law family
    draws: int  #: posterior draws used
    hubs: list[str]  #: domains labelled hub (P(hub) >= 0.5)
    islands: list[str]  #: domains labelled island (P(island) >= 0.5)
    domains: dict[str, dict]  #: per domain: role, out_transfer, in_transfer (mean, lo, hi), p_hub, p_island, label, exponent (median, lo, hi)
    #: per pair of domains that give and take: source, target (the stronger direction), p = P(s_st > s_ts),
    #: ratio s_st / s_ts (median, lo, hi); the clearest pair first
    asymmetry: list[dict] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return self._ordered(("definitions", "reference", "reference_data", "data_scale", "thresholds", "interval", "law", "draws",
                              "hubs", "islands", "domains", "asymmetry"))
