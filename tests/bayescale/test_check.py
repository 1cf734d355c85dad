import numpy as np
import pytest

from bayescale.check import check_holdout, holdout_predictions, score_predictions
from bayescale.errors import InputError
from bayescale.grid import select_split


def test_scores_match_their_definitions(small_draws, small_grid):
    pred = holdout_predictions(small_draws, small_grid)
    scores = score_predictions(pred)
    obs = pred["observed"].values.ravel()
    med = pred["median"].values.ravel()
    assert scores["n"] == obs.size == select_split(small_grid, "holdout")["loss"].size
    assert scores["pearson_r"] == pytest.approx(np.corrcoef(obs, med)[0, 1])
    assert scores["median_abs_rel_error"] == pytest.approx(np.median(np.abs(med - obs) / obs))
    inside90 = (pred["lo90"].values <= pred["observed"].values) & (pred["observed"].values <= pred["hi90"].values)
    assert scores["coverage_90"] == pytest.approx(inside90.mean())
    assert np.all(pred["lo90"] <= pred["lo50"]) and np.all(pred["hi50"] <= pred["hi90"])


def test_extrapolation_is_accurate_on_a_simulated_world(small_draws, small_grid):
    scores = check_holdout(small_draws, small_grid)
    assert scores["pearson_r"] >= 0.98
    assert scores["median_abs_rel_error"] < 0.1
    assert 0.6 <= scores["coverage_90"] <= 1.0


def test_no_holdout_runs_is_a_clear_error(small_draws, small_grid):
    only_fit = select_split(small_grid, "fit")
    with pytest.raises(InputError, match="no runs with split == 'holdout'"):
        check_holdout(small_draws, only_fit, where="g.nc")


def test_grid_from_another_world_is_refused(small_draws, small_grid):
    other = small_grid.assign_coords(source=[f"x{k}" for k in range(small_grid.sizes["source"])])
    with pytest.raises(InputError, match="not in the posterior"):
        check_holdout(small_draws, other)


def test_calibration_verdict_flags_intervals_that_cover_too_little():
    from bayescale.check import calibration_verdict

    fine = calibration_verdict({"n": 40, "coverage_50": 0.5, "coverage_90": 0.9})
    assert fine["verdict"] == "ok"
    over = calibration_verdict({"n": 40, "coverage_50": 0.2, "coverage_90": 0.55})
    assert over["verdict"] == "over-confident" and "over-confident" in over["message"] and "55%" in over["message"]
    under = calibration_verdict({"n": 60, "coverage_50": 0.9, "coverage_90": 1.0})
    assert under["verdict"] == "under-confident"
    # Few cells: a shortfall that chance explains is not flagged.
    assert calibration_verdict({"n": 6, "coverage_50": 0.33, "coverage_90": 0.67})["verdict"] == "ok"


def test_a_world_outside_the_law_family_is_flagged_not_silently_over_confident():
    """Misspecification: past effective data 4 (inside the held-out budgets, beyond the fit
    ones) every loss curve bends to 40 % of its slope. The fitted law cannot see the bend,
    so its held-out intervals are too narrow — and the check must say so."""
    import dataclasses

    from bayescale.fit import fit
    from bayescale.posterior import law_draws
    from bayescale.simulate import draw_world, simulate_grid

    world = dataclasses.replace(draw_world(3, seed=5), broken=(4.0, 0.4))
    grid = simulate_grid(world, seed=5)
    scores = check_holdout(law_draws(fit(grid, chains=2, warmup=300, draws=300, seed=1)), grid)
    assert scores["coverage_90"] < 0.8  # the intervals really are over-confident here ...
    assert scores["calibration"]["verdict"] == "over-confident"  # ... and the check says so
