"""Constraints: parsing, infeasibility messages, chance constraints and the least budget, verified with NumPy."""

from __future__ import annotations

import numpy as np
import pytest

from bayescale.cli import FLAGS
from bayescale.optimise import allocate as al
from bayescale.optimise import constraints as cons
from bayescale.errors import InputError
from tests.bayescale.optimise.test_allocate import NAMES, assert_names_the_parameter, make_draws, random_feasible, ref_cvar, ref_losses, ref_objective, vec

FAST = dict(uncertainty=0, baselines=False)


def draws300():
    return make_draws(S=300, seed=2)


# ---------------------------------------------------------------------------- parsing


def test_parse_group_and_chance():
    draws = make_draws(S=5)
    g = cons.parse_group(draws, "c*>=0.3")
    assert g.members == (1, 3) and g.op == ">=" and g.share == 0.3 and g.text == "c*>=0.3"
    g = cons.parse_group(draws, " web + mri <= 0.5 ")
    assert g.members == (0, 4) and g.op == "<="
    assert cons.parse_group(draws, "math=0.1").op == "="
    ch = cons.parse_chance(draws, "mri<=1.2@0.95")
    assert (ch.target, ch.tau, ch.prob, ch.text) == (4, 1.2, 0.95, "mri<=1.2@0.95")
    assert cons.parse_chance(draws, ("ct", 0.9, 0.8)).text == "ct<=0.9@0.8"
    assert cons.split_specs(["a<=1@0.9, b<=2@0.8", "c<=3@0.5"]) == ["a<=1@0.9", "b<=2@0.8", "c<=3@0.5"]
    assert cons.parse_budgets("400, 100,200") == [100.0, 200.0, 400.0]


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (dict(groups=["xx_*>=0.3"]), ["--group", "'xx_*'", "matches no source"]),
        (dict(groups=["ct>0.3"]), ["--group", "'ct>0.3'"]),
        (dict(groups=["ct>=1.5"]), ["--group", "between 0 and 1"]),
        (dict(groups=["ct>=abc"]), ["--group"]),
        (dict(chance=["ct<=0.1"]), ["--chance", "TARGET<=LOSS@PROBABILITY"]),
        (dict(chance=["nope<=0.1@0.9"]), ["--chance", "'nope'"]),
        (dict(chance=["ct<=0.1@1.5"]), ["--chance", "probability"]),
        (dict(chance=["ct<=-1@0.9"]), ["--chance", "> 0"]),
        (dict(chance=["ct<=1@0.9", "ct<=1@0.9"]), ["--chance", "twice"]),
    ],
)
def test_bad_constraint_flags(kwargs, expected):
    with pytest.raises(InputError) as info:
        al.allocate(make_draws(S=10, seed=1), 300, **kwargs)
    assert_names_the_parameter(info.value, expected)


# ---------------------------------------------------------------------------- infeasibility


def test_conflicting_linear_constraints_are_named():
    draws = make_draws(S=10, seed=1)
    with pytest.raises(cons.InfeasibleError) as info:
        al.allocate(draws, 300, groups=["ct+mri>=0.5"], upper={"ct": 50, "mri": 50}, lower={"web": 200}, **FAST)
    message = str(info.value)
    assert "constraints conflict" in message and "group:ct+mri>=0.5" in message
    assert set(info.value.conflict) >= {"group:ct+mri>=0.5", "max:ct", "max:mri"}
    assert "min:code" not in message
    with pytest.raises(cons.InfeasibleError) as info:
        al.allocate(draws, 300, groups=["ct>=0.6", "mri>=0.6"], **FAST)
    assert "add up to 1.2 > 1" in str(info.value)
    with pytest.raises(cons.InfeasibleError, match="minimums sum to 400 > budget 300"):
        al.allocate(draws, 300, lower={"ct": 200, "mri": 200}, **FAST)


