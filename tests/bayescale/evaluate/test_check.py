import numpy as np
import pytest
import scipy.stats

from bayescale.evaluate.check import check_holdout, holdout_predictions, score_predictions
from bayescale.errors import InputError
from bayescale.data.grid import select_split


def test_scores_of_a_hand_made_prediction():
    """Three observed cells (one missing), scores worked out by hand; r by SciPy's implementation."""
    import xarray as xr

    nan = np.nan
    cells = {
        "observed": [[1.0, 2.0], [4.0, nan]],
        "median": [[1.1, 1.8], [5.0, 3.0]],  # relative errors 0.1, 0.1, 0.25: median 0.1
        "lo50": [[1.05, 1.5], [4.5, 2.0]], "hi50": [[1.2, 2.5], [5.5, 4.0]],  # only 2.0 inside
        "lo90": [[0.9, 1.0], [4.1, 1.0]], "hi90": [[1.3, 3.0], [6.0, 5.0]],  # 1.0 and 2.0 inside, 4.0 not
    }
    pred = xr.Dataset({k: (("run", "target"), np.array(v)) for k, v in cells.items()})
    scores = score_predictions(pred)
    assert scores["n"] == 3
    assert scores["median_abs_rel_error"] == pytest.approx(0.1)
    assert scores["coverage_50"] == pytest.approx(1 / 3) and scores["coverage_90"] == pytest.approx(2 / 3)
    assert scores["pearson_r"] == pytest.approx(scipy.stats.pearsonr([1.1, 1.8, 5.0], [1.0, 2.0, 4.0]).statistic)


def test_scores_of_the_small_world_count_every_held_out_cell(small_draws, small_grid):
    pred = holdout_predictions(small_draws, small_grid)
    scores = score_predictions(pred)
    assert scores["n"] == pred["observed"].size == select_split(small_grid, "holdout")["loss"].size
    assert scores["pearson_r"] == pytest.approx(scipy.stats.pearsonr(pred["median"].values.ravel(), pred["observed"].values.ravel()).statistic)
    assert np.all(pred["lo90"] <= pred["lo50"]) and np.all(pred["hi50"] <= pred["hi90"])


def test_holdout_bands_are_the_analytic_predictive_of_each_run(small_draws, small_grid):
    """Each held-out cell's band against the closed form, computed without the library's noise
    code: per draw a normal around the law (plus the slope error past the fit runs' largest total)
    with the draw's sigma; the quantiles of the mixture over draws by root finding. Runs past the
    fit runs (most held-out runs) test the slope error; a Monte Carlo miss of 5 SE at most (each
    draw repeated 16 times: the same mixture, a quarter of the error)."""
    from tests.references import normal_mixture_quantiles, predictive_log_loss_mixture, quantile_standard_error

    many = small_draws.subset(np.tile(np.arange(small_draws.n_draws), 16))
    pred = holdout_predictions(many, small_grid)
    held = select_split(small_grid, "holdout")
    probs = {"lo90": 0.05, "lo50": 0.25, "median": 0.5, "hi50": 0.75, "hi90": 0.95}
    totals = held["data"].sum("source").values
    assert (totals > small_draws.reach).sum() >= 5  # the slope error is in play
    for r, run in enumerate(held["run"].values):
        mean, sd = predictive_log_loss_mixture(small_draws, held["data"].values[r])
        q, density = normal_mixture_quantiles(mean, sd, list(probs.values()))
        se = quantile_standard_error(list(probs.values()), density, many.n_draws)
        got = np.log(np.array([pred[k].sel(run=run).values for k in probs]))  # (quantile, target)
        assert np.all(np.abs(got - q) <= 5 * se), (str(run), got - q, se)


def test_extrapolation_is_accurate_on_a_simulated_world(small_draws, small_grid):
    scores = check_holdout(small_draws, small_grid)
    assert scores["pearson_r"] >= 0.98
    assert scores["median_abs_rel_error"] < 0.1
    # Coverage with the cells of one run as one cluster (one model and seed: their errors move
    # together), computed here from the intervals: each run's share of cells inside, then a one-sided
    # t-test of over-confidence on the runs (the project's warning), at 0.1 %.
    pred = holdout_predictions(small_draws, small_grid)
    for level in (50, 90):
        inside = (pred[f"lo{level}"] <= pred["observed"]) & (pred["observed"] <= pred[f"hi{level}"])
        per_run = inside.where(pred["observed"].notnull()).mean("target").values
        runs = per_run.size
        upper = per_run.mean() + scipy.stats.t.ppf(0.999, runs - 1) * per_run.std(ddof=1) / np.sqrt(runs)
        assert upper >= level / 100, (level, per_run)
        assert scores[f"coverage_{level}"] == pytest.approx(float(inside.sum() / pred["observed"].notnull().sum()))


