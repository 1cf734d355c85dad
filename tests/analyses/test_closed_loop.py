"""analyses/closed_loop.py: its pure pieces on real objects, and one end-to-end run on a tiny world."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from bayescale.optimise.allocate import law_losses
from bayescale.optimise.baselines import fill
from bayescale.evaluate.check import holdout_predictions
from bayescale.errors import InputError
from bayescale.data.grid import load_grid, make_grid
from bayescale.evaluate.predict import predict

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "analyses" / "closed_loop.py"
_spec = importlib.util.spec_from_file_location("closed_loop", SCRIPT)
cl = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cl)

DEMO_CAPS = {"ct_abdomen": 56, "ct_chest": 56, "mri_t1_brain": 40, "mri_t2_abdomen": 24, "pet_wholebody": 12}


# ------------------------------------------------------------------------------------ allocations and runs


def test_integer_rules_at_the_demo_budget_spend_it_exactly_under_the_caps():
    uniform = cl.integer_rule(144, DEMO_CAPS, "uniform")
    proportional = cl.integer_rule(144, DEMO_CAPS, "proportional")
    # uniform: 28.8 each would break PET's 12 and MRI T2's 24; the rest water-fills to 36 each
    assert uniform == {"ct_abdomen": 36, "ct_chest": 36, "mri_t1_brain": 36, "mri_t2_abdomen": 24, "pet_wholebody": 12}
    # proportional: 144 * caps / 188 = 42.9, 42.9, 30.6, 18.4, 9.2 -> largest remainders
    assert proportional == {"ct_abdomen": 43, "ct_chest": 43, "mri_t1_brain": 31, "mri_t2_abdomen": 18, "pet_wholebody": 9}
    caps = np.array(list(DEMO_CAPS.values()), float)
    for ints, shape in ((uniform, None), (proportional, caps)):
        continuous = fill(144.0, np.zeros(5), caps, shape)
        assert np.all(np.abs(np.array(list(ints.values())) - continuous) < 1)


def test_integer_rule_rounds_without_breaking_a_cap():
    # uniform split of 8 over caps (2, 10, 10): 2, 3, 3 exactly; of 7: 2 and 2.5 + 2.5 -> one of them gets 3
    assert cl.integer_rule(8, {"a": 2, "b": 10, "c": 10}, "uniform") == {"a": 2, "b": 3, "c": 3}
    got = cl.integer_rule(7, {"a": 2, "b": 10, "c": 10}, "uniform")
    assert sum(got.values()) == 7 and got["a"] == 2 and sorted([got["b"], got["c"]]) == [2, 3]
    # fractions all pushing towards a capped domain: the unit goes elsewhere
    assert cl.round_capped([2.9, 2.05, 2.05], [2, 5, 5], 7) == [2, 3, 2]
    with pytest.raises(InputError, match="more than the caps allow"):
        cl.integer_rule(30, {"a": 2, "b": 10, "c": 10}, "uniform")
    with pytest.raises(InputError, match="whole number"):
        cl.integer_rule(6.5, {"a": 10}, "uniform")


def test_plan_runs_names_every_run_by_strategy_and_seed():
    allocations = {"recommended": {"a": 3, "b": 1}, "proportional": {"a": 2, "b": 2}}
    runs = cl.plan_runs(allocations, [0, 4])
    assert [r["id"] for r in runs] == ["recommended-s0", "proportional-s0", "recommended-s4", "proportional-s4"]
    assert runs[2] == {"id": "recommended-s4", "strategy": "recommended", "seed": 4, "data": {"a": 3, "b": 1}}
    with pytest.raises(InputError, match="whole volumes"):
        cl.plan_runs({"recommended": {"a": 2.5, "b": 1}}, [0])
    with pytest.raises(InputError, match="distinct"):
        cl.plan_runs(allocations, [1, 1])
    with pytest.raises(InputError, match="run ids"):
        cl.plan_runs({"my plan": {"a": 1}}, [0])
    with pytest.raises(InputError, match="no data"):
        cl.plan_runs({"empty": {"a": 0}}, [0])


def test_train_config_keeps_the_shipped_recipe_and_lists_the_runs(tmp_path):
    from trainers.config import config_hash, load_config
    from trainers.design import make_design

    recommended = {"ct_abdomen": 26, "ct_chest": 53, "mri_t1_brain": 29, "mri_t2_abdomen": 24, "pet_wholebody": 12}
    allocations = {"recommended": recommended,
                   "uniform": cl.integer_rule(144, DEMO_CAPS, "uniform")}
    runs = cl.plan_runs(allocations, [0, 1, 2])
    out = tmp_path / "study"
    out.mkdir()
    base = REPO / "data" / "configs" / "phantom.toml"
    (out / "train.toml").write_text(cl.train_config_text(base, runs, out))
    config, shipped = load_config(out / "train.toml"), load_config(base)
    # the same recipe as the shipped grid: its records' hash
    assert config_hash(config, None) == load_grid(REPO / "data" / "grids" / "phantom-mae.nc").attrs["config_hash"]
    assert config.data.manifest.resolve() == shipped.data.manifest.resolve()
    assert config.data.cache_dir.resolve() == shipped.data.cache_dir.resolve()
    assert config.phantoms.out.resolve() == shipped.phantoms.out.resolve()
    written = tomllib.loads((out / "train.toml").read_text())
    assert not Path(written["data"]["manifest"]).is_absolute()  # relative to the new file, as the base's were
    assert config.records == out / "records" and config.training.save_checkpoints
    design = make_design(config, {d: 56 for d in DEMO_CAPS})
    assert [r.id for r in design] == [r["id"] for r in runs]
    assert all(r.steps == shipped.training.steps_for(144) == 2000 + 100 * 144 and r.split == "holdout" for r in design)
    assert {k: v for k, v in design[0].data.items()} == allocations["recommended"]
    # a smoke run's fixed steps or a forced device is another recipe, and says so by its hash
    (out / "smoke.toml").write_text(cl.train_config_text(base, runs, out, steps=20))
    smoke = load_config(out / "smoke.toml")
    assert smoke.training.steps_for(144) == 20 and config_hash(smoke, None) != config_hash(config, None)
    (out / "cpu.toml").write_text(cl.train_config_text(base, runs, out, device="cpu"))
    assert config_hash(load_config(out / "cpu.toml"), None) != config_hash(config, None)


# ------------------------------------------------------------------------------------ predictions


def _allocations(draws, budget=40.0):
    k = len(draws.sources)
    even = {s: budget / k for s in draws.sources}
    skewed = {s: (budget * 0.55 if i == 0 else budget * 0.45 / (k - 1)) for i, s in enumerate(draws.sources)}
    return {"recommended": skewed, "proportional": even, "uniform": dict(skewed)}


def test_predicted_table_bands_and_improvements(small_draws):
    allocations = _allocations(small_draws)
    targets = list(small_draws.targets)
    rel = np.full(len(targets), 0.04)
    pred = cl.predicted_table(small_draws, allocations, relative_se=rel, n_seeds=3, seed=0)
    assert pred["targets"] == targets and pred["draws"] == small_draws.n_draws
    law = {name: law_losses(small_draws, [a[s] for s in small_draws.sources]) for name, a in allocations.items()}
    for name, entry in pred["strategies"].items():
        for t in targets + [cl.MEAN]:
            row = entry["rows"][t]
            for kind in ("single_run", "seed_mean", "law"):
                b = row[kind]
                assert b["lo90"] < b["lo50"] < b["median"] < b["hi50"] < b["hi90"]
            width = {k: row[k]["hi90"] - row[k]["lo90"] for k in row}
            assert width["law"] < width["seed_mean"] < width["single_run"]  # noise of one run > of a mean of 3
        for j, t in enumerate(targets):  # the law's band is the library's prediction without noise
            assert entry["rows"][t]["law"]["median"] == pytest.approx(float(np.median(law[name][:, j])), rel=1e-5)
            lib = predict(small_draws, allocations[name], interval=0.9)["targets"][t]
            assert entry["rows"][t]["law"]["lo90"] == pytest.approx(lib["lo"], rel=1e-5)
        mean_law = law[name].mean(axis=1)
        assert entry["rows"][cl.MEAN]["law"]["median"] == pytest.approx(float(np.median(mean_law)), rel=1e-5)
    # improvement over a baseline, draw by draw; identical allocations improve on nothing
    imp = 1 - law["recommended"].mean(axis=1) / law["proportional"].mean(axis=1)
    got = pred["improvement"]["proportional"]["law"]
    assert got["median"] == pytest.approx(float(np.median(imp)), rel=1e-4)
    assert got["p_better"] == pytest.approx(float(np.mean(imp > 0)))
    same = pred["improvement"]["uniform"]["law"]
    assert same["lo90"] == same["hi90"] == 0.0 and same["p_better"] == 0.0
    assert pred["improvement"]["uniform"]["single_run"]["hi90"] > 0 > pred["improvement"]["uniform"]["single_run"]["lo90"]
    # more evaluation noise, wider single-run intervals
    wider = cl.predicted_table(small_draws, allocations, relative_se=rel * 3, n_seeds=3, seed=0)
    t0 = targets[0]
    band = lambda p: p["strategies"]["recommended"]["rows"][t0]["single_run"]  # noqa: E731
    assert band(wider)["hi90"] - band(wider)["lo90"] > 1.2 * (band(pred)["hi90"] - band(pred)["lo90"])


def test_single_run_band_is_the_analytic_predictive_inside_and_past_the_fit_runs(small_draws):
    """One new run's band against the closed form: per draw, its log loss is normal around the law
    (plus the slope error past the fit runs' largest total) with sd sqrt(sigma^2 + relative_se^2);
    the band's quantiles are those of the mixture over draws, found by root finding. The library
    draws one noise sample per draw: each quantile may miss by its Monte Carlo error, at most 5 SE
    (each draw repeated 16 times, the same mixture with a quarter of the error)."""
    from tests.references import normal_mixture_quantiles, predictive_log_loss_mixture, quantile_standard_error

    many = small_draws.subset(np.tile(np.arange(small_draws.n_draws), 16))
    targets = list(small_draws.targets)
    rel = np.array([0.01, 0.02, 0.005, 0.015])[: len(targets)]  # about sigma: both must be right
    probs = {"lo90": 0.05, "lo50": 0.25, "median": 0.5, "hi50": 0.75, "hi90": 0.95}
    inside = _allocations(small_draws, budget=40.0)["recommended"]
    past = {s: 5 * v for s, v in inside.items()}  # 200 raw units, past the fit runs' largest (reach)
    assert sum(inside.values()) < small_draws.reach < sum(past.values())
    pred = cl.predicted_table(many, {"inside": inside, "past": past}, relative_se=rel, n_seeds=1)
    for name, allocation in (("inside", inside), ("past", past)):
        mean, sd = predictive_log_loss_mixture(small_draws, np.array([allocation[s] for s in small_draws.sources]), rel)
        q, density = normal_mixture_quantiles(mean, sd, list(probs.values()))
        se = quantile_standard_error(list(probs.values()), density, many.n_draws)
        for j, t in enumerate(targets):
            got = np.log([pred["strategies"][name]["rows"][t]["single_run"][k] for k in probs])
            assert np.all(np.abs(got - q[:, j]) <= 5 * se[:, j]), (name, t, got, q[:, j], se[:, j])
        # the law's band past the fit runs carries the slope error as predict()'s credible interval does
        lib = predict(small_draws, past, interval=0.9)["targets"]
        for t in targets:
            assert pred["strategies"]["past"]["rows"][t]["law"]["hi90"] == pytest.approx(lib[t]["hi"], rel=1e-5)


# ------------------------------------------------------------------------------------ measured vs predicted


def _measured(pred, factor: dict[str, float], seeds=(0, 1, 2)):
    """Measured losses: each strategy's predicted single-run median times a factor."""
    out = {}
    for name, entry in pred["strategies"].items():
        for s in seeds:
            loss = {t: entry["rows"][t]["single_run"]["median"] * factor[name] for t in pred["targets"]}
            out.setdefault(name, {})[s] = {"loss": loss, "loss_se": {t: 0.0 for t in pred["targets"]}}
    return out


def test_compare_counts_coverage_and_says_when_the_recommendation_loses(small_draws):
    allocations = _allocations(small_draws)
    pred = cl.predicted_table(small_draws, allocations, relative_se=np.full(len(small_draws.targets), 0.03), n_seeds=3)
    J = len(pred["targets"])
    # the recommendation measured 60 % above its prediction: outside every interval, and worse than both rules
    result = cl.compare(pred, _measured(pred, {"recommended": 1.6, "proportional": 1.0, "uniform": 1.0}))
    cov = result["coverage"]
    assert cov["targets"]["n"] == 3 * 3 * J and cov[cl.MEAN]["n"] == 9
    assert cov["targets"]["inside50"] == cov["targets"]["inside90"] == 2 * 3 * J  # the two rules, at their medians
    rec_rows = [r for r in result["rows"] if r["strategy"] == "recommended"]
    assert all(not any(r["inside90"].values()) for r in rec_rows)
    imp = result["improvement"]["proportional"]
    assert imp["n"] == 3 and imp["seeds_better"] == 0 and imp["mean"] < -0.3
    assert "did NOT beat proportional" in imp["verdict"] and "OUTSIDE" in imp["verdict"]
    w = result["weighted_mean"]
    assert imp["per_seed"][0] == pytest.approx(1 - w["recommended"][0] / w["proportional"][0])
    assert w["recommended"][0] == pytest.approx(np.mean([r["measured"][0] for r in rec_rows if r["target"] != cl.MEAN]))

    # the recommendation 5 % better in every seed: a win; missing seeds are not counted
    measured = _measured(pred, {"recommended": 0.95, "proportional": 1.0, "uniform": 1.0}, seeds=(0, 1))
    del measured["uniform"][1]
    result = cl.compare(pred, measured)
    assert result["improvement"]["proportional"]["n"] == 2 and result["improvement"]["uniform"]["n"] == 1
    med = {n: np.mean([pred["strategies"][n]["rows"][t]["single_run"]["median"] for t in pred["targets"]]) for n in allocations}
    assert result["improvement"]["proportional"]["mean"] == pytest.approx(1 - 0.95 * med["recommended"] / med["proportional"])
    assert result["improvement"]["proportional"]["mean"] > 0
    assert "beat proportional in 2 of 2 seeds" in result["improvement"]["proportional"]["verdict"]
    assert result["improvement"]["uniform"]["sd"] is None
    assert cl.compare(pred, {})["improvement"]["proportional"]["verdict"] == "vs proportional: not measured yet"


@pytest.mark.parametrize("kind", ["per_run", "shared"])
def test_evaluation_noise_of_a_new_run_follows_the_grids_kind_of_loss_se(kind):
    """A per-run loss_se is fresh noise in each new run: the median of loss_se / loss per target.
    A shared one (every run scored on the same validation crops, as the trainers' grids are) is a
    per-target offset the law absorbs, not noise between runs: 0 (it once put 0.04-0.11 of
    independent noise on each closed-loop run's log loss)."""
    loss = np.array([[1.0, 2.0], [2.0, 4.0], [4.0, np.nan]])
    se = np.array([[0.1, 0.1], [0.1, 0.8], [0.8, 0.3]])
    grid = make_grid(["a", "b", "c"], ["s0", "s1"], ["s0", "s1"], [[1, 0], [0, 1], [1, 1]], loss, loss_se=se,
                     attrs={"loss_se_kind": kind})
    out = cl.typical_relative_se(grid, ["s1", "s0", "other"])
    if kind == "shared":
        np.testing.assert_array_equal(out, 0.0)
    else:
        # s1: ratios 0.05 and 0.2 (the unobserved cell left out); s0: 0.1, 0.05, 0.2; a target the grid lacks: 0
        np.testing.assert_allclose(out, [np.median([0.05, 0.2]), 0.1, 0.0])


def test_paired_interval_is_the_t_interval_of_the_differences():
    d = np.array([0.013, -0.001, 0.007, 0.015, 0.009])
    half = stats.t.ppf(0.95, df=4) * d.std(ddof=1) / np.sqrt(5)  # by hand
    assert cl.paired_interval(d, 0.9) == pytest.approx([d.mean() - half, d.mean() + half], rel=1e-9)
    assert cl.paired_interval([0.01]) is None
    assert cl.paired_interval([0.02, 0.02]) == [0.02, 0.02]


def test_verdict_reads_the_paired_interval_when_a_seed_loses(small_draws):
    allocations = _allocations(small_draws)
    pred = cl.predicted_table(small_draws, allocations, n_seeds=5)
    measured = _measured(pred, {"recommended": 1.0, "proportional": 1.0, "uniform": 1.0}, seeds=range(5))
    # proportional measures what the recommendation's median is; the recommendation is 1.0-1.5 % better
    # in four seeds and 0.1 % worse in one: the interval excludes 0
    factors = [0.987, 1.001, 0.990, 0.985, 0.991]
    for seed, factor in enumerate(factors):
        measured["proportional"][seed]["loss"] = dict(measured["recommended"][seed]["loss"])
        measured["recommended"][seed]["loss"] = {t: v * factor for t, v in measured["recommended"][seed]["loss"].items()}
    imp = cl.compare(pred, measured)["improvement"]["proportional"]
    assert imp["seeds_better"] == 4
    assert imp["mean"] == pytest.approx(1 - np.mean(factors))
    lo, hi = imp["ci90"]
    assert 0 < lo < imp["mean"] < hi
    assert "excludes 0, though not in every seed (better in 4 of 5 seeds)" in imp["verdict"]
    # a predicted interval across 0 (the arms drawn independently) next to a paired one that excludes it
    wide = {**imp, "predicted": {**imp["predicted"], "seed_mean": {"median": 0.01, "lo90": -0.07, "hi90": 0.08}}}
    assert "the paired measurement resolved the difference" in cl.verdict("proportional", wide)
    narrow = {**wide, "ci90": [-0.002, 0.02]}
    assert "5 seed(s) cannot resolve the predicted difference" in cl.verdict("proportional", narrow)
    # the same gains with a bigger loss in one seed: the interval includes 0, not a clear win
    measured["recommended"][1]["loss"] = {t: v * 1.04 for t, v in measured["recommended"][1]["loss"].items()}
    imp = cl.compare(pred, measured)["improvement"]["proportional"]
    assert imp["ci90"][0] < 0 and "not a clear win" in imp["verdict"]


def test_measured_from_grid_maps_runs_to_strategies_and_refuses_another_plan():
    runs = cl.plan_runs({"recommended": {"a": 3, "b": 1}, "uniform": {"a": 2, "b": 2}}, [0, 1])
    grid = make_grid(["uniform-s1", "recommended-s0", "other"], ["a", "b"], ["a", "b"],
                     [[2, 2], [3, 1], [1, 1]], [[0.5, 0.6], [0.4, 0.7], [0.9, 0.9]], loss_se=np.full((3, 2), 0.01),
                     split="holdout")
    measured = cl.measured_from_grid(grid, runs)
    assert measured == {"uniform": {1: {"loss": {"a": 0.5, "b": 0.6}, "loss_se": {"a": 0.01, "b": 0.01}}},
                        "recommended": {0: {"loss": {"a": 0.4, "b": 0.7}, "loss_se": {"a": 0.01, "b": 0.01}}}}
    bad = grid.copy(deep=True)
    bad["data"][0, 0] = 1.0
    with pytest.raises(InputError, match="uniform-s1"):
        cl.measured_from_grid(bad, runs)


def test_to_toml_round_trips_nested_tables():
    import tomllib

    config = {"description": 'a "quoted" name', "records": "r", "training": {"lr": 0.003, "spacing": [6.0, 6.0], "ok": True},
              "design": {"runs": [{"id": "x-s0", "seed": 0, "data": {"a": 1, "b-c": 0}}]}}
    assert tomllib.loads(cl.to_toml(config)) == config


# ------------------------------------------------------------------------------------ end to end


TINY_STUDY = """
grid = "grid.nc"
[fit]
law = "transfer"
chains = 2
warmup = 100
draws = 100
target_accept = 0.8
[allocate]
budget = 4
objective = "cvar:0.9"
[allocate.available]
ct_a = 3
mri_b = 1
pet_c = 3
"""


@pytest.fixture
def tiny_study(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("monai")
    from tests.trainers.test_domains import write_config, write_dataset
    from trainers.run import train_grid

    write_dataset(tmp_path)
    config = write_config(tmp_path)
    train_grid(config, tmp_path / "grid.nc", progress=False, workers=1)  # the grid the law is fitted to
    study = tmp_path / "study.toml"
    study.write_text(textwrap.dedent(TINY_STUDY))
    return tmp_path, config, study


def _run(*args, timeout=240):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO)


def test_end_to_end_on_a_tiny_world_trains_compares_and_resumes(tiny_study):
    folder, config, study = tiny_study
    out = folder / "out"
    args = ("--config", study, "--train-config", config, "--out", out, "--workers", "1", "--quiet", "--budget", "4", "--seeds", "0,1,2")
    t0 = time.perf_counter()
    first = _run(*args)
    assert first.returncode == 0, first.stdout + first.stderr
    seconds = time.perf_counter() - t0
    result = json.loads((out / "results.json").read_text())
    assert result["runs_planned"] == result["runs_measured"] == 9
    # trained with the recipe of the grid the law was fitted to
    recipe = result["recipe"]
    assert recipe["config_hash"] == load_grid(folder / "grid.nc").attrs["config_hash"] == recipe["grid_config_hash"]
    alloc = result["allocations"]
    assert set(alloc) == {"recommended", "proportional", "uniform"}
    assert alloc["proportional"] == {"ct_a": 2, "mri_b": 0, "pet_c": 2}
    assert alloc["uniform"] == {"ct_a": 2, "mri_b": 1, "pet_c": 1}
    for name, amounts in alloc.items():
        assert sum(amounts.values()) == 4 and amounts["mri_b"] <= 1 and all(v >= 0 for v in amounts.values())
    grid = load_grid(out / "runs.nc")
    assert sorted(grid["run"].values) == sorted(f"{n}-s{s}" for n in alloc for s in (0, 1, 2))
    assert set(grid["split"].values) == {"holdout"}
    for run in grid["run"].values:  # every run kept its encoder for fine-tuning
        assert (out / "records" / f"{run}.pt").stat().st_size > 1000
    cov = result["comparison"]["coverage"]
    assert cov["targets"]["n"] == 27 and cov[cl.MEAN]["n"] == 9
    assert 0 <= cov["targets"]["inside50"] <= cov["targets"]["inside90"] <= 27
    measured = result["comparison"]["weighted_mean"]
    loss = grid["loss"].sel(run="uniform-s2").values
    assert measured["uniform"]["2"] == pytest.approx(float(loss.mean()))
    md = (out / "results.md").read_text()
    assert "| ct_a | recommended |" in md and "vs proportional" in md
    assert (out / "closed_loop.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "improvement of the recommendation" in first.stdout
    print(f"first run {seconds:.1f}s")

    # interrupted after all but one run: the rerun trains exactly that one, reusing fit and plan
    (out / "records" / "proportional-s1.json").unlink()
    (out / "records" / "proportional-s1.pt").unlink()
    plan_before = (out / "plan.json").read_text()
    second = _run(*args)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "reusing" in second.stdout and "trained 1, skipped 8" in second.stdout
    assert (out / "plan.json").read_text() == plan_before
    assert (out / "records" / "proportional-s1.pt").is_file()
    again = json.loads((out / "results.json").read_text())
    assert again["comparison"] == result["comparison"]  # deterministic training: the same numbers

    # --repredict: today's model refitted with the study's settings predicts the study anew. Here the
    # model is the study's own, so the fit and predictions are the pre-registered ones to the bit, and
    # the comparison read back from results.json is the study's.
    re_out = folder / "re"
    third = _run("--config", study, "--out", re_out, "--quiet", "--repredict", out / "results.json")
    assert third.returncode == 0, third.stdout + third.stderr
    re = json.loads((out / "repredicted.json").read_text())
    assert re["predicted"] == result["predicted"]
    assert re["comparison"]["coverage"] == result["comparison"]["coverage"]
    assert re["comparison"]["weighted_mean"] == result["comparison"]["weighted_mean"]
    assert "not pre-registered" in (out / "repredicted.md").read_text()
    bad = _run("--config", study, "--out", re_out, "--quiet", "--repredict", out / "plan.json")
    assert bad.returncode == 2 and "--repredict" in bad.stdout and "not a closed-loop results.json" in bad.stdout


def test_bad_input_is_one_line_and_exit_status_2(tmp_path, capsys):
    study = tmp_path / "study.toml"
    study.write_text(textwrap.dedent(TINY_STUDY))
    assert cl.main(["--config", str(study), "--out", str(tmp_path / "out"), "--budget", "40", "--quiet"]) == 2
    text = capsys.readouterr().out.replace("\n", " ")
    assert "error:" in text and "budget 40 is more than the caps allow" in text
    assert cl.main(["--config", str(study), "--out", str(tmp_path / "out"), "--seeds", "1,1", "--quiet"]) == 2
    assert "distinct" in capsys.readouterr().out
