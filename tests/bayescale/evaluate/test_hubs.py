"""Hubs and islands: hand-computed shares, classification rules, the small simulated world, the figure."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyArrowPatch

from bayescale.evaluate import hubs
from bayescale.errors import InputError
from bayescale.inference.posterior import LawDraws, self_mask_for
from bayescale.data.simulate import true_params
from bayescale.render import figures
from bayescale.render import text as render_text

# --------------------------------------------------------------------------------------
# hand-made draws


def make_draws(T, beta, sources=("a", "b", "c"), targets=None, law="transfer", data_scale=8.0) -> LawDraws:
    """LawDraws with the given T and beta (S, I, J); the per-target parameters do not matter here."""
    targets = tuple(sources if targets is None else targets)
    T, beta = np.asarray(T, float), np.asarray(beta, float)
    mask = self_mask_for(sources, targets)
    T = np.where(mask[None] > 0, 1.0, T)
    beta = np.where(mask[None] > 0, 1.0, beta)
    s, j = T.shape[0], len(targets)
    ones = np.ones((s, j))
    return LawDraws(
        sources=tuple(sources), targets=targets, self_mask=mask,
        E=0.1 * ones, A=ones, alpha=0.4 * ones, x0=0.1 * ones, sigma=0.02 * ones,
        T=T, beta=beta, data_scale=data_scale, law=law,
    )


# a -> b 0.5, a -> c 0.04, b -> a 0.1, b -> c 0.02, c -> a 0.01, c -> b 0.03
T_HAND = np.array([[1.0, 0.5, 0.04], [0.1, 1.0, 0.02], [0.01, 0.03, 1.0]])


@pytest.fixture
def hand():
    """Two draws with the same T: beta = 1 in draw 0, beta = 0.5 in draw 1."""
    T = np.stack([T_HAND, T_HAND])
    beta = np.stack([np.ones((3, 3)), np.full((3, 3), 0.5)])
    return make_draws(T, beta)


def test_share_is_T_for_beta_one_and_falls_with_reference_for_beta_below_one(hand):
    share = hubs.transfer_share(hand, reference=4.0)
    assert np.isnan(share[:, [0, 1, 2], [0, 1, 2]]).all()
    off = ~np.eye(3, dtype=bool)
    np.testing.assert_allclose(share[0][off], T_HAND[off])  # beta = 1: T at any reference
    np.testing.assert_allclose(share[1][off], T_HAND[off] * 4.0**-0.5)  # T * 4^0.5 / 4 = T / 2
    np.testing.assert_allclose(hubs.transfer_share(hand, reference=1.0)[1][off], T_HAND[off])


def test_out_and_in_transfer_by_hand(hand):
    per = hubs.hub_island_draws(hand, reference=4.0)
    assert list(per["domain"].values) == ["a", "b", "c"]
    # draw 0 (beta = 1): out a = (0.5 + 0.04) / 2, b = (0.1 + 0.02) / 2, c = (0.01 + 0.03) / 2
    np.testing.assert_allclose(per["out_transfer"].values[0], [0.27, 0.06, 0.02])
    # in a = (0.1 + 0.01) / 2, b = (0.5 + 0.03) / 2, c = (0.04 + 0.02) / 2
    np.testing.assert_allclose(per["in_transfer"].values[0], [0.055, 0.265, 0.03])
    # draw 1 (beta = 0.5, d_ref = 4): every share halves
    np.testing.assert_allclose(per["out_transfer"].values[1], [0.135, 0.03, 0.01])
    np.testing.assert_allclose(per["in_transfer"].values[1], [0.0275, 0.1325, 0.015])
    # draw 0: a is a hub (0.27 >= 0.25 and >= 2 x median(0.06, 0.02) = 0.08); draw 1: 0.135 < 0.25
    np.testing.assert_array_equal(per["is_hub"].values, [[True, False, False], [False, False, False]])
    # c: out and in < 0.05 in both draws; b in draw 1 gives 0.03 but takes 0.1325
    np.testing.assert_array_equal(per["is_island"].values, [[False, False, True], [False, False, True]])


def test_table_summarises_the_draws(hand):
    table = hubs.hub_island_table(hand, reference=4.0, interval=0.5)
    np.testing.assert_allclose(table["out_mean"].values, [(0.27 + 0.135) / 2, (0.06 + 0.03) / 2, (0.02 + 0.01) / 2])
    np.testing.assert_allclose(table["in_mean"].values, [(0.055 + 0.0275) / 2, (0.265 + 0.1325) / 2, (0.03 + 0.015) / 2])
    # the central 50 % of two draws: linear interpolation at the 25th and 75th percentiles
    np.testing.assert_allclose(table["out_lo"].values[0], 0.135 + 0.25 * 0.135)
    np.testing.assert_allclose(table["out_hi"].values[0], 0.135 + 0.75 * 0.135)
    np.testing.assert_allclose(table["p_hub"].values, [0.5, 0.0, 0.0])
    np.testing.assert_allclose(table["p_island"].values, [0.0, 0.0, 1.0])
    assert list(table["label"].values) == ["hub", "neither", "island"]
    np.testing.assert_allclose(table["share_mean"].sel(source="a", target="b"), (0.5 + 0.25) / 2)
    assert np.isnan(table["share_mean"].sel(source="a", target="a"))
    assert table.attrs["reference"] == 4.0 and table.attrs["reference_data"] == 32.0


def test_reference_in_data_units_matches_law_units(hand):
    by_law = hubs.hub_island_table(hand, reference=4.0)
    by_data = hubs.hub_island_table(hand, reference_data=4.0 * hand.data_scale)
    np.testing.assert_allclose(by_law["out_mean"], by_data["out_mean"])
    np.testing.assert_allclose(by_law["in_mean"], by_data["in_mean"])
    # the default reference is one law unit, where beta does not matter: both draws give T
    default = hubs.hub_island_table(hand)
    np.testing.assert_allclose(default["out_mean"].values, [0.27, 0.06, 0.02])
    np.testing.assert_allclose(default["p_hub"].values, [1.0, 0.0, 0.0])


def test_thresholds_are_configurable(hand):
    table = hubs.hub_island_table(hand, reference=4.0, hub_threshold=0.1, island_threshold=0.1)
    np.testing.assert_allclose(table["p_hub"].values, [1.0, 0.0, 0.0])  # 0.135 >= 0.1 and >= 2 x 0.02
    # island at 0.1: c always; b in neither draw (in-transfer 0.265, 0.1325)
    np.testing.assert_allclose(table["p_island"].values, [0.0, 0.0, 1.0])
    strict = hubs.hub_island_table(hand, reference=4.0, hub_ratio=10.0)  # 0.27 < 10 x 0.04
    np.testing.assert_allclose(strict["p_hub"].values, [0.0, 0.0, 0.0])
    assert list(strict["label"].values) == ["neither", "neither", "island"]


def test_no_hub_when_every_domain_helps_equally():
    T = np.full((1, 3, 3), 0.5)
    draws = make_draws(T, np.ones((1, 3, 3)))
    table = hubs.hub_island_table(draws)
    np.testing.assert_allclose(table["out_mean"].values, 0.5)
    np.testing.assert_allclose(table["p_hub"].values, 0.0)  # none stands out (0.5 < 2 x 0.5)
    assert set(table["label"].values) == {"neither"}
    assert set(hubs.hub_island_table(draws, hub_ratio=0.0)["label"].values) == {"hub"}


def test_source_only_and_target_only_domains():
    # sources a, b, x; targets a, b, y: x is only a source, y only a target
    T = np.array([[[1.0, 0.2, 0.4], [0.1, 1.0, 0.3], [0.6, 0.02, 0.01]]])
    draws = make_draws(T, np.ones((1, 3, 3)), sources=("a", "b", "x"), targets=("a", "b", "y"))
    table = hubs.hub_island_table(draws)
    assert list(table["domain"].values) == ["a", "b", "x", "y"]
    np.testing.assert_allclose(table["out_mean"].values[:3], [(0.2 + 0.4) / 2, (0.1 + 0.3) / 2, (0.6 + 0.02 + 0.01) / 3])
    assert np.isnan(table["out_mean"].values[3]) and np.isnan(table["p_hub"].values[3])
    np.testing.assert_allclose(table["in_mean"].values[[0, 1, 3]], [(0.1 + 0.6) / 2, (0.2 + 0.02) / 2, (0.4 + 0.3 + 0.01) / 3])
    assert np.isnan(table["in_mean"].values[2])
    summary = hubs.hubs_summary(draws)
    json.dumps(summary.to_dict())
    assert summary["domains"]["x"]["in_transfer"] is None and summary["domains"]["x"]["role"] == "source only"
    assert summary["domains"]["y"]["out_transfer"] is None and summary["domains"]["y"]["p_hub"] is None
    assert summary["domains"]["y"]["role"] == "target only"
    fig = figures.plot_transfer_graph(draws)
    texts = [t.get_text() for t in fig.axes[1].texts]
    assert any("x" in t and "y" in t and "not shown" in t for t in texts)


# --------------------------------------------------------------------------------------
# bad input


def test_independent_law_is_refused_in_one_line(small_draws):
    draws = dataclasses.replace(small_draws, law="independent")
    for call in (hubs.require_transfer, hubs.hub_island_table, hubs.hubs_summary, render_text.hubs_command_output):
        expected = "no transfer parameters .law 'independent'.; hubs need a transfer or linear fit"
        with pytest.raises(InputError, match=expected) as err:
            call(draws)
        assert "\n" not in str(err.value)


def test_zero_transfer_is_refused():
    draws = make_draws(np.zeros((2, 3, 3)), np.ones((2, 3, 3)))
    with pytest.raises(InputError, match="every off-diagonal T is 0"):
        hubs.require_transfer(draws)
    only_self = make_draws(np.ones((2, 1, 1)), np.ones((2, 1, 1)), sources=("a",))
    with pytest.raises(InputError, match="no transfer parameters"):
        hubs.hub_island_table(only_self)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"reference": 0.0}, "^reference must be a finite number > 0"),
        ({"reference": float("nan")}, "^reference must be a finite number > 0"),
        ({"reference_data": -3.0}, "^reference_data must be a finite number > 0"),
        ({"reference": 1.0, "reference_data": 8.0}, "not both"),
        ({"hub_threshold": 0.01, "island_threshold": 0.05}, "must not exceed hub_threshold"),
        ({"hub_ratio": -1.0}, "^hub_ratio must be a finite number >= 0"),
        ({"interval": 1.0}, "^interval must lie strictly between 0 and 1"),
    ],
)
def test_bad_options_are_input_errors(hand, kwargs, message):
    with pytest.raises(InputError, match=message):
        hubs.hub_island_table(hand, **kwargs)


# --------------------------------------------------------------------------------------
# the small simulated world (d1 a hub, d4 an island)


def test_small_world_hub_and_island(small_draws):
    table = hubs.hub_island_table(small_draws)
    assert list(table["domain"].values) == ["d1", "d2", "d3", "d4"]
    d1, d4 = table.sel(domain="d1"), table.sel(domain="d4")
    assert float(d1["p_hub"]) > 0.5 and str(d1["label"].values) == "hub"
    assert float(d4["p_island"]) > 0.5 and str(d4["label"].values) == "island"
    assert list(table["label"].values).count("hub") == 1
    # d1 helps the others the most; d4 gives and takes the least
    assert int(np.argmax(table["out_mean"].values)) == 0
    assert int(np.argmin(table["out_mean"].values)) == 3 and int(np.argmin(table["in_mean"].values)) == 3


def test_small_world_matches_the_truth(small_grid, small_draws):
    truth = true_params(small_grid, small_draws.data_scale)
    true_draws = make_draws(truth["T"].values[None], truth["beta"].values[None], sources=small_draws.sources)
    true_table = hubs.hub_island_table(true_draws)
    table = hubs.hub_island_table(small_draws)
    assert list(table["label"].values) == list(true_table["label"].values)
    for key in ("out_mean", "in_mean"):
        true_values, estimates = true_table[key].values, table[key].values
        big = true_values > 0.05  # small shares are poorly determined in relative terms
        np.testing.assert_allclose(estimates[big], true_values[big], rtol=0.25)
    # a pair whose true shares differ 2-fold or more is called the true way round with P >= 0.9
    share = true_table["share_mean"].values
    clear = 0
    for i, a in enumerate(small_draws.sources):
        for j, b in enumerate(small_draws.sources):
            if i != j and share[i, j] >= 2 * share[j, i] and share[i, j] > 0.05:
                clear += 1
                assert table["p_stronger"].values[i, j] >= 0.9, (a, b)
    assert clear >= 2
    # the true exponents: inside the 90 % intervals (at most one of four outside: P ~ 0.05 by chance)
    alpha = truth["alpha"].sel(target=list(table["domain"].values)).values
    inside = (table["alpha_lo"].values <= alpha) & (alpha <= table["alpha_hi"].values)
    assert inside.sum() >= len(inside) - 1


def test_probabilities_are_shares_of_draws(small_draws):
    per = hubs.hub_island_draws(small_draws)
    table = hubs.hub_island_table(small_draws)
    assert per.sizes["draw"] == small_draws.n_draws
    np.testing.assert_allclose(table["p_hub"].values, per["is_hub"].values.mean(axis=0))
    np.testing.assert_allclose(table["p_island"].values, per["is_island"].values.mean(axis=0))
    for name in ("p_hub", "p_island"):
        assert np.all((table[name].values >= 0) & (table[name].values <= 1))
    assert np.all(table["p_hub"].values + table["p_island"].values <= 1 + 1e-12)
    assert not np.any(per["is_hub"].values & per["is_island"].values)
    assert np.all(table["out_lo"].values <= table["out_mean"].values)
    assert np.all(table["out_mean"].values <= table["out_hi"].values)
    # a subset of draws gives the shares of that subset
    first = hubs.hub_island_table(small_draws.subset(slice(0, 10)))
    np.testing.assert_allclose(first["p_island"].values, per["is_island"].values[:10].mean(axis=0))


def test_summary_is_json_and_matches_the_table(small_fit, small_draws):
    summary = hubs.hubs_summary(small_draws)
    again = json.loads(json.dumps(summary.to_dict()))
    assert again == summary.to_dict()
    assert set(summary["definitions"]) == set(hubs.DEFINITIONS)
    assert "d_ref = 1 x D0" in summary["definitions"]["effective_data_share"]
    assert summary["reference"] == 1.0 and summary["reference_data"] == pytest.approx(small_draws.data_scale)
    assert summary["hubs"] == ["d1"] and summary["islands"] == ["d4"]
    d1 = summary["domains"]["d1"]
    assert set(d1) == {"role", "out_transfer", "in_transfer", "p_hub", "p_island", "label", "exponent"}
    for j, name in enumerate(small_draws.targets):  # the exponent: quantiles of the draws of alpha
        alpha = small_draws.alpha[:, j]
        assert summary["domains"][name]["exponent"] == pytest.approx(
            {"median": np.median(alpha), "lo": np.quantile(alpha, 0.05), "hi": np.quantile(alpha, 0.95)})
    assert set(d1["out_transfer"]) == {"mean", "lo", "hi"} and d1["label"] == "hub"
    assert d1["out_transfer"]["lo"] <= d1["out_transfer"]["mean"] <= d1["out_transfer"]["hi"]
    # a posterior DataTree works as well as its draws
    assert hubs.hubs_summary(small_fit) == summary


def test_command_output(small_fit):
    text = render_text.hubs_command_output(small_fit)
    lines = text.splitlines()
    assert "volumes" in lines[0]
    legend = next(k for k, line in enumerate(lines) if line.startswith("hub:"))
    rows = {line.split()[0]: line for line in lines[:legend] if line.split()[0] in ("d1", "d2", "d3", "d4")}
    assert set(rows) == {"d1", "d2", "d3", "d4"}
    assert " hub " in rows["d1"] and " island " in rows["d4"]
    alpha = hubs.hub_island_table(small_fit)["alpha_median"].sel(domain="d1")
    assert rows["d1"].rstrip().endswith("]") and f"{float(alpha):.3g} [" in rows["d1"]  # the exponent column last
    assert "P(hub)" in text and "island:" in lines[legend]
    # the asymmetry section lists each of the 6 pairs once, in the order of asymmetric_pairs
    pairs = hubs.asymmetric_pairs(hubs.hub_island_table(small_fit))
    assert lines[legend + 1].startswith("Asymmetry") and len(lines) == legend + 2 + 6 == legend + 2 + len(pairs)
    assert [line.split()[:3] for line in lines[legend + 2:]] == [[x["source"], "->", x["target"]] for x in pairs]


def test_figure_has_graph_and_map(small_draws):
    table = hubs.hub_island_table(small_draws)
    fig = figures.plot_transfer_graph(small_draws, table, min_share=0.02)
    assert isinstance(fig, Figure)
    graph, chart = fig.axes[:2]
    nodes = [p for p in graph.patches if isinstance(p, Circle)]
    assert sorted(p.get_gid() for p in nodes) == ["node:d1", "node:d2", "node:d3", "node:d4"]
    colours = {p.get_gid(): p.get_facecolor() for p in nodes}
    from matplotlib.colors import to_rgba

    assert colours["node:d1"] == to_rgba(hubs.LABEL_COLOURS["hub"])
    assert colours["node:d4"] == to_rgba(hubs.LABEL_COLOURS["island"])
    arrows = [p for p in graph.patches if isinstance(p, FancyArrowPatch)]
    shown = np.nansum(table["share_mean"].values >= 0.02)
    assert len(arrows) == shown and 0 < shown < 12
    widths = {a.get_gid(): a.get_linewidth() for a in arrows}
    strongest = table["share_mean"].where(np.isfinite(table["share_mean"]), 0.0)
    i, j = np.unravel_index(int(np.argmax(strongest.values)), strongest.shape)
    assert widths[f"edge:{table['source'].values[i]}->{table['target'].values[j]}"] == max(widths.values())
    node_texts = " ".join(t.get_text() for t in graph.texts)
    assert "P(hub) 1.00" in node_texts and "island" in node_texts
    assert len(chart.containers) == 4  # one errorbar per domain
    assert {t.get_text() for t in chart.texts} >= {"d1", "d2", "d3", "d4"}
    assert len(figures.plot_transfer_graph(small_draws, table, min_share=10.0).axes[0].patches) == 4  # nodes only
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=60)
    assert buf.getvalue()[:4] == b"\x89PNG"


def test_figure_with_zero_shares_uses_linear_axes():
    T = np.array([[[1.0, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    draws = make_draws(T, np.ones((1, 3, 3)))
    table = hubs.hub_island_table(draws)
    assert list(table["label"].values) == ["hub", "neither", "island"]
    fig = figures.plot_transfer_graph(draws, table)
    assert fig.axes[1].get_xscale() == "linear"
    assert len([p for p in fig.axes[0].patches if isinstance(p, FancyArrowPatch)]) == 1


# --------------------------------------------------------------------------------------
# asymmetry


def test_asymmetry_by_hand(hand):
    table = hubs.hub_island_table(hand, reference=4.0, interval=0.5)
    p = table["p_stronger"].to_pandas()
    # a -> b 0.5 against b -> a 0.1 in both draws (beta halves both shares in draw 1): P = 1, ratio 5
    assert p.loc["a", "b"] == 1.0 and p.loc["b", "a"] == 0.0
    assert p.loc["c", "b"] == 1.0 and p.loc["a", "c"] == 1.0
    assert np.isnan(np.diag(p.values)).all()
    np.testing.assert_allclose(table["ratio_median"].sel(source="a", target="b"), 5.0)
    np.testing.assert_allclose(table["ratio_median"].sel(source="b", target="a"), 0.2)
    pairs = hubs.asymmetric_pairs(table)
    assert [(x["source"], x["target"]) for x in pairs] == [("a", "b"), ("a", "c"), ("c", "b")]
    assert pairs[0]["ratio"] == pytest.approx({"median": 5.0, "lo": 5.0, "hi": 5.0})


def test_asymmetry_matches_a_draw_by_draw_count():
    """P(s_ij > s_ji) and the ratio's quantiles against a loop over draws (independent of the vectorised code)."""
    rng = np.random.default_rng(3)
    n = 400
    T = rng.lognormal(-1.5, 0.8, size=(n, 3, 3))
    beta = rng.uniform(0.4, 1.0, size=(n, 3, 3))
    draws = make_draws(T, beta)
    ref = 2.5
    table = hubs.hub_island_table(draws, reference=ref, interval=0.8)
    names = ["a", "b", "c"]
    for i in range(3):
        for j in range(3):
            if i == j:
                continue
            wins, ratios = 0, []
            for s in range(n):
                s_ij = T[s, i, j] * ref ** beta[s, i, j] / ref
                s_ji = T[s, j, i] * ref ** beta[s, j, i] / ref
                wins += s_ij > s_ji
                ratios.append(s_ij / s_ji)
            assert table["p_stronger"].sel(source=names[i], target=names[j]) == pytest.approx(wins / n)
            assert table["ratio_median"].sel(source=names[i], target=names[j]) == pytest.approx(np.median(ratios))
            assert table["ratio_lo"].sel(source=names[i], target=names[j]) == pytest.approx(np.quantile(ratios, 0.1))
    pairs = hubs.asymmetric_pairs(table)
    assert len(pairs) == 3 and all(x["p"] >= 0.5 for x in pairs)
    assert [x["p"] for x in pairs] == sorted((x["p"] for x in pairs), reverse=True)


def test_asymmetry_needs_both_directions():
    """A source that is not a target (and a target that is not a source) forms no pair."""
    T = np.full((2, 2, 3), 0.3)
    T[:, 0, 1] = 0.6
    draws = make_draws(T, np.ones((2, 2, 3)), sources=("a", "b"), targets=("a", "b", "c"))
    table = hubs.hub_island_table(draws)
    assert np.isnan(table["p_stronger"].sel(target="c")).all()
    assert hubs.asymmetric_pairs(table) == [{"source": "a", "target": "b", "p": 1.0,
                                             "ratio": pytest.approx({"median": 2.0, "lo": 2.0, "hi": 2.0})}]
    summary = hubs.summary_from_table(table).to_dict()
    assert summary["asymmetry"][0]["source"] == "a" and "asymmetry" in summary["definitions"]
    text = render_text.hubs_command_output(draws, table=table)
    assert "a -> b" in text and "P = 1.00" in text and "ratio 2 [2, 2]" in text