def test_no_holdout_runs_is_a_clear_error(small_draws, small_grid):
    only_fit = select_split(small_grid, "fit")
    with pytest.raises(InputError, match="no runs with split == 'holdout'"):
        check_holdout(small_draws, only_fit, where="g.nc")


def test_grid_from_another_world_is_refused(small_draws, small_grid):
    other = small_grid.assign_coords(source=[f"x{k}" for k in range(small_grid.sizes["source"])])
    with pytest.raises(InputError, match="not in the posterior"):
        check_holdout(small_draws, other)


def test_calibration_verdict_flags_intervals_that_cover_too_little():
    from bayescale.evaluate.check import calibration_verdict

    fine = calibration_verdict({"n": 40, "coverage_50": 0.5, "coverage_90": 0.9})
    assert fine["verdict"] == "ok"
    over = calibration_verdict({"n": 40, "coverage_50": 0.2, "coverage_90": 0.55})
    assert over["verdict"] == "over-confident" and "over-confident" in over["message"] and "55%" in over["message"]
    under = calibration_verdict({"n": 60, "coverage_50": 0.9, "coverage_90": 1.0})
    assert under["verdict"] == "under-confident"
    # Few cells: a shortfall that chance explains is not flagged.
    assert calibration_verdict({"n": 6, "coverage_50": 0.33, "coverage_90": 0.67})["verdict"] == "ok"


def _cells(inside_by_run: list[list[bool]], level: int):
    """Held-out predictions over (run, target) whose cells fall inside the level's interval as given."""
    import xarray as xr

    inside = np.array(inside_by_run, dtype=bool)
    observed = np.where(inside, 1.0, 3.0)
    ones = np.ones_like(observed)
    data = {"observed": observed, "median": ones}
    for tag in (50, 90):
        data[f"lo{tag}"], data[f"hi{tag}"] = 0.5 * ones, 2.0 * ones
    return xr.Dataset({k: (("run", "target"), v) for k, v in data.items()})


def test_the_coverage_test_counts_a_run_as_one_cluster():
    from scipy import stats

    from bayescale.evaluate.check import calibration_verdict, cluster_coverage_p

    # 10 runs x 5 targets, 7 runs wholly inside, 3 wholly outside: 70 % of 50 cells. As 50
    # independent cells that is 35 of 50 against 90 % (binomial p ~ 2e-5: flagged); as 10 runs
    # it is 7 of 10, which chance explains far more easily.
    pred = _cells([[True] * 5] * 7 + [[False] * 5] * 3, 90)
    p_low, _ = cluster_coverage_p(pred, 0.9)
    binomial = stats.binomtest(35, 50, 0.9, alternative="less").pvalue
    assert binomial < 1e-3 and p_low > 10 * binomial
    # by hand: k = 5 or 0 per run, n = 5; sd = sqrt(7 (5 - 4.5)^2 + 3 (0 - 4.5)^2) / 50; t = (0.7 - 0.9) / sd, df 9
    sd = np.sqrt(7 * 0.5**2 + 3 * 4.5**2) / 50
    assert p_low == pytest.approx(stats.t.cdf((0.7 - 0.9) / sd, 9))
    scores = {"n": 50, "coverage_50": 0.7, "coverage_90": 0.7}
    assert calibration_verdict(scores)["verdict"] == "over-confident"  # cells as trials
    clustered = calibration_verdict(scores, pred)
    assert clustered["p_values"]["0.9"] == pytest.approx(p_low)
    # one cell per run: the cluster variance is the binomial one (normal approximation)
    single = _cells([[True]] * 30 + [[False]] * 10, 90)
    p_single, _ = cluster_coverage_p(single, 0.9)
    z = (30 / 40 - 0.9) / np.sqrt(30 * 0.1**2 + 10 * 0.9**2) * 40
    assert p_single == pytest.approx(stats.t.cdf(z, 39))


