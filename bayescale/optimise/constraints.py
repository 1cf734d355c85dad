"""What an allocation may be: objective, costs, caps, minimums, fixed domains, groups, chance constraints.

Everything a user gives :func:`~bayescale.optimise.allocate.allocate` (``objective``, ``weights``,
``costs``, ``upper``, ``lower``, ``fixed``, ``groups``, ``chance``) is parsed and checked here, into
a :class:`Spec` of plain vectors over the posterior's sources and targets. Bad input raises
:class:`ParameterError` (an :class:`~bayescale.errors.InputError`) with one line that starts
with the parameter's name and names the offending piece (``"upper: cap for 'ct' must be ..."``);
the command line shows its own flag instead (``--max``), see :meth:`ParameterError.naming`.
A set of linear constraints that no allocation can meet raises
:class:`InfeasibleError` naming the constraints that conflict (an irreducible set, found
by a deletion filter over small LPs), e.g. ``minimums sum to 1200 > budget 1000``.

The linear part is a polytope ``P = {D : A D <= b}`` over raw data amounts ``D``:

- ``budget``: ``sum_i c_i D_i <= B`` (costs ``c_i > 0``, default 1);
- ``max:<source>`` / ``min:<source>``: availability caps and minimums;
- ``fixed:<source>``: ``D_i = v`` (the source is taken out of the optimisation);
- ``group:<spec>``: ``sum_{i in G} c_i D_i >= s * B`` (or ``<=``, ``=``), a share ``s`` of the
  budget; in the least-budget problem (no budget) a share of the total spend ``sum_i c_i D_i``.

Chance constraints ``TARGET<=TAU@P`` ask ``P(L_target(D) <= TAU) >= P`` over the posterior;
the programs use their convex CVaR approximation ``CVaR_P(L_target(D)) <= TAU``, which
implies the chance constraint on the draws it is solved on. ``chance_on`` says which loss:
``"predictive"`` (the default) the loss one more run will observe, the law's noise included
(:mod:`bayescale.optimise.predictive`), ``"expected"`` the law's expected loss.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import re

import numpy as np

from bayescale.inference.posterior import LawDraws
from bayescale.errors import Name, ParameterError

# ------------------------------------------------------------------------------------ errors


class InfeasibleError(ParameterError):
    """No allocation meets the constraints; the message names the ones that conflict.

    ``message``: a string, or a tuple of :class:`ParameterError` pieces; ``conflict``: the
    names of the conflicting constraints (``budget``, ``max:ct``, ``group:...``, ``chance:...``).
    """

    def __init__(self, message, conflict: list[str] | None = None, details: dict | None = None):
        super().__init__(*(message if isinstance(message, tuple) else (message,)))
        self.conflict = list(conflict or [])
        self.details = dict(details or {})



# ------------------------------------------------------------------------------------ objective


@dataclasses.dataclass(frozen=True)
class Objective:
    """``risk`` over the posterior draws of the weighted loss: ``mean``, ``cvar`` (level ``gamma``)
    or ``worst`` (the max over draws). ``minimax``: the risk is taken per target and the
    objective is the worst (largest) target's."""

    risk: str  # "mean" | "cvar" | "worst"
    gamma: float | None = None
    minimax: bool = False

    @property
    def name(self) -> str:
        inner = self.risk if self.risk in ("mean", "worst") else f"cvar:{self.gamma:g}"
        if self.minimax:
            return "minimax" if self.risk == "mean" else f"minimax:{inner}"
        return inner


OBJECTIVE_HELP = "mean | cvar:GAMMA | worst | minimax[:mean|:cvar:GAMMA|:worst]"


def _parse_level(parameter: str, raw: str, text: str, what: str = "CVaR level") -> float:
    if not text.strip():
        raise ParameterError(Name(parameter), f": {raw!r} needs a level, e.g. 'cvar:0.9' (0 < level < 1)")
    try:
        value = float(text)
    except ValueError:
        raise ParameterError(Name(parameter), f": {what} in {raw!r} is not a number; use e.g. 'cvar:0.9'") from None
    if not (math.isfinite(value) and 0.0 < value < 1.0):
        raise ParameterError(Name(parameter), f": {what} must lie strictly between 0 and 1, got {text.strip()}")
    return value


