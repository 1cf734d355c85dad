"""The runs propose chooses among (bayescale.optimise.candidates)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from bayescale.data.grid import load_grid
from bayescale.errors import InputError
from bayescale.optimise.candidates import auto_candidates, make_candidates, read_candidates, unit_costs

SOURCES = ("a", "b", "c")


@pytest.fixture(scope="module")
def phantom_grid():
    return load_grid("data/grids/phantom-mae.nc")  # volumes: whole numbers, fit runs up to 16


def test_generated_runs_are_singles_pairs_and_mixtures_on_a_ladder_of_whole_volumes(phantom_grid):
    sources = [str(s) for s in phantom_grid["source"].values]
    runs = auto_candidates(sources, phantom_grid, mixtures_per_budget=5)
    totals = sorted({float(a.sum()) for _, a in runs})
    assert totals == [2.0, 4.0, 8.0, 16.0]  # the largest fit run and three halvings
    for name, amounts in runs:
        assert np.all(amounts == np.round(amounts)) and np.all(amounts >= 0)
    singles = [a for _, a in runs if np.count_nonzero(a) == 1]
    pairs = [name for name, a in runs if "+" in name]
    assert len(singles) == 4 * len(sources)
    assert len(pairs) == 4 * len(list(itertools.combinations(sources, 2)))
    keys = [tuple(a) for _, a in runs]
    assert len(keys) == len(set(keys))  # duplicates (a mixture rounding to a single) dropped


def test_fractional_grids_get_fractional_candidates(small_grid):
    sources = [str(s) for s in small_grid["source"].values]
    runs = auto_candidates(sources, small_grid, max_run_budget=10.0, ladder=2, mixtures_per_budget=3)
    assert sorted({round(float(a.sum()), 9) for _, a in runs}) == [5.0, 10.0]
    assert any(np.any(a != np.round(a)) for _, a in runs)


def test_a_candidate_csv_with_names_and_costs(tmp_path):
    (tmp_path / "c.csv").write_text("name,a,c,cost\nfirst,2,1,\nsecond,0,5,7.5\n")
    rows = read_candidates(tmp_path / "c.csv", SOURCES)
    assert [r[0] for r in rows] == ["first", "second"]
    np.testing.assert_array_equal(rows[0][1], [2, 0, 1])  # a missing source column is 0
    assert rows[0][2] is None and rows[1][2] == 7.5


@pytest.mark.parametrize("text, message", [
    ("a,zz\n1,2\n", "column 'zz' is not a source"),
    ("name,cost\nx,1\n", "no column names a source"),
    ("a,b\n1,x\n", "line 2, column 'b': 'x' is not a number"),
    ("a,b\n0,0\n", "line 2: amounts must be >= 0 with some data"),
    ("a,b\n-1,3\n", "line 2: amounts must be >= 0"),
    ("a,cost\n1,0\n", "line 2: cost 0 must be > 0"),
    ("a,b\n", "no candidate rows"),
])
def test_bad_candidate_files_are_one_line_errors_naming_the_line(tmp_path, text, message):
    (tmp_path / "c.csv").write_text(text)
    with pytest.raises(InputError, match=message) as info:
        read_candidates(tmp_path / "c.csv", SOURCES)
    assert "c.csv" in str(info.value) and "\n" not in str(info.value)


def test_run_costs_from_a_file(tmp_path, small_grid):
    sources = [str(s) for s in small_grid["source"].values]
    (tmp_path / "cost.toml").write_text(f"{sources[1]} = 3.0\n")
    (tmp_path / "c.csv").write_text(",".join(sources) + "\n1,2,0,0\n")
    pool = make_candidates(sources, small_grid, tmp_path / "c.csv", run_cost=str(tmp_path / "cost.toml"))
    assert pool.costs.tolist() == [1 + 3 * 2] and pool.cost_unit == "cost.toml"
    assert make_candidates(sources, small_grid, tmp_path / "c.csv").costs.tolist() == [3.0]  # volumes


@pytest.mark.parametrize("text, message", [
    ("zz = 1\n", "run_cost .*'zz' is not a source"),
    ("a = 0\n", "run_cost .*a = 0; a cost per unit must be a number > 0"),
    ("a = \n", "run_cost .*not TOML"),
])
def test_bad_cost_files_are_one_line_errors(tmp_path, text, message):
    (tmp_path / "cost.toml").write_text(text)
    with pytest.raises(InputError, match=message) as info:
        unit_costs(str(tmp_path / "cost.toml"), SOURCES)
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="run_cost nowhere: neither 'volumes' nor a file"):
        unit_costs("nowhere", SOURCES)
