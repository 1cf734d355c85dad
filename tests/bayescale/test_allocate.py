"""Tests for bayescale.allocate: the optimiser is verified against independent NumPy code.

The reference law and the reference CVaR (sorted tail mean with fractional weighting)
below are written separately from the module's own evaluation, so agreement is evidence.
"""

from __future__ import annotations

import dataclasses
import functools
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bayescale import allocate as al
from bayescale.errors import InputError
from bayescale.posterior import LawDraws, self_mask_for

NAMES = ("web", "code", "math", "ct", "mri")  # "web" is the hub, "mri" the island
D0 = 50.0


def make_draws(S=200, seed=0, names=NAMES, extra_sources=()) -> LawDraws:
    """A reasonable random posterior: hub source 0, island (last) neither gives nor takes."""
    rng = np.random.default_rng(seed)
    targets = tuple(names)
    sources = targets + tuple(extra_sources)
    I, J = len(sources), len(targets)
    mask = self_mask_for(sources, targets)
    base = rng.uniform(0.0, 0.8, (I, J))
    base[0, :] = rng.uniform(0.5, 0.8, J)  # the hub helps everyone
    base[J - 1, :] = 0.0  # the island gives nothing ...
    base[:, J - 1] = 0.0  # ... and takes nothing
    for k in range(J, I):  # extra pure sources transfer everywhere but the island
        base[k, : J - 1] = rng.uniform(0.3, 0.8, J - 1)
    T = base[None] * rng.lognormal(0.0, 0.3, (S, I, J)) * (1.0 - mask)
    beta = np.clip(rng.uniform(0.5, 1.0, (I, J))[None] + rng.normal(0.0, 0.05, (S, I, J)), 0.3, 1.0)
    beta = np.where(mask > 0, 1.0, beta)
    return LawDraws(
        sources=sources,
        targets=targets,
        self_mask=mask,
        E=rng.uniform(0.1, 0.5, (S, J)),
        A=rng.uniform(0.5, 2.0, (S, J)),
        alpha=rng.uniform(0.2, 0.6, (S, J)),
        x0=rng.uniform(0.04, 0.06, (S, J)),
        sigma=np.full((S, J), 0.05),
        T=T,
        beta=beta,
        data_scale=D0,
    )


# ---------------------------------------------------------------------------- reference


def ref_losses(draws: LawDraws, D) -> np.ndarray:
    """(N, I) raw allocations -> (S, N, J) law losses, by explicit loops over (i, j)."""
    D = np.atleast_2d(np.asarray(D, dtype=np.float64))
    d = D / draws.data_scale
    S, J = draws.E.shape
    x = np.repeat(draws.x0[:, None, :], d.shape[0], axis=1)
    for j in range(J):
        for i in range(len(draws.sources)):
            if draws.self_mask[i, j]:
                x[:, :, j] += d[None, :, i]
            else:
                x[:, :, j] += draws.T[:, i, j][:, None] * d[None, :, i] ** draws.beta[:, i, j][:, None]
    return draws.E[:, None, :] + draws.A[:, None, :] * x ** (-draws.alpha[:, None, :])


def ref_cvar(f, gamma) -> np.ndarray:
    """Mean of the worst (1 - gamma) share of the S values in each column, fractional at the edge."""
    f = np.sort(np.asarray(f, dtype=np.float64), axis=0)[::-1]
    S = f.shape[0]
    n = (1.0 - gamma) * S
    k = int(np.floor(n))
    total = f[:k].sum(axis=0)
    if k < S:
        total = total + (n - k) * f[k]
    return total / n


def ref_objective(draws, D, objective, weights=None) -> np.ndarray:
    """Objective for each of N allocations (N, I) -> (N,), chunked over N."""
    D = np.atleast_2d(np.asarray(D, dtype=np.float64))
    w = np.ones(len(draws.targets)) if weights is None else np.asarray(weights, dtype=np.float64)
    out = []
    for start in range(0, D.shape[0], 1000):
        f = ref_losses(draws, D[start : start + 1000]) @ w  # (S, n)
        if objective == "mean":
            out.append(f.mean(axis=0))
        else:
            out.append(ref_cvar(f, float(objective.split(":")[1])))
    return np.concatenate(out)


