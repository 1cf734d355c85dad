"""analyses/sequential_design.py: the truth it scores against, the designs' costs, and one tiny
end-to-end study (one world, one round, real SVI fits and proposals)."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from bayescale.data.grid import self_mask_for
from bayescale.data.simulate import draw_world, simulate_runs
from bayescale.laws import power
from bayescale.laws.draws import loss_draws

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "analyses" / "sequential_design.py"
_spec = importlib.util.spec_from_file_location("sequential_design", SCRIPT)
sd = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sd)

TINY = ["--method", "svi", "--worlds", "1", "--domains", "3", "--rounds", "1", "--round-cost", "32", "--max-run", "8", "--budget", "32",
        "--svi-steps", "400", "--draws", "200", "--outcomes", "8", "--decisions", "4"]


def test_simulated_runs_follow_the_worlds_law():
    """Without noise the simulated losses are the law, computed independently by bayescale.laws.power
    (and loss_draws of the truth's LawDraws); with noise, log loss scatters by the world's sigma."""
    world = draw_world(5, seed=3)
    rng = np.random.default_rng(0)
    amounts = np.vstack([8 * np.eye(5), rng.integers(0, 20, (6, 5)), np.zeros((1, 5))]).astype(float)
    world.sigma = np.zeros(5)
    quiet = simulate_runs(world, amounts, 0)
    mask = self_mask_for(world.domains, world.domains)
    law = power.loss(jnp.asarray(amounts / world.data_scale), world.E, world.A, world.alpha, world.x0,
                     jnp.asarray(world.T * (1 - mask)), world.beta, jnp.asarray(mask, dtype=float))
    np.testing.assert_allclose(quiet, np.asarray(law), rtol=2e-5)
    np.testing.assert_allclose(quiet, loss_draws(sd.truth_draws(world), amounts)[0], rtol=2e-5)

    world = draw_world(5, seed=3)
    noisy = simulate_runs(world, np.repeat(amounts[:1], 4000, axis=0), 1)
    log_ratio = np.log(noisy / world.loss(amounts[:1]))
    assert np.all(np.abs(log_ratio.mean(axis=0)) < 5 * world.sigma / np.sqrt(4000))
    np.testing.assert_allclose(log_ratio.std(axis=0), world.sigma, rtol=0.06)


def test_the_oracle_beats_every_other_allocation_of_the_budget():
    world = draw_world(5, seed=1)
    best = sd.oracle(world, 64.0)
    alloc = np.array([best["allocation"][d] for d in world.domains])
    assert alloc.sum() == pytest.approx(64.0) and np.all(alloc >= -1e-9)
    assert sd.true_loss(world, alloc) - best["loss"] == 0.0  # the oracle's own regret
    rng = np.random.default_rng(0)
    others = [64 * rng.dirichlet(np.ones(5)) for _ in range(200)] + [np.full(5, 12.8)]
    others += [np.clip(alloc + rng.normal(0, 0.5, 5), 0, None) for _ in range(50)]  # near the optimum
    others = [64 * a / a.sum() for a in others]
    assert min(sd.true_loss(world, a) for a in others) >= best["loss"] * (1 - sd.REGRET_TOL)


def test_the_default_fixed_design_is_two_whole_levels_in_four_equal_rounds():
    domains = draw_world(5, seed=0).domains
    schedule = sd.fixed_schedule(domains, 0, 4, 96.0)
    assert [sum(a.sum() for _, a in runs) for runs in schedule] == [96.0] * 4
    names = [name for runs in schedule for name, _ in runs]
    for level in (16, 32):
        assert [n for n in names if n.endswith(f"-{level}")] == [f"single-{d}-{level}" for d in domains] + [
            f"mix{m}-{level}" for m in range(3)]
    mixtures = [a for runs in schedule for name, a in runs if name.startswith("mix")]
    assert all((a > 0).sum() >= 2 and a.sum() in (16, 32) and np.all(a == np.round(a)) for a in mixtures)
    seed = sd.seed_design(domains, 0)
    assert len(seed) == 15 and sum(a.sum() for _, a in seed) == 100


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("sequential")
    lines: list[str] = []
    assert sd.main([*TINY, "--out", str(out)], log=lines.append) == 0
    return out, lines


def test_a_tiny_study_spends_equal_costs_and_scores_regret_against_the_truth(tiny_study):
    out, lines = tiny_study
    units = {s: json.loads((out / "units" / f"world00-{s}.json").read_text()) for s in sd.DEFAULT_STRATEGIES}
    world = draw_world(3, seed=0)
    best = sd.oracle(world, 32.0)
    for strategy, unit in units.items():
        assert unit["strategy"] == strategy and len(unit["records"]) == 2
        assert unit["oracle"]["loss"] == pytest.approx(best["loss"], rel=1e-12)
        for rec in unit["records"]:
            assert rec["regret"] >= -sd.REGRET_TOL * best["loss"]
            assert rec["regret"] == pytest.approx(sd.true_loss(world, list(rec["allocation"].values())) - best["loss"], abs=1e-12)
            assert sum(rec["allocation"].values()) == pytest.approx(32.0, rel=1e-6)
    # every strategy starts from the same seed design and fit, and spends the same per round
    first = {json.dumps(u["records"][0], sort_keys=True) for u in units.values()}
    assert len(first) == 1
    assert {u["records"][1]["added_cost"] for u in units.values()} == {32.0}
    for unit in units.values():
        added = np.array(unit["records"][1]["new_data"]).sum()
        assert added == 32.0 and unit["records"][1]["total_cost"] == unit["records"][0]["total_cost"] + 32.0
    assert units["fixed"]["records"][1]["new_runs"] == [f"single-{d}-16" for d in world.domains[:2]]
    assert units["propose"]["records"][1]["propose_calls"][0]["batch"]
    summary = json.loads((out / "summary.json").read_text())
    assert {row["strategy"] for row in summary["rows"]} == {"seed design", *sd.DEFAULT_STRATEGIES}
    share = summary["headline"]["propose"]["shares"][0]
    final_fixed = units["fixed"]["records"][-1]["regret"]
    reached = [r["added_cost"] / 32.0 for r in units["propose"]["records"] if r["regret"] <= final_fixed]
    assert share == (reached[0] if reached else None)
    assert "| strategy | added cost |" in (out / "summary.md").read_text()
    assert any("round 1/1" in line for line in lines)


def test_a_rerun_reuses_finished_units(tiny_study):
    out, _ = tiny_study
    stamps = {p: p.stat().st_mtime_ns for p in (out / "units").iterdir()}
    lines: list[str] = []
    t0 = time.perf_counter()
    assert sd.main([*TINY, "--out", str(out)], log=lines.append) == 0
    assert time.perf_counter() - t0 < 10
    assert {p: p.stat().st_mtime_ns for p in (out / "units").iterdir()} == stamps
    assert sum("finished before" in line for line in lines) == 3


@pytest.mark.parametrize("argv, message", [
    (["--worlds", "0"], "--worlds: 0 must be >= 1"),
    (["--strategies", "propose,greedy"], "choose from propose, fixed, random"),
    (["--max-run", "20"], "cannot fill rounds"),
    (["--round-cost", "8"], "smaller than the fixed design's next run"),
])
def test_bad_arguments_are_one_line_errors(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        sd.main([*argv, "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "error: " in err[-1] and message in err[-1]


def test_propose_refit_refits_between_batches_and_spends_the_round(tmp_path):
    """propose-refit: batches stop where the reweighted posterior thins out, each is observed and the
    law refitted before the next; the round's cost is spent exactly, every run observed once."""
    out = tmp_path / "refit"
    assert sd.main([*TINY, "--strategies", "propose-refit,fixed", "--out", str(out)], log=lambda _: None) == 0
    unit = json.loads((out / "units" / "world00-propose-refit.json").read_text())
    last = unit["records"][-1]
    assert last["added_cost"] == pytest.approx(json.loads((out / "units" / "world00-fixed.json").read_text())["records"][-1]["added_cost"])
    calls = last["propose_calls"]
    assert calls and sum(call["taken"] for call in calls) == len(last["new_runs"])
    assert all(len(call["batch"]) == 1 or call["effective_draws"] >= 20 or call["notes"] for call in calls)


@pytest.mark.parametrize("left, costs, expected", [
    (4, [2, 2], True), (3, [2, 2], False), (5, [4, 2, 1], True), (7, [4, 2, 1], True), (8, [4, 2, 1], False),
    (0, [], True), (1, [2, 4], False), (1.5, [1, 1], False), (6, [1, 1, 1, 1, 2], True),
])
def test_a_round_is_filled_only_where_the_runs_left_add_up(left, costs, expected):
    """The subset sum behind propose's rounds, against enumeration of every subset."""
    import itertools

    brute = any(abs(sum(c) - left) < 1e-9 for r in range(len(costs) + 1) for c in itertools.combinations(costs, r))
    assert sd.can_fill(left, costs) is brute is expected
