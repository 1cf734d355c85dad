"""Baselines and the value of transfer, decision uncertainty, the budget path, whole units, the CLI."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from bayescale.optimise import allocate as al
from bayescale.optimise import baselines as bl
from bayescale.cli import app
from bayescale.render.text import format_allocation
from bayescale.inference.posterior import save_posterior
from tests.bayescale.optimise.test_allocate import NAMES, make_draws, ref_cvar, ref_losses, ref_objective, vec

FAST = dict(uncertainty=0, baselines=False)
CAPS = {"web": 400.0, "code": 60.0, "math": 200.0, "ct": 200.0, "mri": 100.0}


# ---------------------------------------------------------------------------- baselines


def test_baselines_and_value_of_transfer():
    draws = make_draws(S=200, seed=0)
    result = al.allocate(draws, 300, objective="cvar:0.9", upper=CAPS, temperature=2.0, uncertainty=0)
    assert set(result["baselines"]) == {"uniform", "proportional"}  # the keys they always had
    assert "transfer_unaware" not in result  # no independent-law posterior: the ablation stands in, labelled
    bases = dict(result["baselines"], temperature=result["temperature_sampling"], transfer_zeroed=result["transfer_zeroed"])
    U = np.array(list(CAPS.values()))
    assert vec(bases["proportional"]) == pytest.approx(U * 300 / U.sum())
    assert vec(bases["temperature"]) == pytest.approx(bl.fill(300, np.zeros(5), U, U**0.5))
    assert bases["temperature"]["temperature"] == 2.0
    for name, base in bases.items():
        D = vec(base)
        assert D.sum() == pytest.approx(300, rel=1e-9) and np.all(D <= U + 1e-9)
        # objective on the same draws as the recommendation, evaluated independently
        assert base["objective_value"] == pytest.approx(ref_objective(draws, D, "cvar:0.9")[0], rel=1e-10)
        assert base["objective_value"] >= result["objective_value"] - result["certificate"]["gap"]
        # reduction of weighted reducible loss against it, recomputed from the reference law
        L_rec = ref_losses(draws, vec(result))[:, 0, :]
        L_b = ref_losses(draws, D)[:, 0, :]
        R_rec, R_b = (L_rec - draws.E).sum(axis=1), (L_b - draws.E).sum(axis=1)
        red = base["reducible_loss_reduction"]
        assert red["of_means"] == pytest.approx(1 - R_rec.mean() / R_b.mean(), rel=1e-9)
        assert red["probability_better"] == pytest.approx(np.mean(R_rec < R_b))
        assert red["lo"] <= red["mean"] <= red["hi"]
    # the ablation: solved with T = 0 off the diagonal inside this posterior, judged under the real posterior
    blind = bl.transfer_zeroed(draws)
    D_u = vec(bases["transfer_zeroed"])
    assert bases["transfer_zeroed"]["objective_value_assumed"] == pytest.approx(ref_objective(blind, D_u, "cvar:0.9")[0], rel=1e-10)
    assert bases["transfer_zeroed"]["objective_value_assumed"] > bases["transfer_zeroed"]["objective_value"]
    assert bases["transfer_zeroed"]["description"].startswith("ablation: T = 0 inside the transfer posterior")
    direct = al.allocate(blind, 300, objective="cvar:0.9", upper=CAPS, **FAST)
    assert D_u == pytest.approx(vec(direct), abs=1e-3)
    assert result["value_of_transfer"]["reference"] == "proportional"
    assert result["value_of_transfer"]["vs_proportional"] == bases["proportional"]["reducible_loss_reduction"]
    assert result["value_of_transfer"]["transfer_baseline"] == "transfer_zeroed"
    assert result["value_of_transfer"]["vs_transfer_zeroed"] == bases["transfer_zeroed"]["reducible_loss_reduction"]
    assert result["value_of_transfer"]["vs_proportional"]["of_means"] > 0


def test_baselines_report_broken_constraints():
    draws = make_draws(S=100, seed=0)
    result = al.allocate(draws, 300, upper=CAPS, groups=["ct+mri>=0.6"], uncertainty=0)
    assert result["status"] == "optimal"
    uniform = result["baselines"]["uniform"]
    assert not uniform["feasible"] and uniform["violations"][0].startswith("group:ct+mri>=0.6")
    assert result["transfer_zeroed"]["feasible"]


# ---------------------------------------------------------------------------- decision uncertainty


def test_per_draw_optima_match_single_draw_solves():
    draws = make_draws(S=120, seed=6)
    result = al.allocate(draws, 300, upper={"code": 60.0}, groups=["ct>=0.1"], uncertainty=30, baselines=False)
    unc = result["decision_uncertainty"]
    assert unc["draws"] == 30 and unc["solved"] == 30
    idx = np.sort(np.random.default_rng(1).choice(120, size=30, replace=False))
    # recompute three of the per-draw optima directly, each as its own (single-draw) problem
    from bayescale.optimise import decisions as dec
    from bayescale.optimise.riskprog import LawEval

    spec = al.build_spec(draws, upper={"code": 60.0}, groups=["ct>=0.1"])
    problem = al.AllocationProblem(draws, spec, reference_budget=300.0)
    out = dec.per_draw_optima(LawEval(draws), idx, mode="sum", obj_v=[np.ones(5)], con=[], costs=spec.costs,
                              lower=spec.lower, upper=spec.upper, fixed=spec.fixed, A_lin=problem.A_lin,
                              b_lin=problem.rhs(300.0), unit=problem.unit, start=vec(result), spend_cap=1e6)
    for k in (0, 11, 29):
        single = al.allocate(draws.subset([idx[k]]), 300, upper={"code": 60.0}, groups=["ct>=0.1"], **FAST)
        assert out["D"][k] == pytest.approx(vec(single), abs=2e-3 * 300)
        own = ref_objective(draws.subset([idx[k]]), np.vstack([out["D"][k], vec(single)]), "mean")
        assert own[0] <= own[1] + 1e-6 * own[1]
    frac = out["D"] / out["D"].sum(axis=1, keepdims=True)
    for i, name in enumerate(NAMES):
        f = unc["fractions"][name]
        assert f["lo"] <= f["median"] <= f["hi"]
        assert f["median"] == pytest.approx(np.median(frac[:, i]), abs=1e-3)
    assert sum(unc["largest_share"].values()) == pytest.approx(1.0)


def test_per_draw_least_budgets():
    draws = make_draws(S=150, seed=2)
    result = al.allocate(draws, min_budget=True, chance=["mri<=1.5@0.8"], uncertainty=25, baselines=False)
    unc = result["decision_uncertainty"]
    assert unc["solved"] >= 1
    # Each solved draw's least spend puts mri (the island: only its own data helps) at the amount
    # that brings that draw's loss exactly to the target.
    spend = unc["spend"]
    assert spend["lo"] <= spend["median"] <= spend["hi"]
    assert unc["fractions"]["mri"]["median"] == pytest.approx(1.0, abs=1e-6)


# ---------------------------------------------------------------------------- path


def test_budget_path_matches_fresh_solves_and_moves_monotonically():
    draws = make_draws(S=150, seed=3)
    result = al.allocate(draws, objective="cvar:0.8", budgets="100,400,200,800", upper={"code": 60.0}, **FAST)
    path = result["path"]
    assert [p["budget"] for p in path] == [100, 200, 400, 800] and result["budget"] == 800
    values = [p["objective_value"] for p in path]
    assert all(b <= a for a, b in zip(values, values[1:]))
    for p in path:
        fresh = al.allocate(draws, p["budget"], objective="cvar:0.8", upper={"code": 60.0}, **FAST)
        assert p["status"] == "optimal" and p["relative_gap"] <= 1e-5
        assert p["objective_value"] == pytest.approx(fresh["objective_value"], rel=1e-7)
        assert sum(p["allocation"].values()) == pytest.approx(p["budget"], rel=1e-7)
    assert path[-1]["allocation"] == pytest.approx(result["allocation"], rel=1e-5)
    text = format_allocation(result)
    assert "budget        100" in text and "budget        800" in text


def test_a_path_entry_whose_iterations_stopped_short_is_not_called_optimal(monkeypatch):
    """As the main solve: 'optimal' needs a converged SQP as well as a small certified gap."""
    from bayescale.optimise import riskprog

    solve = riskprog.RiskProgram.solve

    def stopped_short(self, *args, **kwargs):
        sol = solve(self, *args, **kwargs)
        sol.converged = False  # an SQP at its iteration limit whose bound happens to be tight
        return sol

    draws = make_draws(S=150, seed=3)
    honest = al.allocate(draws, objective="mean", budgets="100,200", **FAST)
    assert [p["status"] for p in honest["path"]] == ["optimal", "optimal"]
    monkeypatch.setattr(riskprog.RiskProgram, "solve", stopped_short)
    result = al.allocate(draws, objective="mean", budgets="100,200", **FAST)
    assert [p["relative_gap"] <= 1e-5 for p in result["path"]] == [True, True]
    assert [p["status"] for p in result["path"]] == ["optimal_inaccurate", "optimal_inaccurate"]


def test_path_marks_infeasible_budgets():
    draws = make_draws(S=200, seed=2)
    result = al.allocate(draws, 600, chance=["mri<=1.5@0.9"], budgets=[50, 600], **FAST)
    assert result["path"][0]["status"] == "infeasible" and result["path"][1]["status"] == "optimal"


# ---------------------------------------------------------------------------- whole units


def test_integer_rounding_respects_every_constraint_and_is_the_best_rounding():
    draws = make_draws(S=150, seed=5)
    chance = ["mri<=1.9@0.8"]
    kwargs = dict(objective="cvar:0.9", upper={"code": 40.5, "mri": 120.0}, lower={"math": 3.3}, groups=["ct+web>=0.4"],
                  chance=chance, chance_on="expected", costs={"web": 1.5})  # checked below on the law's loss
    result = al.allocate(draws, 333.3, integer=True, **kwargs, **FAST)
    whole = result["integer"]
    D = np.array([whole["allocation"][n] for n in NAMES], dtype=float)
    assert np.all(D == np.round(D))
    c = np.array([1.5, 1, 1, 1, 1])
    assert c @ D <= 333.3 and D[1] <= 40.5 and D[4] <= 120 and D[2] >= 3.3 and D[2] >= 4
    assert (1.5 * D[0] + D[3]) >= 0.4 * 333.3
    opt_idx, _ = al.split_draws(150, 2000, 0.25, 0)
    sub = draws.subset(opt_idx)
    L = ref_losses(sub, D)[:, 0, :]
    assert ref_cvar(L[:, 4:5], 0.8)[0] <= 1.9
    assert whole["objective_value"] == pytest.approx(ref_objective(sub, D, "cvar:0.9")[0], rel=1e-10)
    assert whole["objective_value"] >= result["objective_value"] - result["certificate"]["gap"]
    # brute force over every floor/ceil rounding: none that meets the constraints is better
    cont = vec(result)
    options = [sorted({np.floor(x), np.ceil(x)}) for x in cont]
    best = np.inf
    for combo in itertools.product(*options):
        x = np.array(combo)
        if c @ x > 333.3 or x[1] > 40.5 or x[4] > 120 or x[2] < 3.3 or 1.5 * x[0] + x[3] < 0.4 * 333.3:
            continue
        if ref_cvar(ref_losses(sub, x)[:, 0, 4:5], 0.8)[0] > 1.9:
            continue
        best = min(best, ref_objective(sub, x, "cvar:0.9")[0])
    assert whole["objective_value"] == pytest.approx(best, rel=1e-12)


# ---------------------------------------------------------------------------- command line


def posterior_file(path, draws):
    """A posterior file (approximate, no sampler stats) holding these draws, for the CLI."""
    S = draws.n_draws
    coords = {"chain": [0], "draw": np.arange(S), "source": list(draws.sources), "target": list(draws.targets)}
    data = {name: (("chain", "draw", "target"), getattr(draws, name)[None]) for name in ("E", "A", "alpha", "x0", "sigma")}
    data.update({name: (("chain", "draw", "source", "target"), getattr(draws, name)[None]) for name in ("T", "beta")})
    post = xr.Dataset(data, coords=coords, attrs={"law": "transfer"})
    tree = xr.DataTree.from_dict({"posterior": post, "constant_data": xr.Dataset({"data_scale": draws.data_scale})})
    tree.attrs.update({"method": "svi", "law": "transfer", "approximate": 1})
    save_posterior(tree, path)
    return path


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def master_fit(tmp_path_factory):
    return posterior_file(tmp_path_factory.mktemp("alloc") / "fit.nc", make_draws(S=200, seed=0))


@pytest.fixture()
def fit_file(tmp_path, master_fit):
    # A fresh copy per test: xarray keeps every opened netCDF file in its handle cache, and
    # opening one path a few dozen times in one process crashes netCDF4/HDF5 (load_posterior).
    import shutil

    return shutil.copy(master_fit, tmp_path / "fit.nc")


def test_cli_allocate_every_flag(tmp_path, fit_file):
    out = tmp_path / "a.json"
    r = invoke("allocate", fit_file, "--budget", 300, "--objective", "cvar:0.9", "--weights", "ct=2", "--cost", "web=1.5",
               "--max", "code=60,mri=100,web=400,math=200,ct=200", "--min", "math=5", "--fixed", "mri=40",
               "--group", "ct+web>=0.4", "--chance", "ct<=1.6@0.8", "--budgets", "200,300", "--integer",
               "--uncertainty", 20, "--temperature", 2, "--json", out)
    assert r.exit_code == 0, r.output
    a = json.loads(out.read_text())
    assert a["status"] == "optimal" and a["objective"] == "cvar:0.9"
    assert a["allocation"]["mri"] == 40 and a["allocation"]["math"] >= 5 - 1e-9
    assert a["spend"] == pytest.approx(300, rel=1e-7) and a["costs"]["web"] == 1.5
    assert len(a["path"]) == 2 and a["integer"]["allocation"] is not None
    assert a["chance"][0]["held_out_draws"] == 50 and a["decision_uncertainty"]["draws"] == 20
    assert "certified gap" in r.output and "vs proportional" in r.output and "chance ct<=1.6@0.8" in r.output
    r = invoke("allocate", fit_file, "--min-budget", "--chance", "mri<=1.5@0.8", "--chance", "ct<=1.4@0.8",
               "--uncertainty", 0, "--json", out)
    assert r.exit_code == 0, r.output
    a = json.loads(out.read_text())
    assert a["mode"] == "min_budget" and "least budget" in r.output and "saves" in r.output
    r = invoke("allocate", fit_file, "--budget", 300, "--objective", "minimax:cvar:0.8", "--normalise", "--no-baselines",
               "--uncertainty", 0)
    assert r.exit_code == 0 and "minimax:cvar:0.8" in r.output, r.output


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--budget", "300", "--group", "zz*>=0.2"], "--group: pattern 'zz*'"),
        (["--budget", "300", "--chance", "ct<0.2@0.9"], "--chance"),
        (["--budget", "300", "--cost", "ct=0"], "--cost"),
        (["--budget", "300", "--fixed", "ct=abc"], "--fixed"),
        (["--budget", "300", "--budgets", "1,x"], "--budgets"),
        (["--budget", "300", "--min", "ct=200,mri=200"], "minimums sum to 400 > budget 300"),
        (["--budget", "300", "--objective", "worst:0.3"], "--objective"),
        (["--min-budget"], "--min-budget needs at least one --chance"),
        ([], "--budget is required"),
        (["--budget", "300", "--chance", "mri<=0.05@0.99"], "below its irreducible loss"),
    ],
)
def test_cli_bad_flags_exit_2_with_one_line(tmp_path, fit_file, args, expected):
    out = tmp_path / "never.json"
    r = invoke("allocate", fit_file, *args, "--uncertainty", 0, "--json", out)
    assert r.exit_code == 2, r.output
    assert expected in r.output and "Traceback" not in r.output
    assert not out.exists()