def vec(result, key="allocation", names=NAMES) -> np.ndarray:
    return np.array([result[key][n] for n in names])


@functools.lru_cache(maxsize=None)
def draws200() -> LawDraws:
    return make_draws(S=200, seed=0)


@functools.lru_cache(maxsize=None)
def solved(objective, budget=300.0, caps=None):
    """Cached optimum on draws200 (caps: tuple of (domain, cap) pairs)."""
    return al.allocate(draws200(), budget, objective=objective, upper=dict(caps) if caps else None)


CAPS = (("code", 60.0), ("mri", 40.0))


# ---------------------------------------------------------------------------- (1) objective value


@pytest.mark.parametrize("objective", ["mean", "cvar:0.9"])
def test_objective_value_matches_independent_numpy(objective):
    draws = draws200()
    result = solved(objective)
    assert result["status"] == "optimal", result["solver_notes"]
    D = vec(result)
    reference = ref_objective(draws, D, objective)[0]
    assert abs(result["objective_value"] - reference) <= 1e-4 * abs(reference)
    own = al.objective_values(draws, D, objective, np.ones(len(NAMES)))
    assert abs(result["objective_value"] - own) <= 1e-4 * abs(own)
    # The module's evaluation agrees with the reference on arbitrary allocations too.
    rng = np.random.default_rng(1)
    for D in rng.dirichlet(np.ones(len(NAMES)), 5) * 500:
        assert al.objective_values(draws, D, objective) == pytest.approx(ref_objective(draws, D, objective)[0], rel=1e-10)


def test_subset_of_draws_and_predictions_on_all():
    draws = make_draws(S=300, seed=5)
    result = al.allocate(draws, 250, objective="cvar:0.8", max_draws=120, seed=3)
    assert result["draws_used"] == 120
    sub = al.optimisation_draws(draws, 120, 3)
    assert sub.n_draws == 120
    D = vec(result)
    assert result["objective_value"] == pytest.approx(ref_objective(sub, D, "cvar:0.8")[0], rel=1e-4)
    # Predictions use every draw.
    losses = ref_losses(draws, D)[:, 0, :]
    for j, name in enumerate(NAMES):
        assert result["predicted"][name]["mean"] == pytest.approx(losses[:, j].mean(), rel=1e-9)
        assert result["predicted"][name]["lo"] <= result["predicted"][name]["mean"] <= result["predicted"][name]["hi"]


def test_empirical_cvar_is_exact():
    rng = np.random.default_rng(0)
    for S in (1, 2, 7, 50, 333):
        values = np.round(rng.gamma(2.0, 1.0, S), 1)  # rounding makes ties
        for gamma in (0.01, 0.5, 0.9, 0.95, 0.999):
            # brute force: the RU function on a fine grid of eta plus every sample value
            etas = np.concatenate([values, np.linspace(values.min() - 1, values.max() + 1, 2001)])
            ru = etas + np.maximum(values[None, :] - etas[:, None], 0).sum(axis=1) / ((1 - gamma) * S)
            assert al.empirical_cvar(values, gamma) == pytest.approx(ru.min(), rel=1e-12, abs=1e-12)
            assert al.empirical_cvar(values, gamma) == pytest.approx(ref_cvar(values[:, None], gamma)[0], rel=1e-10)


# ---------------------------------------------------------------------------- (2) optimality


