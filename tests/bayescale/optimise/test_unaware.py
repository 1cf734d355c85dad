"""The fair transfer-unaware baseline: the program solved under the independent law fitted to the
same grid (real NUTS fits), judged under the transfer posterior; and the zeroed ablation beside it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bayescale.cli import FLAGS
from bayescale.data.simulate import draw_world, simulate_grid
from bayescale.errors import InputError
from bayescale.evaluate.predict import loss_draws
from bayescale.laws.noise import with_extrapolation_error
from bayescale.inference.fit import fit
from bayescale.inference.posterior import law_draws
from bayescale.optimise import baselines as bl
from bayescale.optimise.allocate import allocate
from bayescale.optimise.evaluation import empirical_cvar
from bayescale.render.text import format_allocation, value_of_transfer_text

BUDGET = 200.0
UPPER = {"d1": 120.0, "d2": 90.0, "d3": 60.0}


@pytest.fixture(scope="module")
def pair():
    """A transfer fit and an independent fit of one small simulated grid (short NUTS runs)."""
    grid = simulate_grid(draw_world(3, seed=0), seed=0)
    short = dict(chains=2, warmup=150, draws=100, seed=0)
    return law_draws(fit(grid, **short)), law_draws(fit(grid, law="independent", **short))


def vec(entry) -> np.ndarray:
    return np.array(list(entry["allocation"].values()))


def law_and_floor(draws, D) -> tuple[np.ndarray, np.ndarray]:
    """(S, J) losses at ``D`` as ``predict`` has them (with the law's error past the fit runs' data,
    which scales the whole loss) and E scaled alike: computed from loss_draws, not the optimiser's LawEval."""
    law = loss_draws(draws, D).astype(np.float64)
    L = np.exp(with_extrapolation_error(np.log(law), draws, D))
    return L, draws.E * (L / law)


@pytest.mark.parametrize("options", [
    dict(objective="cvar:0.9", upper=UPPER),
    dict(objective="mean", weights={"d1": 2.0}, normalise=True),
], ids=["cvar-caps", "mean-normalised"])
def test_fair_baseline_is_the_independent_optimum_judged_under_the_transfer_posterior(pair, options):
    draws, unaware = pair
    assert unaware.law == "independent" and unaware.data_scale > 0
    result = allocate(draws, BUDGET, uncertainty=0, unaware=unaware, **options)
    fair = result["transfer_unaware"]
    # its allocation is what allocate() recommends under the independent law's draws alone
    own = allocate(unaware, BUDGET, uncertainty=0, baselines=False, **options)
    D_u = vec(fair)
    assert D_u == pytest.approx(vec(own), rel=1e-9, abs=1e-9)
    assert fair["objective_value_assumed"] == pytest.approx(own["objective_value"], rel=1e-12)
    assert fair["description"] == bl.UNAWARE_DESCRIPTION
    # judged under the transfer posterior: its objective there, computed independently from loss_draws
    L, E_u = law_and_floor(draws, D_u)  # (S, J), all draws are optimisation draws here
    v = np.array(list(result["weights"].values()))
    f = L @ v
    expected = empirical_cvar(f, 0.9) if options["objective"] == "cvar:0.9" else float(f.mean())
    assert fair["objective_value"] == pytest.approx(expected, rel=1e-5)
    assert fair["objective_value"] >= result["objective_value"] - result["certificate"]["gap"] - 1e-9
    for j, target in enumerate(draws.targets):
        assert fair["predicted"][target]["mean"] == pytest.approx(L[:, j].mean(), rel=1e-5)
    # the reduction of weighted reducible loss against it, recomputed under the transfer posterior
    L_rec, E_rec = law_and_floor(draws, vec(result))
    R_rec, R_u = (L_rec - E_rec) @ v, (L - E_u) @ v
    red = fair["reducible_loss_reduction"]
    assert red["of_means"] == pytest.approx(1 - R_rec.mean() / R_u.mean(), rel=1e-4, abs=1e-6)
    # the headline is the fair comparison, the ablation is present and labelled beside it
    value = result["value_of_transfer"]
    assert value["transfer_baseline"] == "transfer_unaware" and "note" not in value
    assert value["vs_transfer_unaware"] == red and "vs_transfer_zeroed" not in value
    zeroed = result["transfer_zeroed"]
    assert zeroed["description"].startswith("ablation: T = 0 inside the transfer posterior")
    assert zeroed["allocation"] is not None and zeroed["reducible_loss_reduction"]["of_means"] is not None
    assert "independent law fitted to the same grid" in value_of_transfer_text(result)


