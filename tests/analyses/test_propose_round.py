"""The real propose round's pieces (analyses/propose_round.py); the round itself trains for real and
is run by hand (its results are in analyses/results/propose-round/)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

from bayescale.data.grid import load_grid, make_grid

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # the script imports analyses.closed_loop
_spec = importlib.util.spec_from_file_location("propose_round", REPO / "analyses" / "propose_round.py")
pr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pr)

SOURCES = ["ct_abdomen", "ct_chest", "mri_t1_brain", "mri_t2_abdomen", "pet_wholebody"]
CAPS = {"ct_abdomen": 56, "ct_chest": 56, "mri_t1_brain": 40, "mri_t2_abdomen": 24, "pet_wholebody": 12}


def test_the_fixed_set_is_a_single_per_domain_and_a_mixture_at_one_budget_costing_what_the_proposal_does():
    runs = pr.fixed_runs(SOURCES, 150.0, 6, CAPS)
    assert len(runs) == 6 and len({r["id"] for r in runs}) == 6 and len({r["seed"] for r in runs}) == 6
    assert [list(r["data"]) for r in runs[:5]] == [[s] for s in SOURCES]
    assert runs[4]["data"] == {"pet_wholebody": 12}  # its pool caps the single at 12 of 25
    assert sum(runs[5]["data"].values()) == 25 and len(runs[5]["data"]) >= 2
    assert all(isinstance(v, int) and v > 0 for r in runs for v in r["data"].values())


def test_the_new_runs_join_the_shipped_grid_as_fit_runs():
    shipped = load_grid(REPO / "data" / "grids" / "phantom-mae.nc")
    targets = [str(t) for t in shipped["target"].values]
    measured = make_grid(["a", "b"], SOURCES, targets, np.array([[4, 0, 0, 0, 0], [0, 2, 2, 0, 0]], float),
                         np.full((2, len(targets)), 0.5), split=["holdout", "holdout"])
    grid = pr.with_runs(shipped, measured, ["b"])
    assert grid.sizes["run"] == shipped.sizes["run"] + 1
    assert str(grid["split"].values[-1]) == "fit" and float(grid["data"].values[-1, 1]) == 2.0
    assert (grid["split"].values[:-1] == shipped["split"].values).all()
    assert pr.total_variation({"a": 0.5, "b": 0.5}, {"a": 1.0}) == 0.5
