"""The run design: ladders, Dirichlet mixtures, held-out runs, steps, availability."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from bayescale.errors import InputError
from trainers.config import load_config
from trainers.design import dirichlet_counts, make_design, pool_order, round_to_budget

CONFIG = """
[data]
manifest = "manifest.toml"
crop = 16
[model]
patch_size = 8
[training]
steps_per_volume = 10.0
min_steps = 30
max_steps = 200
[design]
fit_budgets = [2, 4, 8]
holdout_budgets = [16]
mixtures_per_budget = 2
holdout_mixtures_per_budget = 1
holdout_single_domain = true
seeds = [0, 1]
concentration = 0.5
[[design.runs]]
id = "pair-ct-mri"
data = { ct = 10, mri = 10 }
split = "holdout"
seed = 5
"""

AVAILABLE = {"ct": 20, "mri": 20, "pet": 20}


def config(tmp_path, text=CONFIG):
    path = tmp_path / "c.toml"
    path.write_text(textwrap.dedent(text))
    return load_config(path)


def test_design_has_ladders_mixtures_and_holdouts(tmp_path):
    runs = make_design(config(tmp_path), AVAILABLE)
    ids = [r.id for r in runs]
    assert len(ids) == len(set(ids))
    singles = [r for r in runs if r.kind == "single" and r.split == "fit"]
    assert len(singles) == 2 * 3 * 3  # seeds x domains x budgets
    mixes = [r for r in runs if r.kind == "mixture" and r.split == "fit"]
    assert len(mixes) == 2 * 3 * 2  # seeds x budgets x draws
    for r in mixes:
        assert r.budget in (2, 4, 8)
        assert sum(1 for n in r.data.values() if n) >= 2
    holdouts = [r for r in runs if r.split == "holdout"]
    fit_max = max(r.budget for r in runs if r.split == "fit")
    assert all(r.budget > fit_max for r in holdouts if r.kind != "explicit")
    assert {r.kind for r in holdouts} == {"single", "mixture", "explicit"}
    explicit = runs[-1]
    assert explicit.id == "pair-ct-mri" and explicit.seed == 5 and explicit.data == {"ct": 10, "mri": 10, "pet": 0}
    # steps proportional to the budget, clamped
    by_id = {r.id: r for r in runs}
    assert by_id["single-ct-n002-s0"].steps == 30
    assert by_id["single-ct-n004-s0"].steps == 40
    assert by_id["holdout-single-pet-n016-s1"].steps == 160
    # mixtures replicate across seeds
    assert by_id["mix-b008-m1-s0"].data == by_id["mix-b008-m1-s1"].data
    assert make_design(config(tmp_path), AVAILABLE) == runs  # deterministic


def test_a_run_asking_for_more_volumes_than_a_domain_has(tmp_path):
    with pytest.raises(InputError) as excinfo:
        make_design(config(tmp_path), {"ct": 20, "mri": 20, "pet": 12})
    message = str(excinfo.value)
    assert "'pet'" in message and "only 12" in message and "holdout-single-pet-n016-s0" in message


def test_explicit_run_with_an_unknown_domain(tmp_path):
    text = CONFIG.replace("data = { ct = 10, mri = 10 }", "data = { ct = 10, us = 3 }")
    with pytest.raises(InputError, match="domain 'us'"):
        make_design(config(tmp_path, text), AVAILABLE)


def test_rounding_and_dirichlet_counts():
    assert round_to_budget(np.array([0.5, 0.25, 0.25]), 4).tolist() == [2, 1, 1]
    assert round_to_budget(np.array([0.34, 0.33, 0.33]), 2).sum() == 2
    for k in range(20):
        counts = dirichlet_counts(["a", "b", "c", "d"], 5, 0.3, [0, 5, k])
        assert sum(counts.values()) == 5 and sum(1 for v in counts.values() if v) >= 2


def test_pool_order_is_a_seeded_permutation():
    a = pool_order("ct", 0, 10)
    assert sorted(a) == list(range(10))
    assert a == pool_order("ct", 0, 10)
    assert a != pool_order("ct", 1, 10)


def test_base_steps_and_their_conflicts(tmp_path):
    text = CONFIG.replace("min_steps = 30\nmax_steps = 200", "base_steps = 100")
    runs = {r.id: r for r in make_design(config(tmp_path, text), AVAILABLE)}
    assert runs["single-ct-n002-s0"].steps == 120 and runs["holdout-single-ct-n016-s0"].steps == 260
    with pytest.raises(InputError, match="go with steps_per_volume"):
        config(tmp_path, CONFIG.replace("steps_per_volume = 10.0", "steps = 50"))
