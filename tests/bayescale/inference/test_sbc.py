"""Simulation-based calibration: the machinery (fast) and the calibration itself (slow)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from bayescale.inference import sbc


def test_prior_worlds_share_one_design_and_differ_in_their_truth():
    import jax

    design = sbc.make_design(3)
    assert design.d.shape == (design.fit.size, 3) and design.fit.any() and (~design.fit).any()
    # Held-out runs lie above every fit budget.
    assert design.d[~design.fit].sum(1).min() > design.d[design.fit].sum(1).max()
    truth_a, loss_a = sbc.draw_prior_world(design, jax.random.PRNGKey(0))
    truth_b, _ = sbc.draw_prior_world(design, jax.random.PRNGKey(1))
    assert loss_a.shape == design.d.shape and np.all(np.isfinite(loss_a))
    assert not np.allclose(truth_a["alpha"], truth_b["alpha"])
    # worlds are drawn at unit loss scales: E = 1.1 sigmoid(e) exactly
    np.testing.assert_allclose(truth_a["E"], 1.1 / (1 + np.exp(-truth_a["e"])), rtol=1e-6)


def test_ranks_count_draws_below_the_truth_and_skip_fixed_entries():
    mask = np.eye(2)
    samples = {"alpha": np.arange(10.0)[:, None] * np.ones((1, 2)), "T": np.ones((10, 2, 2)), "beta": np.ones((10, 2, 2))}
    samples["T"][:, 0, 1] = np.arange(10.0)
    samples["T"][:, 1, 0] = np.arange(10.0) + 100
    truth = {"alpha": np.array([4.5, -1.0]), "T": np.array([[1.0, 3.5], [2.0, 1.0]]), "beta": np.ones((2, 2))}
    r = sbc.ranks(truth, samples, thin_to=10, self_mask=mask)
    assert r["alpha"] == [5, 0]
    assert r["T"] == [4, 0]  # off-diagonal entries only, row-major: T[0,1], T[1,0]
    assert "beta" not in r  # fixed at 1: nothing to rank


def test_summary_accepts_uniform_ranks_and_rejects_over_confident_ones():
    rng = np.random.default_rng(0)
    uniform = [{"ranks": {"alpha": rng.integers(0, 100, 3).tolist()}, "thin_to": 99, "coverage_50": 0.5,
                "coverage_90": 0.9, "divergences": 0, "max_rhat": 1.0} for _ in range(200)]
    # Over-confident posteriors put the truth in the tails: ranks pile up at 0 and 99.
    u_shaped = [dict(w, ranks={"alpha": rng.choice([0, 1, 98, 99], 3).tolist()}) for w in uniform]
    assert sbc.summarise(uniform)["quantities"]["alpha"]["chi2_p"] > 0.01
    bad = sbc.summarise(u_shaped)["quantities"]["alpha"]
    assert bad["chi2_p"] < 1e-6 and bad["inside_90"] < 0.1


def test_run_sbc_resumes_and_refuses_a_folder_of_other_settings(tmp_path):
    settings = {"chains": 1, "warmup": 30, "draws": 40, "thin_to": 19}
    first = sbc.run_sbc(1, tmp_path, domains=2, **settings)
    saved = (tmp_path / "world-0000.json").read_text()
    both = sbc.run_sbc(2, tmp_path, domains=2, **settings)
    assert both[0] == first[0] and (tmp_path / "world-0000.json").read_text() == saved  # not refitted
    assert set(both[1]["ranks"]) >= {"alpha", "E", "T", "beta"}
    assert all(0 <= r <= 19 for r in both[1]["ranks"]["alpha"])
    assert 0 <= both[1]["coverage_90"] <= 1
    with pytest.raises(ValueError, match="other settings"):
        sbc.run_sbc(1, tmp_path, domains=3, **settings)


RESULTS = Path(__file__).parents[3] / "benchmarks" / "results" / "sbc-transfer-k3"


@pytest.mark.slow
def test_calibration_over_100_prior_worlds():
    """Ranks of alpha, E and T uniform (chi-square, p > 0.001) and held-out 50 % / 90 %
    coverage within 5 points, over 100 worlds drawn from the prior. Reuses (or completes)
    the results of ``benchmarks/bench_calibration.py`` in benchmarks/results/."""
    results = sbc.run_sbc(100, os.environ.get("BAYESCALE_SBC_DIR", RESULTS), domains=3, **sbc.SAMPLER)
    summary = sbc.summarise(results)
    for name in ("alpha", "E", "T"):
        assert summary["quantities"][name]["chi2_p"] > 0.001, (name, summary["quantities"][name])
    assert abs(summary["holdout_coverage_50"] - 0.5) <= 0.05, json.dumps(summary)
    assert abs(summary["holdout_coverage_90"] - 0.9) <= 0.05, json.dumps(summary)