def parse_objective(text, parameter: str = "objective") -> Objective:
    """``mean``, ``cvar:0.9``, ``worst``, ``minimax`` (= ``minimax:mean``), ``minimax:cvar:0.9``, ``minimax:worst``."""
    if isinstance(text, Objective):
        return text
    raw = str(text).strip()
    lowered = raw.lower()
    minimax = False
    body = lowered
    if lowered == "minimax" or lowered.startswith("minimax:"):
        minimax = True
        body = lowered[len("minimax:") :] if ":" in lowered else "mean"
        if not body:
            raise ParameterError(Name(parameter), f": {raw!r} needs what to take per target, e.g. 'minimax' or 'minimax:cvar:0.9'")
    if body == "mean":
        return Objective("mean", None, minimax)
    if body == "worst":
        return Objective("worst", None, minimax)
    if body.startswith("cvar"):
        rest = body[4:]
        if not rest.startswith(":"):
            raise ParameterError(Name(parameter), f": {raw!r} needs a level, e.g. 'cvar:0.9' (0 < level < 1)")
        return Objective("cvar", _parse_level(parameter, raw, rest[1:]), minimax)
    raise ParameterError(Name(parameter), f": unknown objective {raw!r}; use {OBJECTIVE_HELP}")


# ------------------------------------------------------------------------------------ numbers


