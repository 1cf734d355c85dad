"""The run design: ladders, Dirichlet mixtures, held-out runs, steps, availability."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from bayescale.errors import InputError
from trainers.config import config_hash, load_config, with_extra_runs
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


# ---------------------------------------------------------------------------
# design files: bayescale train --design FILE (explicit runs only, e.g. from bayescale propose)

DESIGN_FILE = """
# bayescale propose: 2 runs
[design]
[[design.runs]]
id = "propose-r1-ct4"
data = { ct = 4, mri = 0 }
seed = 0
split = "fit"
[[design.runs]]
id = "propose-r2-mix"
data = { ct = 10, pet = 7 }
seed = 1
split = "holdout"
"""


def design_file(tmp_path, text=DESIGN_FILE, name="proposed.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def one_line_error(call) -> str:
    with pytest.raises(InputError) as excinfo:
        call()
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message


def test_design_file_runs_join_the_design_with_their_data_seed_and_split(tmp_path, monkeypatch):
    base = config(tmp_path)
    design_file(tmp_path)
    monkeypatch.chdir(tmp_path)  # a relative path is the shell's, as for the config itself
    extended = with_extra_runs(base, "proposed.toml")
    runs, before = make_design(extended, AVAILABLE), make_design(base, AVAILABLE)
    assert runs[: len(before)] == before  # the config's own runs come first, unchanged
    added = runs[len(before):]
    assert [r.id for r in added] == ["propose-r1-ct4", "propose-r2-mix"]
    assert added[0].data == {"ct": 4, "mri": 0, "pet": 0} and added[0].seed == 0 and added[0].split == "fit"
    assert added[1].data == {"ct": 10, "mri": 0, "pet": 7} and added[1].seed == 1 and added[1].split == "holdout"
    assert {r.kind for r in added} == {"explicit"} and added[0].steps == 40  # steps from the config's recipe
    # the hash of the records leaves the design out: records made without the file stay valid
    assert config_hash(extended, "data") == config_hash(base, "data")


@pytest.mark.parametrize(
    "run_id, first_in",
    [("single-ct-n004-s0", "c.toml"), ("pair-ct-mri", "c.toml"), ("propose-r1-ct4", None)],
    ids=["generated", "explicit-in-config", "twice-in-the-file"],
)
def test_a_design_file_run_id_already_in_the_design(tmp_path, run_id, first_in):
    path = design_file(tmp_path, DESIGN_FILE.replace('id = "propose-r2-mix"', f'id = "{run_id}"'))
    extended = with_extra_runs(config(tmp_path), path)
    message = one_line_error(lambda: make_design(extended, AVAILABLE))
    assert message.startswith(f"{path}: ") and f"run id {run_id!r} appears twice" in message
    if first_in is not None:
        assert f"(first in {tmp_path / first_in})" in message


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[design]\nfit_budgets = [2]\n" + DESIGN_FILE.split("[design]")[1], "unknown key 'design.fit_budgets'"),
        ("[training]\nsteps = 5\n" + DESIGN_FILE, "unknown key 'training'"),
        ('description = "x"\n' + DESIGN_FILE, "unknown key 'description'"),
        (DESIGN_FILE.replace("seed = 1", "seed = 1\nweight = 2"), "unknown key 'design.runs[2].weight'"),
        (DESIGN_FILE.replace("split = \"holdout\"", "split = \"test\""), "design.runs[2].split is 'test'"),
        ("[design]\n", "no [[design.runs]]"),
        ("[[design.runs]\n", "not valid TOML"),
    ],
    ids=["ladder-key", "other-table", "top-level-key", "run-key", "bad-split", "no-runs", "bad-toml"],
)
def test_a_design_file_with_anything_but_explicit_runs_is_refused(tmp_path, text, expected):
    path = design_file(tmp_path, text)
    message = one_line_error(lambda: with_extra_runs(config(tmp_path), path))
    assert message.startswith(f"{path}: ") and expected in message


def test_a_missing_design_file(tmp_path):
    message = one_line_error(lambda: with_extra_runs(config(tmp_path), tmp_path / "absent.toml"))
    assert message == f"{tmp_path / 'absent.toml'}: no such design file"


def test_a_design_file_run_asking_for_more_volumes_than_a_domain_has(tmp_path):
    path = design_file(tmp_path, DESIGN_FILE.replace("pet = 7", "pet = 21"))
    extended = with_extra_runs(config(tmp_path), path)
    message = one_line_error(lambda: make_design(extended, AVAILABLE))
    assert message.startswith(f"{path}: ")
    assert "run 'propose-r2-mix' asks for 21 volumes of domain 'pet', which has only 20" in message