def test_a_world_outside_the_law_family_is_flagged_not_silently_over_confident():
    """Misspecification: past effective data 4 (inside the held-out budgets, beyond the fit
    ones) every loss curve bends to 40 % of its slope. The fitted law cannot see the bend,
    so its held-out intervals are too narrow — and the check must say so. The law's error past
    its data (``slope_error``, calibrated by leaving the future out) widens them, and it is
    measured here too: without it is the law's own posterior, what the check must flag."""
    import dataclasses

    from bayescale.inference.fit import fit
    from bayescale.inference.posterior import law_draws
    from bayescale.data.simulate import Design, draw_world, simulate_grid

    # 22 held-out runs (66 cells): the test counts a run as one cluster, so it needs runs, not cells
    # (with 10 runs the 60 % coverage of 90 % intervals gives p = 0.02, short of the 0.01 it flags at)
    world = dataclasses.replace(draw_world(3, seed=5), broken=(4.0, 0.4), design=Design(holdout_mixtures_per_budget=10))
    grid = simulate_grid(world, seed=5)
    calibrated = law_draws(fit(grid, chains=2, warmup=300, draws=300, seed=1))
    draws = dataclasses.replace(calibrated, slope_error=None)  # the same posterior, the law's own intervals
    scores = check_holdout(draws, grid)
    assert scores["coverage_90"] < 0.8  # the intervals really are over-confident here ...
    assert scores["calibration"]["verdict"] == "over-confident"  # ... and the check says so
    # ... and so does the PIT: held-out observations pile up in the predictive's tails
    from bayescale.evaluate.check import coverage_curve

    pit = holdout_predictions(draws, grid)["pit"].values.ravel()
    assert np.mean((pit < 0.05) | (pit > 0.95)) > 0.2  # 10 % if calibrated
    curve = coverage_curve(holdout_predictions(draws, grid))
    below = np.asarray(curve["empirical"]) < np.asarray(curve["lo"])
    assert below[-5:].all()  # the wide intervals cover less than a calibrated predictive could by chance
    # The slope error widens the intervals past the fit budgets: more cells inside, none fewer
    # (the same law draws and the same noise stream; only the extrapolation term is added).
    widened = holdout_predictions(calibrated, grid)
    plain = holdout_predictions(draws, grid)
    assert float(widened["hi90"].mean() / widened["lo90"].mean()) > float(plain["hi90"].mean() / plain["lo90"].mean())
    assert check_holdout(calibrated, grid)["coverage_90"] > scores["coverage_90"]


def test_pit_and_coverage_curve_agree_with_the_interval_scores(small_draws, small_grid):
    from bayescale.evaluate.check import coverage_curve

    pred = holdout_predictions(small_draws, small_grid)
    scores = score_predictions(pred)
    pit = pred["pit"].values.ravel()
    assert np.all((pit >= 0) & (pit <= 1)) and pit.size == scores["n"]
    # PIT < the cell's 50 % quantile exactly when the observation is below the predictive median
    below_median = pred["observed"].values.ravel() < pred["median"].values.ravel()
    assert np.array_equal(pit < 0.5, below_median) or np.mean((pit < 0.5) != below_median) <= 1 / pit.size
    curve = coverage_curve(pred, levels=[0.5, 0.9])
    tolerance = 2 / scores["n"]  # quantile interpolation vs draw counting: at most a cell or two apart
    assert curve["empirical"][0] == pytest.approx(scores["coverage_50"], abs=tolerance)
    assert curve["empirical"][1] == pytest.approx(scores["coverage_90"], abs=tolerance)
    full = coverage_curve(pred)
    assert np.all(np.diff(full["empirical"]) >= 0)  # wider intervals cover at least as much
    assert np.all(np.asarray(full["lo"]) <= np.asarray(full["nominal"])) and np.all(np.asarray(full["nominal"]) <= np.asarray(full["hi"]))
    # on a world from the law's own family the PIT is roughly uniform: no tail pile-up
    assert np.mean((pit < 0.05) | (pit > 0.95)) < 0.25


