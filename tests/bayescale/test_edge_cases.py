"""Numerical edge cases of real grids: each either fits with the right warning or stops with a
clear message, and which one is asserted.

| grid | outcome |
|---|---|
| one budget only | fits; warns that other budgets are extrapolated |
| no cross-domain variation (each run evaluated on its own domain only; or one mixture only) | fits; warns that transfer is not identified; T stays as wide as its prior |
| single-domain runs evaluated on every target | fits; no warning (transfer *is* identified) |
| losses from 1e-6 to 1e3 and data from 1 to 1e12 | fits without warning; predicts the runs; allocates 1e12 (certified) |
| a target never evaluated | fits the others; warns that it is left out |
| a source never trained on | warns that its scaling and transfer keep their priors |
| a single run | warns (one budget, no cross-domain variation) |
| no loss evaluated anywhere | stops: one-line InputError |

Fits are short NUTS runs (one chain, 100 + 100 draws): enough to show that sampling works and
where the posterior is wide; not a recovery study.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from typer.testing import CliRunner

from bayescale.cli import app
from bayescale.data.grid import make_grid, save_grid, validate_grid
from bayescale.data.simulate import Design, draw_world, simulate_grid
from bayescale.errors import InputError
from bayescale.evaluate.predict import loss_draws
from bayescale.inference.fit import fit
from bayescale.inference.posterior import law_draws
from bayescale.laws.identification import identification_warnings
from bayescale.laws.transfer import model_data

SHORT = {"chains": 1, "warmup": 100, "draws": 100, "seed": 0}


def world(design: Design | None = None, **changes):
    w = draw_world(3, seed=4)
    if design is not None:
        w.design = design
    for name, value in changes.items():
        setattr(w, name, value)
    return w


def fit_warnings(grid, **kw):
    """Fit and return the posterior and the UserWarnings it raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        idata = fit(grid, **SHORT, **kw)
    return idata, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def warnings_of(grid) -> list[str]:
    data, coords = model_data(validate_grid(grid))
    return identification_warnings(data, coords, "transfer", grid.attrs.get("data_unit", "units"))


def noise_bound() -> float:
    """An in-sample median relative error a fit should stay under: the median |error| of the world's
    own noise (0.6745 sd on log loss, the largest target's: 1.4 %) with 50 % to spare for the
    posterior's spread and 100-draw fits. Measured: 0.6-1.2 % on the grids below."""
    return 1.5 * 0.6745 * float(np.max(world().sigma))


def relative_errors(idata, grid) -> np.ndarray:
    """|median prediction - observed| / observed on every observed cell of the grid (run, target)."""
    draws = law_draws(idata)
    pred = np.median(loss_draws(draws, grid["data"].sel(source=list(draws.sources)).values), axis=0)
    obs = grid["loss"].sel(target=list(draws.targets)).values
    return np.abs(pred - obs) / obs


def off_diagonal_log_T_sd(idata) -> np.ndarray:
    draws = law_draws(idata)
    sd = np.log(draws.T).std(axis=0)
    return sd[draws.self_mask == 0]


def test_one_budget_fits_and_warns_that_other_budgets_are_extrapolated():
    grid = simulate_grid(world(Design(fit_budgets=(32.0,), holdout_budgets=(), mixtures_per_budget=6)), seed=1)
    idata, caught = fit_warnings(grid)
    assert len(caught) == 1 and caught[0].startswith("every fit run has the same budget (32 volumes)"), caught
    assert np.median(relative_errors(idata, grid)) < noise_bound()  # it still describes the runs it has


def _own_domain_only(grid):
    """Each single-domain run evaluated on its own domain only: nothing about transfer."""
    own = grid["data"].values > 0  # (run, source) and sources == targets
    return grid.assign(loss=(("run", "target"), np.where(own, grid["loss"].values, np.nan)))


def test_no_cross_domain_variation_warns_and_keeps_transfer_as_wide_as_its_prior():
    singles = simulate_grid(world(Design(mixtures_per_budget=0, holdout_mixtures_per_budget=0)), seed=1)
    grid = _own_domain_only(singles)
    idata, caught = fit_warnings(grid)
    assert len(caught) == 1 and caught[0].startswith("transfer is not identified: no cross-domain variation"), caught
    # log T_ij has prior sd ~2 (mu_T ~ N(log 0.1, 1.5) plus hub, receptivity and pair terms): the data add nothing
    assert off_diagonal_log_T_sd(idata).min() > 1.0
    assert np.median(relative_errors(idata, grid)[np.isfinite(grid["loss"].values)]) < noise_bound()