def test_target_below_irreducible_loss_is_refused():
    draws = make_draws(S=200, seed=1)
    E = draws.E[:, NAMES.index("mri")]
    tau = float(np.quantile(E, 0.99))  # below E in 1 % of draws
    with pytest.raises(cons.InfeasibleError) as info:
        al.allocate(draws, 300, chance=[f"mri<={tau}@0.995"], chance_on="expected", **FAST)
    message = str(info.value)
    assert "below its irreducible loss in 1% of draws" in message and "mri" in message
    tau = float(np.quantile(E, 0.2))
    with pytest.raises(cons.InfeasibleError, match="below its irreducible loss in 80% of draws"):
        al.allocate(draws, 300, chance=[f"mri<={tau:.6f}@0.5"], chance_on="expected", **FAST)
    # The loss a run will observe has the run's noise on top: out of reach in at least as many draws.
    tau = float(np.quantile(E, 0.99))
    with pytest.raises(cons.InfeasibleError, match="below its irreducible loss plus one run's noise in") as info:
        al.allocate(draws, 300, chance=[f"mri<={tau}@0.995"], **FAST)
    assert int(str(info.value).split(" noise in ")[1].split("%")[0]) >= 1


def test_chance_out_of_reach_says_by_how_much_and_the_budget_needed():
    draws = draws300()
    with pytest.raises(cons.InfeasibleError) as info:
        al.allocate(draws, 300, chance=["mri<=1.3@0.9"], chance_on="expected", **FAST)
    message = str(info.value)
    assert "mri<=1.3@0.9" in message and "CVaR" in message and "within budget 300" in message
    assert "the least budget that meets them is" in message
    need = float(message.split("the least budget that meets them is ")[1].split()[0])
    assert message.startswith("chance: ") and message.endswith("(min_budget)")  # Python names; the CLI's flags:
    assert info.value.naming(FLAGS).startswith("--chance: ") and info.value.naming(FLAGS).endswith("(--min-budget)")
    # at the budget it names, the constraint can be met
    result = al.allocate(draws, need * 1.0001, chance=["mri<=1.3@0.9"], chance_on="expected", **FAST)
    assert result["chance"][0]["cvar_optimisation_draws"] <= 1.3 * (1 + 1e-9)


# ---------------------------------------------------------------------------- chance constraints


def test_chance_constraints_hold_and_are_checked_on_held_out_draws():
    draws = draws300()
    free = al.allocate(draws, 300, objective="cvar:0.9", **FAST)
    opt_idx, held_idx = al.split_draws(300, 2000, 0.3, 0)
    L_free = ref_losses(draws, vec(free))[opt_idx, 0, :]
    L_mri = ref_losses(draws, np.array([60, 30, 30, 30, 150.0]))[opt_idx, 0, :]
    # mri: between what the free optimum gives and what 150 units of mri give (feasible, binding)
    tau_mri = float(0.5 * (ref_cvar(L_free[:, 4:5], 0.9)[0] + ref_cvar(L_mri[:, 4:5], 0.9)[0]))
    tau_ct = float(ref_cvar(L_free[:, 3:4], 0.8)[0]) * 1.05
    chance = [f"mri<={tau_mri}@0.9", f"ct<={tau_ct}@0.8"]
    result = al.allocate(draws, 300, objective="cvar:0.9", chance=chance, chance_on="expected", holdout=0.3, **FAST)
    assert result["status"] == "optimal", result["solver_notes"]
    assert result["draws_used"] == 210 and result["draws_held_out"] == 90
    assert np.intersect1d(opt_idx, held_idx).size == 0 and opt_idx.size + held_idx.size == 300
    D = vec(result)
    L = ref_losses(draws, D)[:, 0, :]
    for report, (j, tau, p) in zip(result["chance"], [(4, tau_mri, 0.9), (3, tau_ct, 0.8)]):
        opt, held = L[opt_idx, j], L[held_idx, j]
        assert ref_cvar(opt[:, None], p)[0] <= tau * (1 + 1e-12)  # the CVaR approximation holds ...
        assert np.mean(opt <= tau) >= p  # ... so the chance constraint holds on the draws it saw
        assert report["achieved_optimisation_draws"] == pytest.approx(np.mean(opt <= tau))
        assert report["achieved_held_out"] == pytest.approx(np.mean(held <= tau))
        assert report["held_out_draws"] == 90 and report["met_held_out"] == (np.mean(held <= tau) >= p)
    # mri's constraint binds (it was tighter than the free optimum), and costs objective
    assert f"chance:{chance[0].replace(str(tau_mri), f'{tau_mri:g}')}" in result["binding"]
    sub = draws.subset(opt_idx)
    assert result["objective_value"] >= ref_objective(sub, vec(free), "cvar:0.9")[0] - 1e-9
    # No random allocation that meets both CVaR constraints does better.
    rng = np.random.default_rng(0)
    cands = random_feasible(rng, 5000, 300, np.full(5, np.inf), alpha=1.0)
    Lc = ref_losses(sub, cands)
    ok = (ref_cvar(Lc[:, :, 4], 0.9) <= tau_mri) & (ref_cvar(Lc[:, :, 3], 0.8) <= tau_ct)
    if ok.any():
        assert result["objective_value"] <= ref_objective(sub, cands[ok], "cvar:0.9").min() + result["certificate"]["gap"]