def test_parse_law_families_reads_laws_and_likelihoods_and_refuses_bad_names():
    from bayescale.evaluate.check import parse_law_families
    assert parse_law_families("transfer, independent:student_t") == [("transfer", "normal"), ("independent", "student_t")]
    # "all": every registered law of data amounts (the mixing law holds at one budget only); the
    # stack is a mixture of these, asked for by name
    assert parse_law_families("all") == [(n, "normal") for n in ("transfer", "linear", "independent", "bend", "interference")]
    assert parse_law_families("stack") == [("stack", "normal")]
    assert parse_law_families("mixing") == [("mixing", "normal")]
    for text, message in (("transfer,bogus", "unknown law 'bogus'"), ("linear:cauchy", "unknown likelihood 'cauchy'"),
                          ("linear,linear", "given twice"), (" , ", "name at least one law")):
        with pytest.raises(InputError, match=message):
            parse_law_families(text)


def test_extrapolation_by_law_ranks_the_true_family_first(small_grid, small_fit):
    """The small world transfers between domains: the independent law, blind to transfer, must
    extrapolate the held-out mixtures worse than the transfer law that generated them."""
    from bayescale.evaluate.check import extrapolation_by_law
    from bayescale.render.text import format_law_table

    rows = extrapolation_by_law(small_grid, [("transfer", "normal"), ("independent", "normal")],
                                fit_options={"chains": 1, "warmup": 200, "draws": 200}, fitted={("transfer", "normal"): small_fit})
    by_law = {row["law"]: row for row in rows}
    assert by_law["transfer"]["median_abs_rel_error"] < by_law["independent"]["median_abs_rel_error"]
    assert by_law["transfer"]["mean_abs_log_error"] < by_law["independent"]["mean_abs_log_error"]
    assert all(row["n"] == by_law["transfer"]["n"] for row in rows)  # the same held-out cells for every law
    table = format_law_table(rows)
    assert table.splitlines()[1].startswith("transfer") and table.splitlines()[1].rstrip().endswith(f"{rows[0]['max_rhat']:.3f}")
    assert "transfer  *" in table  # the best one is marked
    with pytest.raises(InputError, match="no held-out runs"):
        extrapolation_by_law(select_split(small_grid, "fit"), [("transfer", "normal")])


def test_a_loss_that_rises_with_more_data_is_flagged_where_noise_cannot_explain_it():
    from bayescale.data.grid import make_grid
    from bayescale.evaluate.check import rising_losses

    budgets = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    falls = 2.0 + budgets**-0.3
    rises = falls.copy()
    rises[-1] = rises[-2] * 1.10  # 10 % above the loss at 8, its lowest
    grid = make_grid([f"r{i}" for i in range(5)], ["c4"], ["wiki", "ptb"], budgets[:, None], np.column_stack([falls, rises]))
    flagged = rising_losses(grid, {"wiki": 0.01, "ptb": 0.01})
    assert [r["target"] for r in flagged] == ["ptb"]
    assert flagged[0]["rise"] == pytest.approx(0.10) and flagged[0]["largest_budget"] == 16.0 and flagged[0]["lowest_at_budget"] == 8.0
    assert rising_losses(grid, {"wiki": 0.06, "ptb": 0.06}) == []  # within twice the noise: not flagged
    # two mixtures of two budgets each are no series
    two = make_grid([f"r{i}" for i in range(4)], ["a", "b"], ["a"], np.array([[1.0, 0], [2.0, 0], [0, 1.0], [0, 2.0]]),
                    np.array([[1.0], [1.5], [1.0], [1.5]]))
    assert rising_losses(two, {"a": 0.001}) == []


def test_openlm_validation_sets_that_rise_with_over_training_are_flagged():
    """The OpenLM grid (C4, d=512): its loss on Paloma's PTB is 23.8 % above its lowest at the
    largest token budget (measured directly below), which the check must name."""
    from bayescale.data import realgrids
    from bayescale.evaluate.check import rising_losses

    grid = realgrids.openlm_grids()[("c4_original", "d=512_l=8_h=4")]
    totals = grid["data"].sum("source").values
    flagged = {r["target"]: r for r in rising_losses(grid, {str(t): 0.02 for t in grid["target"].values})}
    for target in map(str, grid["target"].values):
        loss = grid["loss"].sel(target=target).values
        top = totals == totals.max()
        rise = loss[top].mean() / np.nanmin(loss[~top]) - 1.0
        assert (target in flagged) == (np.log1p(rise) > 0.04)
        if target in flagged:
            assert flagged[target]["rise"] == pytest.approx(rise)
    assert any(t.startswith("paloma_ptb") for t in flagged)