@pytest.mark.parametrize("objective", ["mean", "cvar:0.9"])
def test_no_random_feasible_allocation_does_better(objective):
    draws = draws200()
    budget = 300.0
    caps = dict(CAPS)
    result = solved(objective, budget, CAPS)
    assert result["status"] == "optimal", result["solver_notes"]
    best = vec(result)
    U = np.array([caps.get(n, np.inf) for n in NAMES])
    rng = np.random.default_rng(42)
    # 10,000 random feasible allocations: Dirichlet over the simplex times the budget,
    # capped, with the capped excess re-spread over the other domains where possible.
    P = rng.dirichlet(np.full(len(NAMES), 0.7), 10_000)
    D = budget * P
    for _ in range(len(NAMES)):
        excess = np.maximum(D - U, 0).sum(axis=1, keepdims=True)
        D = np.minimum(D, U)
        room = np.where(D < U, P, 0.0)
        D = D + excess * room / np.maximum(room.sum(axis=1, keepdims=True), 1e-300)
    D = np.minimum(D, U)
    # plus 2,000 feasible moves of mass between two domains near the optimum
    moves = np.repeat(best[None], 2000, axis=0)
    i, j = rng.integers(0, len(NAMES), (2, 2000))
    size = 10 ** rng.uniform(-3, 2, 2000)
    for k in range(2000):
        t = min(size[k], moves[k, i[k]], U[j[k]] - moves[k, j[k]])
        moves[k, i[k]] -= t
        moves[k, j[k]] += t
    candidates = np.vstack([D, moves])
    assert np.all(candidates.sum(axis=1) <= budget * (1 + 1e-9)) and np.all(candidates <= U + 1e-9)
    values = ref_objective(draws, candidates, objective)
    optimum = ref_objective(draws, best, objective)[0]
    assert optimum <= values.min() + 1e-6 * abs(optimum)
    # and it beats (or ties) the baselines
    for baseline in result["baselines"].values():
        assert optimum <= baseline["objective_value"] + 1e-9


def test_pure_source_and_target_weights():
    draws = make_draws(S=100, seed=7, extra_sources=("books",))
    weights = {"ct": 2.0, "code": 1.0, "math": 0.5, "web": 0.0, "mri": 0.0}
    result = al.allocate(draws, 400, weights=weights)
    assert result["status"] == "optimal", result["solver_notes"]
    names = draws.sources
    D = vec(result, names=names)
    w = np.array([weights[t] for t in draws.targets])
    assert result["objective_value"] == pytest.approx(ref_objective(draws, D, "mean", w)[0], rel=1e-4)
    assert D[names.index("mri")] < 1e-3 * 400  # the island helps no weighted target
    rng = np.random.default_rng(0)
    random = rng.dirichlet(np.ones(len(names)), 3000) * 400
    assert result["objective_value"] <= ref_objective(draws, random, "mean", w).min() + 1e-6
    # weight only on the island: everything goes to the island's own data
    island = al.allocate(draws, 400, weights={t: 0.0 for t in draws.targets if t != "mri"})
    assert island["allocation"]["mri"] == pytest.approx(400, rel=1e-5)
    # unnamed targets keep weight 1
    assert al.weights_vector(draws, {"ct": 3}) == pytest.approx([1, 1, 1, 3, 1])


# ---------------------------------------------------------------------------- (3) feasibility


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    budget=st.floats(20, 2000),
    caps=st.lists(st.one_of(st.none(), st.floats(0, 600)), min_size=5, max_size=5),
    mins=st.lists(st.one_of(st.none(), st.floats(0, 1)), min_size=5, max_size=5),
    objective=st.sampled_from(["mean", "cvar:0.75"]),
)
def test_budget_and_bounds_respected(budget, caps, mins, objective):
    draws = make_draws(S=40, seed=11)
    upper = {n: c for n, c in zip(NAMES, caps) if c is not None}
    # minimums: a share of what the cap and an even split of the budget allow
    lower = {n: m * min(upper.get(n, np.inf), budget / len(NAMES)) for n, m in zip(NAMES, mins) if m is not None}
    result = al.allocate(draws, budget, objective=objective, upper=upper or None, lower=lower or None)
    assert result["status"] == "optimal", result["solver_notes"]
    D = vec(result)
    U = np.array([upper.get(n, np.inf) for n in NAMES])
    L = np.array([lower.get(n, 0.0) for n in NAMES])
    assert D.sum() <= budget * (1 + 1e-6)
    assert np.all(D >= 0) and np.all(D <= U) and np.all(D >= L)
    if D.sum() > 0:
        assert sum(result["fractions"].values()) == pytest.approx(1.0)
    if sum(U) >= budget:  # then the whole budget is worth spending: loss falls with data
        assert "budget" in result["binding"]
        assert D.sum() == pytest.approx(budget, rel=1e-5)
    for name in NAMES:
        if f"max:{name}" in result["binding"]:
            assert result["allocation"][name] == pytest.approx(upper[name], rel=1e-4, abs=1e-6)
    for baseline in result["baselines"].values():
        B = vec(baseline)
        assert B.sum() <= budget * (1 + 1e-9) and np.all(B <= U + 1e-9) and np.all(B >= L - 1e-9)
    json.dumps(result)