def test_without_unaware_the_headline_is_the_labelled_ablation(pair):
    draws, _ = pair
    result = allocate(draws, BUDGET, objective="cvar:0.9", upper=UPPER, uncertainty=0)
    assert "transfer_unaware" not in result and result.transfer_unaware is None
    zeroed = result["transfer_zeroed"]
    assert zeroed["description"] == bl.ZEROED_DESCRIPTION
    # solved with T = 0 inside the transfer posterior: the optimum of allocate() on those draws
    blind = allocate(bl.transfer_zeroed(draws), BUDGET, objective="cvar:0.9", upper=UPPER, uncertainty=0, baselines=False)
    assert vec(zeroed) == pytest.approx(vec(blind), rel=1e-6, abs=1e-6)
    value = result["value_of_transfer"]
    assert value["transfer_baseline"] == "transfer_zeroed" and value["note"] == bl.ZEROED_NOTE
    assert value["vs_transfer_zeroed"] == zeroed["reducible_loss_reduction"] and "vs_transfer_unaware" not in value
    text = format_allocation(result)
    assert "vs transfer_zeroed" in text and "only the ablation transfer_zeroed" in text and "--unaware" in text
    assert "ablation" in value_of_transfer_text(result)


def test_the_least_budget_compares_spends_with_the_fair_baseline(pair):
    draws, unaware = pair
    # a target both posteriors can meet: d1's loss with a generous amount of its own data, near-surely
    generous = np.zeros(len(draws.sources))
    generous[0] = 200.0
    tau = 1.02 * max(float(np.quantile(law_and_floor(d, generous)[0][:, 0], 0.99)) for d in (draws, unaware))
    # over the expected loss: a target 20 % above the floor that one run's noise may put out of reach
    result = allocate(draws, min_budget=True, chance=[f"d1<={tau:.6g}@0.8"], chance_on="expected", uncertainty=0, unaware=unaware)
    own = allocate(unaware, min_budget=True, chance=[f"d1<={tau:.6g}@0.8"], chance_on="expected", uncertainty=0, baselines=False)
    value = result["value_of_transfer"]
    assert value["transfer_baseline"] == "transfer_unaware"
    fair = result["transfer_unaware"]
    # the least spend the independent law needs for the target, judged (spend, feasibility) under transfer
    assert vec(fair) == pytest.approx(vec(own), rel=1e-9, abs=1e-9)
    assert fair["spend"] == pytest.approx(own["spend"], rel=1e-12) and fair["spend"] > result["spend"]
    assert value["budget_saving_vs_transfer_unaware"] == pytest.approx(1 - result["spend"] / fair["spend"])


def test_a_mismatched_unaware_posterior_is_a_one_line_error_naming_the_parameter(pair):
    draws, unaware = pair
    other = dataclasses.replace(unaware, sources=("x1", "x2", "x3"))
    cases = [
        (other, "its sources (x1, x2, x3) are not the posterior's (d1, d2, d3)"),
        (dataclasses.replace(unaware, targets=("d3", "d2", "d1")), "its targets"),
        (draws, "transfer law"),
        ({"not": "draws"}, "expected the draws of the independent law"),
        (dataclasses.replace(unaware, A=-unaware.A), "'A'"),
    ]
    for bad, piece in cases:
        with pytest.raises(InputError) as info:
            allocate(draws, BUDGET, uncertainty=0, unaware=bad)
        message = str(info.value)
        assert info.value.parameter == "unaware" and message.startswith("unaware: ") and "\n" not in message
        assert piece in message, message
        assert info.value.naming(FLAGS).startswith("--unaware: ")
