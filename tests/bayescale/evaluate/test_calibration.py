"""Real-grid calibration scores (bayescale.evaluate.calibration) against computations by hand."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import xarray as xr

from bayescale.evaluate.calibration import cluster_coverage, per_target_correlations, real_grid_scores


def predictions(seed=0, runs=30, targets=3, run_sd=0.0):
    rng = np.random.default_rng(seed)
    median = rng.uniform(1, 2, (runs, targets))
    # observations from the predictive itself (log-normal sd 0.1), with an optional run effect
    observed = median * np.exp(0.1 * rng.standard_normal((runs, targets)) + run_sd * rng.standard_normal((runs, 1)))
    z = {50: 0.6744897501960817, 90: 1.6448536269514722}
    data = {"observed": observed, "median": median}
    for level, q in z.items():
        data[f"lo{level}"], data[f"hi{level}"] = median * np.exp(-0.1 * q), median * np.exp(0.1 * q)
    data["pit"] = scipy.stats.norm.cdf(np.log(observed / median) / 0.1)
    return xr.Dataset({k: (("run", "target"), v) for k, v in data.items()},
                      coords={"run": [f"r{i}" for i in range(runs)], "target": [f"t{j}" for j in range(targets)]})


def test_coverage_counts_cells_and_its_interval_resamples_runs():
    pred = predictions(runs=40)
    c = cluster_coverage(pred, 0.9)
    inside = (pred["lo90"] <= pred["observed"]) & (pred["observed"] <= pred["hi90"])
    assert c["coverage"] == pytest.approx(float(inside.mean())) and c["runs"] == 40 and c["cells"] == 120
    assert c["lo"] <= c["coverage"] <= c["hi"]
    # a shared run effect makes a run's cells move together: the cluster interval is wider
    # than the binomial interval that counts every cell as independent evidence
    correlated = cluster_coverage(predictions(runs=60, targets=5, run_sd=0.15), 0.5)
    p, cells = correlated["coverage"], correlated["cells"]
    naive = 2 * 1.96 * np.sqrt(p * (1 - p) / cells)
    assert correlated["hi"] - correlated["lo"] > 1.3 * naive


def test_calibrated_predictions_cover_at_the_nominal_rates():
    scores = real_grid_scores(predictions(runs=400))  # 1200 cells: binomial sd of a 90 % coverage ~0.009
    assert abs(scores["coverage_90"]["coverage"] - 0.9) < 4 * np.sqrt(0.09 / 1200)
    assert abs(scores["coverage_50"]["coverage"] - 0.5) < 4 * np.sqrt(0.25 / 1200)
    assert scores["pit_ks_p"] > 0.001
    assert scores["width_90"] == pytest.approx(np.exp(0.1 * 1.6448536269514722) - np.exp(-0.1 * 1.6448536269514722))


def test_correlations_per_target_match_scipy():
    pred = predictions(runs=25)
    got = per_target_correlations(pred)
    for t in pred["target"].values:
        obs, med = pred["observed"].sel(target=t).values, pred["median"].sel(target=t).values
        assert got[str(t)]["pearson_r"] == pytest.approx(scipy.stats.pearsonr(med, obs)[0])
        assert got[str(t)]["spearman"] == pytest.approx(scipy.stats.spearmanr(med, obs)[0])
