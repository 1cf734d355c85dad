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
    # worlds are drawn at unit loss scales: a level's prior centre is log 1 = 0, and E is a share of it
    e = truth_a["mu_e"] + truth_a["tau_e"] * truth_a["z_e"]
    np.testing.assert_allclose(truth_a["E"], np.exp(truth_a["level"]) / (1 + np.exp(-e)), rtol=1e-5)
    fit_only = design.model_data(None, design.fit)
    assert np.all(fit_only.reference_d == design.model_data(None, ~design.fit).reference_d)  # the fit runs' references


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


def test_the_committed_worlds_were_fitted_with_todays_model():
    """The 100 committed SBC worlds (read, not refitted, by the slow test below) carry the hash of
    the model's code and priors: an edit to the model fails here, in the default run, until they
    are recomputed (``make bench-calibration``) or shown unchanged."""
    settings = json.loads((RESULTS / "settings.json").read_text())
    assert settings["model"] == sbc.model_hash(settings["law"]), "the committed SBC results are of another model"
    assert {k: settings[k] for k in sbc.SAMPLER} == sbc.SAMPLER
    assert len(list(RESULTS.glob("world-*.json"))) == 100


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


SMALL_SBC = {"chains": 2, "warmup": 150, "draws": 150, "target_accept": 0.98, "thin_to": 19}


def small_sbc_failures(results: list[dict]) -> list[str]:
    """What a small SBC (short chains, 20 ranks per world) rejects, loosely but for real:
    - a pooled rank histogram (5 bins) of any quantity, chi-square p < 1e-4 (about 0.001 over the
      quantities, Bonferroni);
    - held-out coverage of the 50 % / 90 % predictive intervals: one value per world (a world's cells
      share its truth: one cluster), a two-sided t-test of the nominal level at 0.1 %."""
    from scipy import stats

    failures = [f"{name} ranks: chi-square p {q['chi2_p']:.1e}, histogram {q['histogram']}"
                for name, q in sbc.summarise(results, bins=5)["quantities"].items() if q["chi2_p"] < 1e-4]
    for level in (50, 90):
        per_world = np.array([r[f"coverage_{level}"] for r in results])
        half = stats.t.ppf(0.9995, per_world.size - 1) * per_world.std(ddof=1) / np.sqrt(per_world.size)
        if abs(per_world.mean() - level / 100) > half:
            failures.append(f"held-out {level} % coverage {per_world.mean():.3f} ± {half:.3f}")
    return failures


@pytest.mark.slow
def test_a_small_sbc_refitted_now_passes_and_a_biased_fit_fails_it(tmp_path, monkeypatch):
    """Refits 20 prior worlds with today's model on every run (the 100 committed ones are checked
    against the model's hash above): calibrated. The same worlds fitted to log losses 0.1 too high
    (a fit that conditions on data other than the world's, as a units or scaling bug would) fail."""
    now = sbc.run_sbc(20, tmp_path / "now", domains=3, seed=7, **SMALL_SBC)
    assert small_sbc_failures(now) == []
    honest = sbc.SBCDesign.model_data

    def biased(self, log_loss, runs, scales=None):
        return honest(self, None if log_loss is None else np.asarray(log_loss) + 0.1, runs, scales)

    monkeypatch.setattr(sbc.SBCDesign, "model_data", biased)
    broken = sbc.run_sbc(20, tmp_path / "biased", domains=3, seed=7, **SMALL_SBC)
    assert any("held-out 90 % coverage" in f for f in small_sbc_failures(broken)), small_sbc_failures(broken)