@pytest.mark.parametrize("objective", ["mean", "cvar:0.75"])
def test_sources_pinned_by_their_bounds(objective):
    # a cap of 0 (or minimum = cap) pins a source at a power cone's apex; found by hypothesis
    draws = make_draws(S=40, seed=11)
    for upper, lower in [({"ct": 0.0}, None), ({"ct": 5.0}, {"ct": 5.0}), ({"ct": 0.0, "web": 0.0}, {"mri": 3.0})]:
        result = al.allocate(draws, 20.0, objective=objective, upper=upper, lower=lower)
        assert result["status"] == "optimal" and result["solver_notes"] == [], result["solver_notes"]
        for name, cap in upper.items():
            assert result["allocation"][name] == pytest.approx(cap, abs=1e-9)
            assert f"max:{name}" in result["binding"]
        D = vec(result)
        assert result["objective_value"] == pytest.approx(ref_objective(draws, D, objective)[0], rel=1e-4)
        assert D.sum() == pytest.approx(20.0, rel=1e-6)


# ---------------------------------------------------------------------------- (4) monotone in budget


def test_more_budget_never_worsens_the_mean():
    draws = draws200()
    values = [al.allocate(draws, b)["objective_value"] for b in (100, 200, 400, 800)]
    assert all(b < a for a, b in zip(values, values[1:])), values


# ---------------------------------------------------------------------------- (5) permutation


@pytest.mark.parametrize("objective", ["mean", "cvar:0.9"])
def test_permuting_domains_permutes_the_answer(objective):
    draws = draws200()
    perm = np.array([3, 0, 4, 2, 1])
    names = tuple(NAMES[p] for p in perm)
    permuted = dataclasses.replace(
        draws,
        sources=names,
        targets=names,
        self_mask=self_mask_for(names, names),
        E=draws.E[:, perm],
        A=draws.A[:, perm],
        alpha=draws.alpha[:, perm],
        x0=draws.x0[:, perm],
        sigma=draws.sigma[:, perm],
        T=draws.T[:, perm][:, :, perm],
        beta=draws.beta[:, perm][:, :, perm],
    )
    original, shuffled = solved(objective), al.allocate(permuted, 300, objective=objective)
    assert list(shuffled["allocation"]) == list(names)
    assert shuffled["objective_value"] == pytest.approx(original["objective_value"], rel=1e-6)
    for name in NAMES:
        assert shuffled["allocation"][name] == pytest.approx(original["allocation"][name], abs=1e-3 * 300)
        assert shuffled["predicted"][name]["mean"] == pytest.approx(original["predicted"][name]["mean"], rel=1e-4)


# ---------------------------------------------------------------------------- (6) bad input