def test_runs_that_all_mix_the_sources_alike_do_not_identify_transfer_either():
    grid = simulate_grid(world(), seed=1)
    uniform = grid.isel(run=[i for i, r in enumerate(grid["run"].values) if str(r).startswith("uniform")])
    uniform = uniform.assign_coords(split=("run", ["fit"] * uniform.sizes["run"]))
    assert [w[:26] for w in warnings_of(uniform)] == ["transfer is not identified"]


def test_single_domain_runs_evaluated_on_every_target_identify_transfer_without_warning(small_grid):
    singles = simulate_grid(world(Design(mixtures_per_budget=0, holdout_mixtures_per_budget=0)), seed=1)
    assert warnings_of(singles) == []
    assert warnings_of(small_grid) == []


def test_losses_from_1e_minus_6_to_1e3_and_data_from_1_to_1e12_fit_predict_and_allocate():
    scales = np.array([1e-6, 1.0, 1e3])
    w = world(Design(fit_budgets=(1.0, 1e3, 1e6, 1e9, 1e12), holdout_budgets=(), mixtures_per_budget=2), data_scale=1e6)
    w.E, w.A = w.E * scales, w.A * scales
    grid = simulate_grid(w, seed=1)
    loss, data = grid["loss"].values, grid["data"].values
    assert loss.min() < 1e-5 and loss.max() > 1e3 and data[data > 0].min() < 1.0 and data.max() == 1e12
    idata, caught = fit_warnings(grid)
    assert caught == []
    errors = relative_errors(idata, grid)
    assert np.median(errors, axis=0).max() < noise_bound()  # every loss scale, not just the largest
    from bayescale.optimise.allocate import allocate

    # HiGHS's QP solver used to run for hours on this program's subproblems (now it has a time limit)
    result = allocate(law_draws(idata), 1e12, uncertainty=0, baselines=False)
    assert result["status"] in ("optimal", "optimal_inaccurate")
    assert result["certificate"]["relative_gap"] < 1e-5  # certified near-optimal either way
    assert sum(result["allocation"].values()) == pytest.approx(1e12, rel=1e-6)
    assert all(np.isfinite(row["mean"]) and row["mean"] > 0 for row in result["predicted"].values())


def test_a_target_never_evaluated_is_left_out_with_a_warning_and_the_rest_fits(tmp_path):
    grid = simulate_grid(world(), seed=1)
    loss = grid["loss"].values.copy()
    loss[:, 1] = np.nan
    path = tmp_path / "grid.nc"
    save_grid(grid.assign(loss=(("run", "target"), loss)), path)
    runner = CliRunner()
    r = runner.invoke(app, ["fit", str(path), "--out", str(tmp_path / "f.nc"), "--chains", "1", "--warmup", "100",
                            "--draws", "100", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "warning: target(s) d2 have no observed loss in the fit runs and are left out of the fit" in r.stderr
    r = runner.invoke(app, ["predict", str(tmp_path / "f.nc"), "--alloc", "d1=10,d2=10,d3=10"])
    assert r.exit_code == 0, r.output
    rows = [line.split()[0] for line in r.stdout.splitlines()[1:]]
    assert rows == ["d1", "d3"]  # d2 is still a source, no longer a target


def test_a_source_never_trained_on_warns_that_its_transfer_keeps_its_prior():
    grid = simulate_grid(world(), seed=1)
    data = grid["data"].values.copy()
    data[:, 2] = 0.0
    caught = warnings_of(grid.assign(data=(("run", "source"), data)))
    assert len(caught) == 1 and caught[0].startswith("source(s) d3 have no data in any fit run"), caught


def test_a_target_no_run_informs_about_one_source_names_the_pair():
    grid = simulate_grid(world(), seed=1)
    loss = grid["loss"].values.copy()
    loss[grid["data"].sel(source="d1").values > 0, 2] = np.nan  # d3 never evaluated after any run with d1 data
    caught = warnings_of(grid.assign(loss=(("run", "target"), loss)))
    assert caught == [caught[0]] and "1 of 6 (source, target) pairs" in caught[0] and "d1 -> d3" in caught[0], caught


def test_a_single_run_warns_twice():
    grid = simulate_grid(world(), seed=1).isel(run=[5])
    assert [w.split(" ")[0] for w in warnings_of(grid)] == ["every", "transfer"]


def test_no_loss_evaluated_anywhere_stops_with_one_line():
    with pytest.raises(InputError, match="no run has a finite loss on any target; there is nothing to fit") as info:
        make_grid(["r1", "r2"], ["a", "b"], ["a", "b"], [[1.0, 0.0], [0.0, 1.0]], np.full((2, 2), np.nan))
    assert "\n" not in str(info.value)