def number(parameter: str, what: str, name: str, value, *, positive: bool = False) -> float:
    """``value`` as a finite float >= 0 (> 0 with ``positive``), or a :class:`ParameterError` about ``parameter``."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        out = float("nan")
    if not math.isfinite(out) or out < 0 or (positive and out <= 0):
        bound = "> 0" if positive else ">= 0"
        raise ParameterError(Name(parameter), f": {what} for {name!r} must be a finite number {bound}, got {value}")
    return out


def check_budget(budget, parameter: str = "budget") -> float:
    """``budget`` as a finite float > 0, or a :class:`ParameterError` about ``parameter``."""
    try:
        value = float(budget)
    except (TypeError, ValueError):
        raise ParameterError(Name(parameter), f" must be a number > 0, got {budget}") from None
    if not math.isfinite(value) or value <= 0:
        raise ParameterError(Name(parameter), f" must be > 0, got {value:g}")
    return value


def parse_budgets(text, parameter: str = "budgets") -> list[float]:
    """``"100,200,400"`` or a sequence -> sorted distinct budgets > 0."""
    items = [t for t in str(text).split(",")] if isinstance(text, str) else list(text)
    out = []
    for item in items:
        if isinstance(item, str) and not item.strip():
            raise ParameterError(Name(parameter), f": empty entry in {text!r}; use e.g. '100,200,400'")
        try:
            value = float(item)
        except (TypeError, ValueError):
            raise ParameterError(Name(parameter), f": {str(item).strip()!r} is not a number") from None
        if not math.isfinite(value) or value <= 0:
            raise ParameterError(Name(parameter), f": every budget must be > 0, got {str(item).strip()}")
        out.append(value)
    if not out:
        raise ParameterError(Name(parameter), ": no budgets given")
    return sorted(set(out))


# ------------------------------------------------------------------------------------ groups, chance


_OPS = {">=": ">=", "=>": ">=", "<=": "<=", "=<": "<=", "==": "=", "=": "="}


@dataclasses.dataclass(frozen=True)
class Group:
    text: str  # as the user wrote it, normalised
    members: tuple[int, ...]  # source indices
    op: str  # ">=", "<=", "="
    share: float


def parse_group(draws: LawDraws, text, parameter: str = "groups") -> Group:
    """``"ct_*>=0.3"``: sources matching the glob(s) (``+`` joins several) get at least 30 % of the spend."""
    raw = str(text).strip()
    match = re.fullmatch(r"(.+?)\s*(>=|=>|<=|=<|==|=)\s*([^<>=]+)", raw)
    if not match:
        raise ParameterError(Name(parameter), f": {raw!r} is not PATTERN>=SHARE or PATTERN<=SHARE (e.g. 'ct_*>=0.3')")
    patterns = [p.strip() for p in match.group(1).split("+")]
    if any(not p for p in patterns):
        raise ParameterError(Name(parameter), f": empty pattern in {raw!r}")
    members = set()
    for pattern in patterns:
        hit = [i for i, s in enumerate(draws.sources) if fnmatch.fnmatchcase(s, pattern)]
        if not hit:
            raise ParameterError(Name(parameter), f": pattern {pattern!r} in {raw!r} matches no source; sources are {', '.join(draws.sources)}")
        members.update(hit)
    try:
        share = float(match.group(3))
    except ValueError:
        raise ParameterError(Name(parameter), f": share in {raw!r} is not a number") from None
    if not (math.isfinite(share) and 0.0 <= share <= 1.0):
        raise ParameterError(Name(parameter), f": share in {raw!r} must lie between 0 and 1, got {match.group(3).strip()}")
    op = _OPS[match.group(2)]
    return Group(f"{'+'.join(patterns)}{op}{share:g}", tuple(sorted(members)), op, share)


@dataclasses.dataclass(frozen=True)
class Chance:
    text: str
    target: int
    tau: float
    prob: float


def parse_chance(draws: LawDraws, text, parameter: str = "chance") -> Chance:
    """``"mri_t2_abdomen<=0.12@0.95"``: P(loss of that target <= 0.12) >= 0.95."""
    if isinstance(text, Chance):
        return text
    if isinstance(text, (tuple, list)) and len(text) == 3:
        text = f"{text[0]}<={text[1]}@{text[2]}"
    raw = str(text).strip()
    match = re.fullmatch(r"(.+?)\s*(<=|=<)\s*([^@]+)@(.+)", raw)
    if not match:
        raise ParameterError(Name(parameter), f": {raw!r} is not TARGET<=LOSS@PROBABILITY (e.g. 'mri_t2_abdomen<=0.12@0.95')")
    target = draws.target_index(match.group(1).strip(), parameter)
    try:
        tau = float(match.group(3))
    except ValueError:
        raise ParameterError(Name(parameter), f": loss threshold in {raw!r} is not a number") from None
    if not (math.isfinite(tau) and tau > 0):
        raise ParameterError(Name(parameter), f": loss threshold in {raw!r} must be > 0")
    prob = _parse_level(parameter, raw, match.group(4), "probability")
    name = draws.targets[target]
    return Chance(f"{name}<={tau:g}@{prob:g}", target, tau, prob)


CHANCE_ON = ("predictive", "expected")


def parse_chance_on(value, parameter: str = "chance_on") -> str:
    """``"predictive"`` (the loss one run will observe, noise included) or ``"expected"`` (the law's loss)."""
    text = str(value).strip().lower() if isinstance(value, str) else None
    if text not in CHANCE_ON:
        raise ParameterError(Name(parameter), f": must be predictive or expected, got {value!r}")
    return text


def split_specs(values) -> list[str]:
    """A flag given several times, or one string with comma-separated items -> list of items."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    out = []
    for value in values:
        if isinstance(value, str):
            out.extend(v.strip() for v in value.split(",") if v.strip())
        else:
            out.append(value)
    return out


# ------------------------------------------------------------------------------------ the spec


@dataclasses.dataclass
class Spec:
    """Every constraint as vectors over the sources (raw units), plus the objective's target weights."""

    sources: tuple[str, ...]
    targets: tuple[str, ...]
    objective: Objective
    weights: np.ndarray  # (J,) user weights >= 0
    costs: np.ndarray  # (I,) > 0
    lower: np.ndarray  # (I,) >= 0
    upper: np.ndarray  # (I,) may be inf
    fixed: np.ndarray  # (I,) bool: D_i = lower_i = upper_i
    groups: list[Group]
    chance: list[Chance]
    named_lower: frozenset = frozenset()  # sources given a minimum (``lower``)
    normalise: bool = False
    chance_on: str = "predictive"  # the loss chance constraints are about: "predictive" or "expected"

    @property
    def n_sources(self) -> int:
        return len(self.sources)

    def polytope(self, budget: float | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Rows ``A D <= b`` with a name each (budget, max:, min:, fixed:, group:, nonneg:).

        ``budget=None`` (the least-budget problem) has no budget row."""
        I = self.n_sources
        rows, rhs, names = [], [], []

        def add(row, value, name):
            rows.append(np.asarray(row, dtype=np.float64))
            rhs.append(float(value))
            names.append(name)

        if budget is not None:
            add(self.costs, budget, "budget")
        eye = np.eye(I)
        for i, src in enumerate(self.sources):
            if self.fixed[i]:
                add(eye[i], self.upper[i], f"fixed:{src}")
                add(-eye[i], -self.lower[i], f"fixed:{src}")
                continue
            if np.isfinite(self.upper[i]):
                add(eye[i], self.upper[i], f"max:{src}")
            if self.lower[i] > 0:
                add(-eye[i], -self.lower[i], f"min:{src}")
            else:
                add(-eye[i], 0.0, f"nonneg:{src}")
        for g in self.groups:
            member = np.zeros(I)
            member[list(g.members)] = 1.0
            if budget is not None:  # spend in G against a share of the budget
                row, rhs_g = self.costs * member, g.share * budget
            else:  # least-budget problem: against a share of the total spend
                row, rhs_g = self.costs * member - g.share * self.costs, 0.0
            if g.op in (">=", "="):
                add(-row, -rhs_g, f"group:{g.text}")
            if g.op in ("<=", "="):
                add(row, rhs_g, f"group:{g.text}")
        return np.array(rows).reshape(-1, I), np.array(rhs), names


def build_spec(
    draws: LawDraws,
    *,
    objective="mean",
    weights: dict | None = None,
    costs: dict | None = None,
    upper: dict | None = None,
    lower: dict | None = None,
    fixed: dict | None = None,
    groups=None,
    chance=None,
    normalise: bool = False,
    chance_on: str = "predictive",
) -> Spec:
    """Parse and check everything but the budget; :func:`check_linear` checks them together."""
    obj = parse_objective(objective)
    on = parse_chance_on(chance_on)
    I = len(draws.sources)
    w = np.ones(len(draws.targets))
    for name, value in (weights or {}).items():
        w[draws.target_index(name, "weights")] = number("weights", "weight", name, value)
    if not np.any(w > 0):
        raise ParameterError(Name("weights"), ": all target weights are zero; give at least one target a weight > 0")
    c = np.ones(I)
    for name, value in (costs or {}).items():
        c[draws.source_index(name, "costs")] = number("costs", "cost", name, value, positive=True)
    U = np.full(I, np.inf)
    L = np.zeros(I)
    for name, value in (upper or {}).items():
        U[draws.source_index(name, "upper")] = number("upper", "cap", name, value)
    for name, value in (lower or {}).items():
        L[draws.source_index(name, "lower")] = number("lower", "minimum", name, value)
    fix = np.zeros(I, dtype=bool)
    for name, value in (fixed or {}).items():
        i = draws.source_index(name, "fixed")
        v = number("fixed", "amount", name, value)
        if (lower or {}).get(name) is not None and v < L[i] - 1e-12 * max(1.0, v):
            raise ParameterError(Name("fixed"), f": {name!r} is fixed at {v:g}, below its ", Name("lower"), f" {L[i]:g}")
        if v > U[i] * (1 + 1e-12):
            raise ParameterError(Name("fixed"), f": {name!r} is fixed at {v:g}, above its ", Name("upper"),
                                 f" cap {U[i]:g}")
        L[i] = U[i] = v
        fix[i] = True
    for i, name in enumerate(draws.sources):
        if L[i] > U[i]:
            raise ParameterError(Name("lower"), f": minimum for {name!r} ({L[i]:g}) exceeds its ", Name("upper"),
                                 f" cap ({U[i]:g})")
    # A source whose cap equals its minimum (a cap of 0 included) is fixed there.
    pinned = ~fix & np.isfinite(U) & (U - L <= 1e-12 * np.maximum(1.0, U))
    fix |= pinned
    U = np.where(fix, L, U)
    group_list = [parse_group(draws, g) for g in split_specs(groups)]
    chance_list = [parse_chance(draws, ch) for ch in split_specs(chance)]
    seen = set()
    for ch in chance_list:
        if ch.text in seen:
            raise ParameterError(Name("chance"), f": {ch.text!r} is given twice")
        seen.add(ch.text)
    return Spec(
        sources=tuple(draws.sources), targets=tuple(draws.targets), objective=obj, weights=w, costs=c,
        lower=L, upper=U, fixed=fix, groups=group_list, chance=chance_list,
        named_lower=frozenset(lower or {}), normalise=bool(normalise), chance_on=on,
    )


# ------------------------------------------------------------------------------------ feasibility


def _lp_feasible(A: np.ndarray, b: np.ndarray) -> bool:
    from scipy.optimize import linprog

    if A.shape[0] == 0:
        return True
    scale = np.maximum(np.abs(b), 1.0)
    res = linprog(np.zeros(A.shape[1]), A_ub=A / scale[:, None], b_ub=b / scale, bounds=[(None, None)] * A.shape[1],
                  method="highs")
    return res.status == 0


def _named_rows(names: list[str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for k, name in enumerate(names):
        if not name.startswith("nonneg:"):
            out.setdefault(name, []).append(k)
    return out


def check_linear(spec: Spec, budget: float | None) -> None:
    """Raise :class:`InfeasibleError` if no allocation meets the linear constraints, naming a conflicting set."""
    c, L = spec.costs, spec.lower
    if budget is not None:
        need = float(c @ L)
        if need > budget * (1 + 1e-12):
            what = "minimums" if not spec.fixed.any() else "minimums and fixed amounts"
            verb = "cost" if np.any(c != 1) else "sum to"
            raise InfeasibleError(
                (Name("lower"), f": {what} {verb} {need:g} > budget {budget:g}"),
                ["budget"] + [f"min:{s}" for s in spec.named_lower]
                + [f"fixed:{s}" for i, s in enumerate(spec.sources) if spec.fixed[i]],
            )
    A, b, names = spec.polytope(budget)
    if _lp_feasible(A, b):
        return
    # Deletion filter: drop each named constraint in turn; keep it dropped if the rest is still infeasible.
    groups = _named_rows(names)
    always = [k for k, n in enumerate(names) if n.startswith("nonneg:")]
    keep = list(groups)
    for name in list(keep):
        trial = [n for n in keep if n != name]
        rows = always + [k for n in trial for k in groups[n]]
        if not _lp_feasible(A[rows], b[rows]):
            keep = trial
    detail = _explain(spec, budget, keep)
    raise InfeasibleError(f"constraints conflict: {', '.join(keep)}" + (f" ({detail})" if detail else ""), keep)


def _explain(spec: Spec, budget, conflict: list[str]) -> str:
    """A short reason for the common conflicts between groups, caps, minimums and the budget."""
    c, L, U = spec.costs, spec.lower, spec.upper
    for name in conflict:
        if not name.startswith("group:"):
            continue
        g = next(g for g in spec.groups if f"group:{g.text}" == name)
        inside = np.zeros(spec.n_sources, dtype=bool)
        inside[list(g.members)] = True
        label = re.split(r"[<>=]", g.text)[0]
        if g.op in (">=", "=") and budget is not None:
            most_in = float(c[inside] @ U[inside])
            least_out = float(c[~inside] @ L[~inside])
            if most_in < g.share * budget * (1 - 1e-12):
                return (f"group {label} can get at most {most_in:g} (its caps) but needs "
                        f"{g.share:g} x budget = {g.share * budget:g}")
            if least_out > budget - g.share * budget + 1e-12 * budget:
                return f"the minimums outside group {label} take {least_out:g}, leaving less than {g.share:g} of the budget"
        if g.op in ("<=", "=") and budget is not None:
            least_in = float(c[inside] @ L[inside])
            if least_in > g.share * budget * (1 + 1e-12):
                return f"the minimums in group {label} already take {least_in:g} > {g.share:g} x budget = {g.share * budget:g}"
    shares = [g.share for g in spec.groups if f"group:{g.text}" in conflict and g.op in (">=", "=")]
    if len(shares) > 1 and sum(shares) > 1:
        return f"the groups' shares add up to {sum(shares):g} > 1"
    return ""


# ------------------------------------------------------------------------------------ chance checks


def irreducible_check(draws: LawDraws, chance: list[Chance], log_noise=None) -> None:
    """A target below its irreducible loss E in too many draws can never be met, whatever the data.

    ``log_noise`` (S, K): one run's noise on log loss per draw and chance constraint (the
    predictive loss); then a draw is out of reach where ``E * exp(noise) >= tau``."""
    for k, ch in enumerate(chance):
        floor = draws.E[:, ch.target] * (1.0 if log_noise is None else np.exp(np.asarray(log_noise)[:, k]))
        below = float(np.mean(floor >= ch.tau))
        if 1.0 - below < ch.prob:
            what = "irreducible loss" if log_noise is None else "irreducible loss plus one run's noise"
            raise InfeasibleError(
                (Name("chance"), f": target {ch.tau:g} on {draws.targets[ch.target]} is below its {what} "
                 f"in {below:.0%} of draws; no amount of data meets it with probability {ch.prob:g} "
                 f"(at most {1.0 - below:.0%})"),
                [f"chance:{ch.text}"],
            )
