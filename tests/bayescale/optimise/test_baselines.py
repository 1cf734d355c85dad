"""The baselines (optimise.baselines): water-filling, the mixing rules, transfer switched off, reductions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bayescale.optimise import baselines as bl
from bayescale.optimise.riskprog import LawEval
from tests.bayescale.optimise.test_allocate import make_draws

caps = st.one_of(st.just(np.inf), st.floats(0.0, 300.0))


@settings(max_examples=60, deadline=None)
@given(budget=st.floats(1.0, 1000.0), upper=st.lists(caps, min_size=4, max_size=4),
       mins=st.lists(st.floats(0.0, 1.0), min_size=4, max_size=4), costs=st.lists(st.floats(0.5, 3.0), min_size=4, max_size=4),
       shape=st.lists(st.floats(0.1, 10.0), min_size=4, max_size=4))
def test_fill_spends_the_budget_exactly_within_the_bounds(budget, upper, mins, costs, shape):
    U = np.array(upper)
    c = np.array(costs)
    L = np.minimum(np.array(mins) * budget / (4 * c), U)  # minimums the budget can pay for
    D = bl.fill(budget, L, U, np.array(shape), c)
    assert np.all(D >= L - 1e-12) and np.all(D <= U + 1e-12)
    if np.all(np.isfinite(U)) and c @ U <= budget:
        assert D == pytest.approx(U)  # everything available is used
    else:
        assert c @ D == pytest.approx(budget, rel=1e-9)


def test_fill_follows_the_shape_where_no_bound_binds():
    D = bl.fill(90.0, np.zeros(3), np.full(3, np.inf), np.array([1.0, 2.0, 6.0]))
    assert D == pytest.approx([10.0, 20.0, 60.0], rel=1e-12)
    D = bl.fill(90.0, np.zeros(3), np.array([np.inf, np.inf, 30.0]), np.array([1.0, 2.0, 6.0]))
    assert D == pytest.approx([20.0, 40.0, 30.0], rel=1e-12)  # the capped source's share goes to the others


def test_rule_shapes():
    free = np.zeros(3, dtype=bool)
    assert set(bl.rule_shapes(np.zeros(3), np.array([10.0, np.inf, 5.0]), free, 3.0)) == {"uniform"}
    shapes = bl.rule_shapes(np.zeros(3), np.array([8.0, 1.0, 27.0]), free, 3.0)
    assert set(shapes) == {"uniform", "proportional", "temperature"}
    assert shapes["proportional"] == pytest.approx([8.0, 1.0, 27.0])
    assert shapes["temperature"] == pytest.approx([2.0, 1.0, 3.0])  # available ** (1 / tau)
    # a fixed source needs no cap for the proportional rule
    fixed = np.array([False, True, False])
    assert "proportional" in bl.rule_shapes(np.zeros(3), np.array([8.0, np.inf, 27.0]), fixed, 1.0)


def test_transfer_zeroed_zeroes_transfer_between_different_domains_only():
    draws = make_draws(S=30, seed=2, extra_sources=("pure",))
    blind = bl.transfer_zeroed(draws)
    mask = np.asarray(draws.self_mask)
    assert np.all(blind.T[:, mask == 0] == 0) and np.all(blind.T[:, mask > 0] == 1.0)
    assert np.all(blind.beta == 1.0)
    for name in ("E", "A", "alpha", "x0"):
        assert np.array_equal(getattr(blind, name), getattr(draws, name))
    # a target's loss now depends on its own data only
    law, law_blind = LawEval(draws), LawEval(blind)
    D = np.full(len(draws.sources), 40.0)
    more_pure = D.copy()
    more_pure[-1] = 400.0
    assert np.array_equal(law_blind.values(D), law_blind.values(more_pure))
    assert np.all(law.values(more_pure)[:, :-1] <= law.values(D)[:, :-1])  # with transfer the pure source helps


def test_reduction_per_draw_and_of_means():
    R_base = np.array([2.0, 4.0, 4.0, 10.0])
    R_rec = np.array([1.0, 3.0, 5.0, 5.0])
    red = bl.reduction(R_rec, R_base, 0.5)
    per = 1 - R_rec / R_base
    assert red["of_means"] == pytest.approx(1 - R_rec.mean() / R_base.mean())
    assert red["mean"] == pytest.approx(per.mean())
    assert (red["lo"], red["hi"]) == pytest.approx(tuple(np.quantile(per, [0.25, 0.75])))
    assert red["probability_better"] == pytest.approx(0.75)
    assert bl.reduction(np.ones(3), np.zeros(3), 0.9)["of_means"] is None  # nothing reducible to compare