BAD_INPUTS = [
    (dict(budget=-5), ["--budget must be > 0, got -5"]),
    (dict(budget=0), ["--budget"]),
    (dict(budget=float("nan")), ["--budget"]),
    (dict(budget=float("inf")), ["--budget"]),
    (dict(weights={"nope": 1.0}), ["--weights", "'nope'"]),
    (dict(upper={"nope": 1.0}), ["--max", "'nope'"]),
    (dict(lower={"nope": 1.0}), ["--min", "'nope'"]),
    (dict(weights={"ct": -1.0}), ["--weights", "'ct'"]),
    (dict(upper={"ct": -3.0}), ["--max", "'ct'"]),
    (dict(lower={"ct": -3.0}), ["--min", "'ct'"]),
    (dict(upper={"ct": float("nan")}), ["--max", "'ct'"]),
    (dict(budget=1000, lower={"ct": 600, "mri": 600}), ["--min: minimums sum to 1200 > budget 1000"]),
    (dict(lower={"mri": 50}, upper={"mri": 20}), ["--min", "'mri'", "--max"]),
    (dict(weights={n: 0.0 for n in NAMES}), ["--weights", "zero"]),
    (dict(objective="median"), ["--objective", "'median'"]),
    (dict(objective="cvar:1.5"), ["--objective", "1.5"]),
    (dict(objective="cvar:0"), ["--objective"]),
    (dict(objective="cvar:abc"), ["--objective"]),
    (dict(objective="cvar"), ["--objective"]),
    (dict(interval=1.5), ["--interval"]),
]