def test_least_budget_meets_every_target_and_nothing_cheaper_does():
    draws = draws300()
    chance = ["mri<=1.4@0.9", "ct<=1.2@0.8"]
    caps = {"code": 60, "mri": 600, "web": 600, "math": 300, "ct": 600}
    result = al.allocate(draws, min_budget=True, chance=chance, chance_on="expected", upper=caps, costs={"web": 1.5},
                         uncertainty=0)
    assert result["status"] == "optimal" and result["mode"] == "min_budget", result["solver_notes"]
    c = np.array([1.5, 1, 1, 1, 1])
    D = vec(result)
    assert result["budget"] == pytest.approx(c @ D) and result["objective_value"] == pytest.approx(c @ D)
    assert result["certificate"]["relative_gap"] <= 1e-5
    opt_idx, _ = al.split_draws(300, 2000, 0.25, 0)
    sub = draws.subset(opt_idx)
    L = ref_losses(sub, D)[:, 0, :]
    assert ref_cvar(L[:, 4:5], 0.9)[0] <= 1.4 * (1 + 1e-12) and ref_cvar(L[:, 3:4], 0.8)[0] <= 1.2 * (1 + 1e-12)
    # Cheaper allocations (random, and the optimum scaled down) all miss a target.
    rng = np.random.default_rng(1)
    U = np.array([600, 60, 300, 600, 600.0])
    cheaper = random_feasible(rng, 4000, 1.0, np.full(5, np.inf), alpha=1.0)
    cheaper = cheaper * (c @ D) * rng.uniform(0.5, 0.9999, (4000, 1)) / (cheaper @ c)[:, None]
    cheaper = np.vstack([cheaper[np.all(cheaper <= U, axis=1)], D * (1 - 1e-6)])
    Lc = ref_losses(sub, cheaper)
    meets = (ref_cvar(Lc[:, :, 4], 0.9) <= 1.4) & (ref_cvar(Lc[:, :, 3], 0.8) <= 1.2)
    assert not np.any(meets & ((cheaper @ c) < (c @ D) - result["certificate"]["gap"]))
    # Baselines report the spend each rule needs; the recommendation needs less.
    others = {"temperature": result.get("temperature_sampling"), "transfer_zeroed": result.get("transfer_zeroed")}
    for name, base in {**result["baselines"], **others}.items():
        if base and base.get("allocation") is not None:
            assert base["spend"] >= result["spend"] * (1 - 1e-9), name
    assert result["value_of_transfer"]["budget_saving_vs_proportional"] > 0
