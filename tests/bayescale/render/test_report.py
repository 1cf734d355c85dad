"""Tests for the report: figure functions, the view model, the templates and the self-contained HTML with its PNG files."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import re
import tomllib
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
from jinja2 import UndefinedError
from markupsafe import escape
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

import bayescale.render
from bayescale.evaluate.check import calibration_verdict, holdout_predictions, score_predictions
from bayescale.evaluate.compare import loo_summary
from bayescale.evaluate.predict import predict
from bayescale.optimise.allocate import allocate
from bayescale.optimise.candidates import make_candidates
from bayescale.optimise.propose import propose
from bayescale.render import figures, html, report
from bayescale.inference.fit import fit
from bayescale.evaluate.hubs import hub_island_table
from bayescale.inference.posterior import diagnostics, law_draws
from bayescale.data.simulate import draw_world, simulate_grid

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EMBEDDED = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
BUDGET = 200.0
UPPER = {"d1": 120.0, "d2": 90.0, "d3": 60.0}
# The page in reading order: the answer, then the details, the grid and its provenance last.
HEADINGS = ("Recommendation", "How far to trust it", "Allocation details", "What to train next", "Held-out check", "Scaling curves",
            "Transfer between domains", "Hubs and islands", "Convergence diagnostics", "Grid and provenance")


@pytest.fixture(scope="module")
def world():
    """One small fit (3 domains) and everything the report shows, computed once for the module."""
    grid = simulate_grid(draw_world(3, seed=0), seed=0)
    idata = fit(grid, chains=2, warmup=150, draws=100, seed=0)
    draws = law_draws(idata)
    allocation = allocate(draws, BUDGET, upper=UPPER, budgets=[50.0, 100.0, BUDGET, 300.0])
    holdout = holdout_predictions(draws, grid)
    return {
        "grid": grid,
        "idata": idata,
        "draws": draws,
        "allocation": allocation,
        "holdout": holdout,
        "scores": score_predictions(holdout),
        "diagnostics": diagnostics(idata),
        "hubs": hub_island_table(idata),
        "loo": loo_summary(idata),
        "proposal": propose(draws, BUDGET, make_candidates(draws.sources, grid).subset(np.arange(0, 40, 2)), batch=2,
                            options={"upper": UPPER}, outcomes=16, decisions=4),
    }


@pytest.fixture(scope="module")
def full_report(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "nested" / "out"
    path = report.write_report(
        out,
        idata=world["idata"],
        grid=world["grid"],
        allocation=world["allocation"],
        holdout=world["holdout"],
        scores=world["scores"],
        diagnostics=world["diagnostics"],
        hubs=world["hubs"],
        loo=world["loo"],
        proposal=world["proposal"],
        title="Report <for> CT & MRI",
    )
    return out, path, path.read_text()


def embedded_pngs(text: str) -> list[bytes]:
    return [base64.b64decode(chunk, validate=True) for chunk in EMBEDDED.findall(text)]


def assert_valid_png(png: bytes) -> None:
    assert png.startswith(PNG_SIGNATURE)
    image = mpimg.imread(io.BytesIO(png), format="png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


# --------------------------------------------------------------------------------------
# the full report


def test_full_report_embeds_every_figure_as_a_valid_png_and_saves_it(full_report):
    out, path, text = full_report
    assert path == out / "report.html" and path.is_file()
    pngs = embedded_pngs(text)
    assert text.count("data:image/png;base64,") == len(report.FIGURE_NAMES) == len(pngs) == 7
    for name, png in zip(report.FIGURE_NAMES, pngs):
        assert_valid_png(png)
        on_disk = out / f"{name}.png"
        assert on_disk.is_file()
        assert on_disk.read_bytes() == png  # the same figure, embedded and beside the page
    # No temporary files left behind by the atomic writes.
    assert sorted(p.name for p in out.iterdir()) == sorted([*(f"{n}.png" for n in report.FIGURE_NAMES), "report.html"])


def test_full_report_is_self_contained_and_escapes_text(full_report):
    _, _, text = full_report
    assert text.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert "<script" not in text and "<link" not in text and "@import" not in text and "url(" not in text
    assert "<title>Report &lt;for&gt; CT &amp; MRI</title>" in text
    assert "Report <for>" not in text
    assert re.findall(r"<h2>(.*?)</h2>", text) == list(HEADINGS)
    assert "omitted" not in text


def test_full_report_shows_the_input_numbers(world, full_report):
    _, _, text = full_report
    diag = world["diagnostics"]
    assert f"{diag['max_rhat']:.3f}" in text
    assert f">{diag['min_ess_bulk']:.0f}<" in text
    assert f">{diag['min_ess_tail']:.0f}<" in text
    assert f">{diag['divergences']}<" in text
    assert f">{diag['min_bfmi']:.2f}<" in text
    assert f">{diag['draws']}<" in text

    alloc = world["allocation"]
    for source, amount in alloc["allocation"].items():
        assert f">{source}<" in text
        assert f">{amount:.2f}<" in text
        assert f">{100 * alloc['fractions'][source]:.1f} %<" in text
    assert set(alloc["baselines"]) == {"uniform", "proportional"}
    for name, base in alloc["baselines"].items():
        assert f"<th>{name}</th>" in text
        assert f">{base['objective_value']:.5g}<" in text
        for amount in base["allocation"].values():
            assert f">{amount:.2f}<" in text
    assert f">{alloc['objective_value']:.5g}<" in text
    assert f"<b>{alloc['shadow_price']:.4g}</b>" in text
    for target, pred in alloc["predicted"].items():
        assert f"{pred['mean']:.4f} [{pred['lo']:.4f}, {pred['hi']:.4f}]" in text

    scores = world["scores"]
    assert f">{scores['pearson_r']:.3f}<" in text
    assert f">{100 * scores['coverage_90']:.0f} %<" in text
    assert f">{scores['n']}<" in text
    assert world["grid"].attrs["description"] in text

    # LOO, hubs and the allocation path carry their numbers too
    loo = world["loo"]
    assert f"{loo['elpd_loo']:.1f} ± {loo['se']:.1f}" in text
    assert f"{loo['pareto_k_bad']} of {loo['n']}" in text
    from bayescale.evaluate.hubs import summary_from_table

    for name, row in summary_from_table(world["hubs"])["domains"].items():
        assert (f">{row['label']}<" in text or f"<b>{row['label']}</b>" in text) and f"{row['out_transfer']['mean']:.3g} [" in text
    hubs_section = text[text.index('<section id="hubs">'):text.index("</section>", text.index('<section id="hubs">'))]
    pairs = summary_from_table(world["hubs"])["asymmetry"]
    both = set(world["hubs"]["source"].values) & set(world["hubs"]["target"].values)
    assert len(pairs) == len(both) * (len(both) - 1) // 2 > 0 and "Asymmetry of transfer" in hubs_section  # every pair once
    at = [hubs_section.index(f">{x['source']} → {x['target']}<") for x in pairs]
    assert at == sorted(at)  # clearest first, as asymmetric_pairs orders them
    assert all(f">{x['p']:.2f}<" in hubs_section for x in pairs)
    path = [e for e in alloc["path"] if e.get("allocation")]
    assert len(path) >= 3
    for entry in path:
        assert f">{entry['budget']:.4g}<" in text
    # at 300 the caps (270 in all) bind and the rest of the budget stays unspent
    assert sum(alloc["path"][-1]["allocation"].values()) == pytest.approx(sum(UPPER.values()), rel=1e-6)


def test_full_report_shows_the_runs_to_train_next(world, full_report):
    _, _, text = full_report
    section = text[text.index('<section id="proposal">'):text.index("</section>", text.index('<section id="proposal">'))]
    proposal = world["proposal"]
    for k, run in enumerate(proposal["batch"], start=1):
        assert f">{run['name']}<" in section and f"{run['gain']:.3g} ± {run['gain_se']:.2g}" in section
        for name, ratio in run["informs"].items():
            assert str(escape(f"{name} sd ×{ratio:.2f}")) in section
    assert f"<b>{proposal['expected_gain']:.3g} ± {proposal['expected_gain_se']:.2g}</b>" in section
    assert f"{proposal['candidates']} candidates" in section


def test_the_answer_comes_before_the_details(world, full_report):
    _, _, text = full_report
    answer = text[text.index('<div class="answer"'):text.index('<div class="details"')]
    details = text[text.index('<div class="details"'):]
    # nothing but the answer comes before it: no figure, no table of the details, no grid attribute
    assert "<figure" not in text[:text.index('<div class="details"')]
    assert text.index("<h2>Recommendation</h2>") < text.index("<h2>How far to trust it</h2>") < text.index("<figure")
    # the recommended allocation: source, amount, share
    alloc = world["allocation"]
    rows = re.findall(r'<tr><td class="name">([^<]+)</td><td>([^<]+)</td><td>([^<]+)</td></tr>', answer)
    assert [r[0] for r in rows] == list(alloc["allocation"])
    for (source, amount, share) in rows:
        assert amount == f"{alloc['allocation'][source]:.2f}" and share == f"{100 * alloc['fractions'][source]:.1f} %"
    # its predicted gain over the reference baseline and over ignoring transfer (here, with no independent-law
    # fit given, the ablation T = 0, said as such), with intervals
    value = alloc["value_of_transfer"]
    assert value["transfer_baseline"] == "transfer_zeroed"
    for key in (f"vs_{value['reference']}", "vs_transfer_zeroed"):
        red = value[key]
        assert f"{report.short_percent(red['mean'])} lower</b> [{report.short_percent(red['lo'])}, {report.short_percent(red['hi'])}]" in answer
        assert f"better in {100 * red['probability_better']:.0f} % of posterior draws" in answer
    assert "the proportional mixture" in answer and "switches transfer off" in answer and "an ablation" in answer
    # the other baseline (uniform) in the small table
    uniform = alloc["baselines"]["uniform"]["reducible_loss_reduction"]
    assert f">{report.short_percent(uniform['mean'])}<" in answer
    # the calibration verdict (computed here: these scores came without one) and the sampler's health
    message = calibration_verdict(world["scores"])["message"]
    assert str(escape(message[1:])) in answer
    diag = world["diagnostics"]
    assert f"max r-hat {diag['max_rhat']:.3f} (wanted ≤ 1.01)" in answer
    assert f"divergences {diag['divergences']} (wanted 0)" in answer
    # the details hold the rest; the grid's description and attributes come last
    assert "shadow price of the budget" in details and "shadow price" not in answer
    assert text.rindex("<figure") < text.index("<h2>Grid and provenance</h2>") < text.index(world["grid"].attrs["description"])


def test_text_from_the_inputs_reaches_the_page_escaped(world, tmp_path):
    evil = "<script>alert(1)</script>"
    alloc = world["allocation"]

    def rename(mapping):
        return {(evil if k == "d1" else k): v for k, v in mapping.items()}

    allocation = dict(alloc, allocation=rename(alloc["allocation"]), fractions=rename(alloc["fractions"]),
                      path=None, decision_uncertainty=None)
    grid = world["grid"].copy()
    grid.attrs = dict(grid.attrs, description=f"grid of {evil} & <b>friends</b>", note=evil)
    path = report.write_report(tmp_path, idata=world["idata"], grid=grid, allocation=allocation,
                               title=f"report {evil}")
    text = path.read_text()
    assert "<script" not in text and "<b>friends</b>" not in text
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert f"<title>report {escaped}</title>" in text
    assert f'<td class="name">{escaped}</td>' in text  # the domain name in the answer's table
    assert f"grid of {escaped} &amp; &lt;b&gt;friends&lt;/b&gt;" in text
    assert text.count(escaped) >= 5  # title, heading, the answer's table, the strategy table, a grid attribute


def test_grid_attributes_are_a_readable_table_not_json(world, full_report):
    _, _, text = full_report
    grid_section = text[text.index('<section id="grid">'):]
    true_params = json.loads(world["grid"].attrs["true_params"])
    assert "<dt>hubs</dt><dd>d1</dd>" in grid_section
    e = ", ".join(f"{k} = {v:.6g}" for k, v in true_params["E"].items())
    assert f"<dt>E</dt><dd>{e}</dd>" in grid_section
    assert "&#34;" not in grid_section and '{"' not in grid_section  # no JSON strings shown raw
    assert f'<td class="name">loss_name</td><td class="text">{world["grid"].attrs["loss_name"]}</td>' in grid_section


def test_a_view_model_without_a_key_fails_instead_of_leaving_a_gap():
    with pytest.raises(UndefinedError):
        html.render("sections/trust.html.j2", trust={"calibration": {"cls": "ok", "text": "fine"}})
    assert html.environment().autoescape("report.html.j2") and html.environment().autoescape("sections/grid.html.j2")


def test_templates_ship_with_the_package():
    root = Path(bayescale.render.__file__).parent
    templates = sorted(p.relative_to(root).as_posix() for p in (root / "templates").rglob("*") if p.is_file())
    assert "templates/report.html.j2" in templates and len(templates) >= 3
    pyproject = tomllib.loads((Path(__file__).parents[3] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["bayescale.render"]
    shipped = {p.relative_to(root).as_posix() for pattern in patterns for p in root.glob(pattern) if p.is_file()}
    assert set(templates) <= shipped, set(templates) - shipped
    dependencies = pyproject["project"]["dependencies"]
    assert any(d.replace(" ", "").startswith("jinja2>=") for d in dependencies)


# --------------------------------------------------------------------------------------
# optional sections


def test_report_without_optional_inputs_omits_their_sections(world, tmp_path):
    # A figure left by an earlier, fuller report must not survive into this one.
    (tmp_path / "allocation.png").write_bytes(b"stale")
    (tmp_path / "holdout.png").write_bytes(b"stale")
    path = report.write_report(tmp_path, idata=world["idata"], grid=world["grid"])
    text = path.read_text()
    pngs = embedded_pngs(text)
    assert len(pngs) == 2
    for png in pngs:
        assert_valid_png(png)
    assert (tmp_path / "scaling_curves.png").is_file() and (tmp_path / "transfer_matrix.png").is_file()
    assert not (tmp_path / "allocation.png").exists() and not (tmp_path / "holdout.png").exists()
    assert "No allocation was given" in text
    assert "No held-out predictions were given" in text
    assert "No diagnostics were given" in text
    assert "No hub and island table was given" in text
    assert "No proposal was computed" in text
    assert "fig-allocation_path" not in text and "fig-calibration" not in text and "PSIS-LOO" not in text
    assert 'id="fig-allocation"' not in text and 'id="fig-holdout"' not in text
    assert "shadow price" not in text and "coverage" not in text
    assert "<title>bayescale report</title>" in text


def diagnostics_html(diag: dict) -> str:
    """The convergence section and the sampler lines of the answer, rendered from the view model."""
    return (html.render("sections/diagnostics.html.j2", diagnostics=report.diagnostics_view(diag))
            + html.render("sections/trust.html.j2", trust=report.trust_view(None, diag, "")))


def test_diagnostics_table_flags_bad_values_red():
    bad = {"max_rhat": 1.0523, "min_ess_bulk": 87.0, "min_ess_tail": 950.0, "divergences": 3, "min_bfmi": 0.12,
           "draws": 400, "chains": 2, "ok": False}
    text = diagnostics_html(bad)
    assert '<td class="bad">1.052</td>' in text
    assert '<td class="bad">87</td>' in text
    assert '<td class="good">950</td>' in text
    assert '<td class="bad">3</td>' in text
    assert '<td class="bad">0.12</td>' in text
    assert "failed" in text
    # the answer's sampler lines say the same in words, failed ones flagged
    assert '<li class="bad">max r-hat 1.052 (wanted ≤ 1.01)</li>' in text
    assert '<li class="good">min tail ESS 950 (wanted ≥ 400)</li>' in text
    good = dict(bad, max_rhat=1.004, min_ess_bulk=800.0, divergences=0, min_bfmi=0.9, ok=True)
    text = diagnostics_html(good)
    assert 'class="bad"' not in text and "converged" in text


# --------------------------------------------------------------------------------------
# figure functions


def test_scaling_curves_has_one_panel_per_target_with_every_observed_point(world):
    draws, grid = world["draws"], world["grid"]
    fig = figures.plot_scaling_curves(draws, grid)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == len(draws.targets) == 3
    budgets = grid["data"].sum("source").values
    for ax, target in zip(fig.axes, draws.targets):
        assert ax.get_title() == target
        assert ax.get_xscale() == "log"
        points = np.concatenate([c.get_offsets() for c in ax.collections if isinstance(c, PathCollection)])
        observed = grid["loss"].sel(target=target).values
        expected = np.column_stack([budgets, observed])[np.isfinite(observed)]
        assert sorted(map(tuple, np.round(points, 9))) == sorted(map(tuple, np.round(expected, 9)))
        # Own-source curve, uniform-mix curve, baseline line; curves span up to 2x the largest budget.
        curves = [line for line in ax.lines if len(line.get_xdata()) > 2]
        assert len(curves) == 2
        assert np.isclose(max(curves[0].get_xdata()), 2 * budgets.max())
        assert np.isclose(min(curves[0].get_xdata()), budgets.min())
        # past the fit runs' data the curve is predict's, the law's error there included
        far = predict(draws, {target: float(2 * budgets.max())}, interval=0.9)["targets"][target]["median"]
        assert curves[0].get_ydata()[-1] == pytest.approx(far, rel=1e-5)
        baseline = float(grid["baseline_loss"].sel(target=target))
        assert any(np.allclose(line.get_ydata(), baseline) for line in ax.lines if len(line.get_xdata()) == 2)
    assert len(fig.legends) == 1


def test_transfer_matrix_annotates_means_and_marks_self(world):
    draws = world["draws"]
    fig = figures.plot_transfer_matrix(draws)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2  # heatmap and colour bar
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts.count("self") == len(draws.sources)
    mean = draws.T.mean(axis=0)
    for i in range(len(draws.sources)):
        for j in range(len(draws.targets)):
            if i != j:
                assert figures.short_number(mean[i, j]) in texts


def test_transfer_matrix_handles_a_law_without_transfer(world):
    draws = world["draws"]
    independent = dataclasses.replace(draws, T=draws.T * draws.self_mask[None], law="independent")
    fig = figures.plot_transfer_matrix(independent)
    assert len(fig.axes) == 2
    assert_valid_png(figures.to_png(fig))


def test_allocation_plot_bars_are_the_shares(world):
    alloc = world["allocation"]
    fig = figures.plot_allocation(alloc)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    bars = [p for p in fig.axes[0].patches if isinstance(p, Rectangle)]
    extra = [k for k in ("temperature_sampling", "transfer_unaware") if (alloc.get(k) or {}).get("allocation")]
    n_sources, n_strategies = len(alloc["allocation"]), 1 + len(alloc["baselines"]) + len(extra)
    assert len(bars) == n_sources * n_strategies
    heights = [b.get_height() for b in bars[:n_sources]]
    assert np.allclose(heights, [100 * f for f in alloc["fractions"].values()])
    # One set of loss points with intervals per strategy that carries predictions.
    assert len(fig.axes[1].containers) == n_strategies


def test_holdout_plot_shows_every_observed_cell(world):
    holdout, scores = world["holdout"], world["scores"]
    fig = figures.plot_holdout(holdout, scores)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    points = np.concatenate([c.get_offsets() for c in ax.collections if isinstance(c, PathCollection)])
    assert len(points) == scores["n"] == int(np.isfinite(holdout["observed"].values).sum())
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert f"r = {scores['pearson_r']:.3f}" in ax.get_title()
    # Without scores the plot scores the predictions itself.
    assert f"r = {scores['pearson_r']:.3f}" in figures.plot_holdout(holdout).axes[0].get_title()