@pytest.mark.parametrize("kwargs, expected", BAD_INPUTS)
def test_bad_input_raises_one_line_input_error(kwargs, expected):
    kwargs = dict(kwargs)
    budget = kwargs.pop("budget", 300)
    with pytest.raises(InputError) as info:
        al.allocate(make_draws(S=10, seed=1), budget, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    for text in expected:
        assert text in message, message


def test_parse_objective():
    assert al.parse_objective("mean") == ("mean", None)
    assert al.parse_objective(" CVaR:0.95 ") == ("cvar", 0.95)
    assert solved("cvar:0.9")["objective"] == "cvar:0.9"


# ---------------------------------------------------------------------------- (7) cvar >= mean


def test_cvar_is_at_least_the_mean():
    draws = draws200()
    rng = np.random.default_rng(3)
    allocations = [vec(solved("mean")), vec(solved("cvar:0.9"))] + list(rng.dirichlet(np.ones(5), 20) * 300)
    for D in allocations:
        for gamma in (0.1, 0.5, 0.9, 0.99):
            assert al.objective_values(draws, D, f"cvar:{gamma}") >= al.objective_values(draws, D, "mean") - 1e-12
    assert solved("cvar:0.9")["objective_value"] >= solved("mean")["objective_value"]
    # the CVaR optimum has the better CVaR, the mean optimum the better mean
    assert al.objective_values(draws, vec(solved("cvar:0.9")), "cvar:0.9") <= al.objective_values(
        draws, vec(solved("mean")), "cvar:0.9"
    ) + 1e-9
    assert al.objective_values(draws, vec(solved("mean")), "mean") <= al.objective_values(
        draws, vec(solved("cvar:0.9")), "mean"
    ) + 1e-9


# ---------------------------------------------------------------------------- (8) shadow price


@pytest.mark.parametrize("objective", ["mean", "cvar:0.9"])
def test_shadow_price_matches_finite_difference(objective):
    draws = draws200()
    budget, h = 300.0, 6.0
    result = solved(objective, budget)
    assert "budget" in result["binding"]
    up = al.allocate(draws, budget + h, objective=objective)["objective_value"]
    down = al.allocate(draws, budget - h, objective=objective)["objective_value"]
    slope = (up - down) / (2 * h)
    assert slope < 0
    # (agrees to ~0.02% in practice; 1% leaves room for curvature over +-h)
    assert result["shadow_price"] == pytest.approx(slope, rel=0.01)


def test_slack_budget_has_zero_shadow_price_and_proportional_baseline():
    caps = {n: 30.0 for n in NAMES}
    result = al.allocate(make_draws(S=60, seed=2), 1000, upper=caps)
    assert result["status"] == "optimal"
    assert "budget" not in result["binding"] and result["shadow_price"] == 0.0
    assert all(f"max:{n}" in result["binding"] for n in NAMES)
    assert vec(result) == pytest.approx(np.full(5, 30.0), rel=1e-5)
    assert vec(result["baselines"]["proportional"]) == pytest.approx(np.full(5, 30.0))


# ---------------------------------------------------------------------------- baselines and format


def test_result_format_and_baselines():
    result = solved("mean", 300.0, CAPS)
    assert set(result) == {
        "status", "objective", "objective_value", "allocation", "fractions", "predicted", "baselines",
        "budget", "shadow_price", "binding", "draws_used", "solver", "solver_notes",
    }  # fmt: skip
    assert result["budget"] == 300.0 and result["draws_used"] == 200
    assert set(result["baselines"]) == {"uniform"}  # proportional needs a cap on every source
    uniform = vec(result["baselines"]["uniform"])
    # water-filling: mri (40) is capped below the even share of 60, code (60) exactly at it,
    # and the other three split the remaining 200
    assert uniform == pytest.approx([200 / 3, 60.0, 200 / 3, 200 / 3, 40.0])
    assert uniform.sum() == pytest.approx(300.0)
    assert set(result["predicted"]["ct"]) >= {"mean", "lo", "hi"}
    json.loads(json.dumps(result))
    caps = {"web": 500.0, "code": 100.0, "math": 100.0, "ct": 50.0, "mri": 50.0}
    with_caps = al.allocate(make_draws(S=30, seed=4), 400, upper=caps)
    proportional = vec(with_caps["baselines"]["proportional"])
    assert proportional == pytest.approx(np.array(list(caps.values())) * 400 / 800)


def test_fill_water_filling():
    U = np.array([10.0, np.inf, 5.0, np.inf])
    L = np.array([0.0, 0.0, 0.0, 40.0])
    # level 42.5: the two capped domains take 10 + 5, the other two 42.5 each (above the minimum 40)
    assert al.fill(100.0, L, U) == pytest.approx([10.0, 42.5, 5.0, 42.5])
    L[3] = 60.0  # now the minimum binds: 10 + 25 + 5 + 60
    assert al.fill(100.0, L, U) == pytest.approx([10.0, 25.0, 5.0, 60.0])
    assert al.fill(100.0, np.zeros(2), np.array([10.0, 20.0])) == pytest.approx([10.0, 20.0])


# ---------------------------------------------------------------------------- solver fallbacks


def test_falls_back_to_scs_and_says_so(monkeypatch):
    original = al._solve

    def clarabel_fails(problem, solver, settings):
        if solver == "CLARABEL":
            return "solver_error", 0.0, "forced failure"
        return original(problem, solver, settings)

    monkeypatch.setattr(al, "_solve", clarabel_fails)
    draws = make_draws(S=30, seed=3)
    result = al.allocate(draws, 200)
    assert result["status"] == "optimal" and result["solver"] == "SCS"
    assert any("CLARABEL" in note and "forced failure" in note for note in result["solver_notes"])
    monkeypatch.setattr(al, "_solve", original)
    reference = al.allocate(draws, 200)
    assert reference["solver"] == "CLARABEL" and reference["solver_notes"] == []
    assert result["objective_value"] == pytest.approx(reference["objective_value"], rel=1e-5)


def test_inaccurate_solutions_are_flagged(monkeypatch):
    original = al._solve

    def inaccurate(problem, solver, settings):
        status, seconds, error = original(problem, solver, settings)
        return "optimal_inaccurate", seconds, error

    monkeypatch.setattr(al, "_solve", inaccurate)
    result = al.allocate(make_draws(S=30, seed=3), 200)
    assert result["status"] == "optimal_inaccurate"
    assert any("optimal_inaccurate" in note for note in result["solver_notes"])
    assert np.sum(vec(result)) <= 200 * (1 + 1e-9)
