"""Figures and a self-contained HTML report of a fit, an allocation and a held-out check.

Each figure is a small pure function returning a :class:`matplotlib.figure.Figure`
(no pyplot, no global state), so notebooks and tests can call them directly:

- :func:`plot_scaling_curves`  observed losses vs budget with posterior curves, one panel per target
- :func:`plot_transfer_matrix` posterior mean transfer T (source x target) with 90 % intervals
- :func:`plot_allocation`      recommended shares vs baselines, and their predicted losses
- :func:`plot_holdout`         predicted vs observed loss on held-out runs

:func:`write_report` renders them to PNG files in a folder and writes ``report.html``
beside them with every figure also embedded as base64, so the page opens offline.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from pathlib import Path

import matplotlib
import numpy as np
import xarray as xr
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from bayescale.data import grid as grids
from bayescale._files import atomic_path, write_text_atomic
from bayescale.inference.posterior import LawDraws, law_draws

FIGURE_NAMES = ("scaling_curves", "transfer_matrix", "transfer_graph", "allocation", "allocation_path", "holdout", "calibration")
DPI = 110
OWN_COLOUR = "#1f77b4"
UNIFORM_COLOUR = "#ff7f0e"
OTHER_COLOUR = "#9a9a9a"
STRATEGY_COLOURS = {"recommended": "#2ca02c", "uniform": "#ff7f0e", "proportional": "#7f7f7f"}
RHAT_MAX, ESS_MIN, BFMI_MIN = 1.01, 400, 0.3


# --------------------------------------------------------------------------------------
# small helpers


def _quantiles(samples: np.ndarray, axis: int = 0) -> dict[str, np.ndarray]:
    q = np.nanquantile(samples, [0.05, 0.25, 0.5, 0.75, 0.95], axis=axis)
    return dict(zip(("lo90", "lo50", "median", "hi50", "hi90"), q))


def _budget_grid(budgets: np.ndarray, n_points: int) -> np.ndarray:
    positive = budgets[np.isfinite(budgets) & (budgets > 0)]
    lo, hi = (float(positive.min()), float(positive.max())) if positive.size else (1.0, 1.0)
    return np.geomspace(lo, 2.0 * hi, n_points)


def _short(value: float) -> str:
    """A compact number for a heatmap cell: 2 significant digits, no exponent below 1e-3."""
    if not math.isfinite(value):
        return "n/a"
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 1e-3:
        return f"{value:.2g}"
    return f"{value:.1e}"


def _run_kinds(grid: xr.Dataset, target: str, sources: list[str]) -> dict[str, np.ndarray]:
    """Boolean masks over runs: own-source-only runs for ``target``, uniform mixtures, held out."""
    data = grid["data"].transpose("run", "source").values
    nonzero = data > 0
    own = np.zeros(grid.sizes["run"], dtype=bool)
    if target in sources:
        i = sources.index(target)
        own = nonzero[:, i] & (nonzero.sum(axis=1) == 1)
    row_max = data.max(axis=1, keepdims=True)
    uniform = nonzero.all(axis=1) & np.all(np.isclose(data, row_max, rtol=1e-6, atol=0.0), axis=1) & (data.shape[1] > 1)
    holdout = grid["split"].values == "holdout"
    return {"own": own, "uniform": uniform, "holdout": holdout}


def _plain_log_ticks(ax, which: str = "both") -> None:
    """Label log axes with plain numbers (0.6, 1, 2, 50) instead of 6x10^-1, with enough ticks
    to read values off an axis that spans less than a decade."""
    for name in ("x", "y") if which == "both" else (which,):
        axis = getattr(ax, f"{name}axis")
        lo, hi = getattr(ax, f"get_{name}lim")()
        if lo <= 0 or hi <= 0:
            continue
        decades = math.log10(hi / lo)
        if decades > 1.5:
            subs = (1.0, 2.0, 5.0)
        elif decades > 0.9:
            subs = (1.0, 2.0, 3.0, 5.0, 7.0)
        elif decades > 0.5:
            subs = tuple(range(1, 10))
        else:
            subs = (1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0)
        axis.set_major_locator(LogLocator(base=10, subs=subs))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())


def _figure_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    return buf.getvalue()


# --------------------------------------------------------------------------------------
# figures


def plot_scaling_curves(draws: LawDraws, grid: xr.Dataset, *, n_points: int = 60, max_draws: int = 1000) -> Figure:
    """Observed loss vs run budget per target, with posterior curves and 50 % / 90 % bands.

    Curves: training only on the target's own source (when the target is also a source)
    and a uniform mixture over all sources, over a log-spaced budget grid from the
    smallest run budget to twice the largest. One axes per posterior target.
    """
    from bayescale.evaluate.predict import loss_draws

    grid = grids.validate_grid(grid)
    sources, targets = list(draws.sources), list(draws.targets)
    if draws.n_draws > max_draws:
        draws = draws.subset(np.linspace(0, draws.n_draws - 1, max_draws).round().astype(int))
    budgets = grids.run_budgets(grid).values
    xs = _budget_grid(budgets, n_points)
    n_src = len(sources)
    # Rows: every source alone at each budget, then the uniform mixture at each budget.
    allocs = np.concatenate([np.kron(np.eye(n_src), xs[:, None]), np.outer(xs, np.full(n_src, 1.0 / n_src))])
    losses = np.exp(loss_draws(draws, allocs, log=True).astype(np.float64))  # (S, (I+1)N, J)
    n = len(xs)

    n_panels = len(targets)
    ncols = min(3, n_panels)
    nrows = math.ceil(n_panels / ncols)
    fig = Figure(figsize=(4.4 * ncols, 3.5 * nrows + 0.9), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True)
    grid_targets = [str(t) for t in grid["target"].values]
    unit = grid.attrs.get("data_unit", "units")
    loss_name = grid.attrs.get("loss_name", "loss")
    baseline = grid["baseline_loss"] if "baseline_loss" in grid else None
    any_baseline = False

    def band(ax, rows, j, colour, label):
        q = _quantiles(losses[:, rows, j])
        ax.fill_between(xs, q["lo90"], q["hi90"], color=colour, alpha=0.15, linewidth=0)
        ax.fill_between(xs, q["lo50"], q["hi50"], color=colour, alpha=0.3, linewidth=0)
        ax.plot(xs, q["median"], color=colour, linewidth=1.8, label=label)

    for k, target in enumerate(targets):
        ax = axes.flat[k]
        j = k
        if target in sources:
            i = sources.index(target)
            band(ax, slice(i * n, (i + 1) * n), j, OWN_COLOUR, "own source only")
        band(ax, slice(n_src * n, (n_src + 1) * n), j, UNIFORM_COLOUR, "uniform mix")
        if target in grid_targets:
            observed = grid["loss"].sel(target=target).values
            kinds = _run_kinds(grid, target, [str(s) for s in grid["source"].values])
            ok = np.isfinite(observed) & (budgets > 0)
            colour = np.where(kinds["own"], OWN_COLOUR, np.where(kinds["uniform"], UNIFORM_COLOUR, OTHER_COLOUR))
            for split_mask, marker, size in ((~kinds["holdout"], "o", 22), (kinds["holdout"], "D", 30)):
                m = ok & split_mask
                # Grey runs first so the highlighted ones sit on top.
                order = np.argsort(colour[m] != OTHER_COLOUR, kind="stable")
                ax.scatter(budgets[m][order], observed[m][order], c=colour[m][order], marker=marker, s=size,
                           edgecolors="black" if marker == "D" else "none", linewidths=0.6, alpha=0.9, zorder=3)
            if baseline is not None:
                b = float(baseline.sel(target=target))
                if math.isfinite(b):
                    ax.axhline(b, color="black", linestyle="--", linewidth=1.0)
                    any_baseline = True
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(target, fontsize=11)
        ax.grid(True, which="major", alpha=0.3)
        ax.tick_params(labelsize=9)
        if k % ncols == 0:
            ax.set_ylabel(loss_name, fontsize=10)
        ax.set_xlabel(f"budget ({unit})", fontsize=10)
        ax.xaxis.set_tick_params(labelbottom=True)
        _plain_log_ticks(ax)
    for k in range(n_panels, nrows * ncols):
        fig.delaxes(axes.flat[k])

    handles = [
        (Line2D([], [], color=OWN_COLOUR, linewidth=2), "posterior: own source only (median)"),
        (Line2D([], [], color=UNIFORM_COLOUR, linewidth=2), "posterior: uniform mix of all sources"),
        (Patch(facecolor="#555555", alpha=0.45), "50 % / 90 % credible bands"),
        (Line2D([], [], marker="o", linestyle="", color=OWN_COLOUR), "run: own source only"),
        (Line2D([], [], marker="o", linestyle="", color=UNIFORM_COLOUR), "run: uniform mix"),
        (Line2D([], [], marker="o", linestyle="", color=OTHER_COLOUR), "run: other mix / source"),
        (Line2D([], [], marker="D", linestyle="", markerfacecolor="white", markeredgecolor="black"), "held-out run (not fitted)"),
    ]
    if any_baseline:
        handles.append((Line2D([], [], color="black", linestyle="--"), "baseline loss (no data)"))
    fig.legend([h for h, _ in handles], [label for _, label in handles], loc="outside lower center",
               ncol=4, fontsize=9, frameon=False)
    fig.suptitle(f"Scaling curves: {loss_name} vs training budget", fontsize=13)
    return fig


def plot_transfer_matrix(draws: LawDraws) -> Figure:
    """Heatmap of the posterior mean transfer T (source rows x target columns), log colour scale,
    annotated with the mean and 90 % interval; the diagonal (a target's own data) is marked "self"."""
    sources, targets = list(draws.sources), list(draws.targets)
    T = draws.T
    mean = T.mean(axis=0)
    lo, hi = np.quantile(T, [0.05, 0.95], axis=0)
    self_cells = draws.self_mask > 0
    off = np.where(self_cells, np.nan, mean)
    positive = off[np.isfinite(off) & (off > 0)]
    if positive.size and positive.max() > positive.min() * 1.0001:
        norm = LogNorm(vmin=positive.min(), vmax=positive.max())
    else:
        top = float(positive.max()) if positive.size else 1.0
        norm = Normalize(vmin=0.0, vmax=top if top > 0 else 1.0)
    # A log scale cannot show T = 0; such cells are grey like the diagonal but keep their numbers.
    shown = np.where(off > 0, off, np.nan) if isinstance(norm, LogNorm) else off

    n_i, n_j = len(sources), len(targets)
    fig = Figure(figsize=(1.45 * n_j + 3.0, 0.85 * n_i + 2.0), layout="constrained")
    ax = fig.subplots()
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#e6e6e6")
    im = ax.imshow(np.ma.masked_invalid(shown), cmap=cmap, norm=norm, aspect="auto")
    for i in range(n_i):
        for j in range(n_j):
            if self_cells[i, j]:
                ax.text(j, i, "self", ha="center", va="center", fontsize=9, color="#555555", style="italic")
                continue
            value = mean[i, j]
            rgba = cmap(norm(value)) if np.isfinite(shown[i, j]) else (0.9, 0.9, 0.9, 1)
            luminance = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2]
            colour = "black" if luminance > 0.55 else "white"
            ax.text(j, i - 0.12, _short(value), ha="center", va="center", fontsize=10, color=colour, fontweight="bold")
            ax.text(j, i + 0.2, f"[{_short(lo[i, j])}, {_short(hi[i, j])}]", ha="center", va="center", fontsize=7.5, color=colour)
    ax.set_xticks(range(n_j), targets, rotation=25, ha="right", fontsize=9)
    ax.set_yticks(range(n_i), sources, fontsize=9)
    ax.set_xlabel("target (helped)", fontsize=10)
    ax.set_ylabel("source (trained on)", fontsize=10)
    ax.set_xticks(np.arange(n_j + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(n_i + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    cbar = fig.colorbar(im, ax=ax, shrink=0.9)
    cbar.set_label("posterior mean T" + (" (log scale)" if isinstance(norm, LogNorm) else ""), fontsize=9)
    cbar.ax.tick_params(labelsize=8)
    ax.set_title("Transfer T: mean and 90 % interval", fontsize=12)
    return fig


def _strategies(allocation: dict) -> list[tuple[str, dict]]:
    """(name, {allocation, predicted, objective_value}) for the recommendation and each baseline."""
    out = [("recommended", {"allocation": allocation.get("allocation", {}), "predicted": allocation.get("predicted"),
                            "objective_value": allocation.get("objective_value")})]
    for name, base in (allocation.get("baselines") or {}).items():
        out.append((name, base))
    # The other comparisons of `allocate` (same structure, keys of their own).
    for key, name in (("temperature_sampling", "temperature"), ("transfer_unaware", "transfer-unaware")):
        base = allocation.get(key)
        if base and base.get("allocation"):
            out.append((name, base))
    return out


def plot_allocation(allocation: dict) -> Figure:
    """Left: share of the budget per source, recommended vs each baseline. Right: predicted loss per
    target (mean and credible interval) under each strategy that carries predictions."""
    strategies = _strategies(allocation)
    sources = list(allocation.get("allocation", {}))
    fig = Figure(figsize=(12.5, 4.6), layout="constrained")
    ax_share, ax_loss = fig.subplots(1, 2, width_ratios=[1, 1])
    width = 0.8 / max(len(strategies), 1)
    x = np.arange(len(sources))
    for k, (name, strat) in enumerate(strategies):
        amounts = np.array([float(strat["allocation"].get(s, 0.0)) for s in sources])
        total = amounts.sum()
        shares = amounts / total if total > 0 else np.zeros_like(amounts)
        pos = x + (k - (len(strategies) - 1) / 2) * width
        colour = STRATEGY_COLOURS.get(name, f"C{k + 3}")
        ax_share.bar(pos, 100 * shares, width=width * 0.95, color=colour, label=name)
        if name == "recommended":
            for p, share, amount in zip(pos, shares, amounts):
                ax_share.annotate(f"{amount:.0f}", (p, 100 * share), xytext=(0, 2), textcoords="offset points",
                                  ha="center", va="bottom", fontsize=7.5, color="#1a5e1a")
    ax_share.set_xticks(x, sources, rotation=20, ha="right", fontsize=9)
    ax_share.set_ylabel("share of budget (%)", fontsize=10)
    budget = allocation.get("budget")
    ax_share.set_title("Data mix" + (f" at budget {budget:g}" if budget is not None else "") + " (numbers: recommended amounts)",
                       fontsize=11)
    ax_share.margins(y=0.12)
    ax_share.grid(True, axis="y", alpha=0.3)
    ax_share.legend(fontsize=9, frameon=False)

    with_pred = [(name, strat) for name, strat in strategies if strat.get("predicted")]
    targets = list(with_pred[0][1]["predicted"]) if with_pred else []
    xt = np.arange(len(targets))
    step = 0.7 / max(len(with_pred), 1)
    for k, (name, strat) in enumerate(with_pred):
        pred = strat["predicted"]
        mean = np.array([pred[t]["mean"] for t in targets])
        lo = np.array([pred[t]["lo"] for t in targets])
        hi = np.array([pred[t]["hi"] for t in targets])
        pos = xt + (k - (len(with_pred) - 1) / 2) * step
        ax_loss.errorbar(pos, mean, yerr=[mean - lo, hi - mean], fmt="o", markersize=5, capsize=3,
                         color=STRATEGY_COLOURS.get(name, f"C{k + 3}"), label=name)
    ax_loss.set_xticks(xt, targets, rotation=20, ha="right", fontsize=9)
    ax_loss.set_ylabel("predicted loss", fontsize=10)
    ax_loss.set_title(f"Predicted loss per target (mean, credible interval); objective: {allocation.get('objective', '?')}",
                      fontsize=11)
    ax_loss.grid(True, axis="y", alpha=0.3)
    if with_pred:
        ax_loss.legend(fontsize=9, frameon=False)
    else:
        ax_loss.text(0.5, 0.5, "no predictions in the allocation", transform=ax_loss.transAxes, ha="center")
    return fig


def plot_holdout(holdout: xr.Dataset, scores: dict | None = None) -> Figure:
    """Predicted (median) vs observed loss on held-out cells, thick bars 50 % and thin bars 90 %
    predictive intervals, y = x line, coloured by target, log-log axes."""
    fig = Figure(figsize=(6.6, 5.6), layout="constrained")
    _draw_holdout(fig.subplots(), holdout, scores)
    return fig


def _draw_holdout(ax, holdout: xr.Dataset, scores: dict | None) -> None:
    targets = [str(t) for t in holdout["target"].values]
    everything = []
    for k, target in enumerate(targets):
        cell = holdout.sel(target=target)
        obs = cell["observed"].values
        ok = np.isfinite(obs)
        if not ok.any():
            continue
        med = cell["median"].values[ok]
        colour = f"C{k % 10}"
        for lo_name, hi_name, lw in (("lo90", "hi90", 1.0), ("lo50", "hi50", 3.0)):
            lo, hi = cell[lo_name].values[ok], cell[hi_name].values[ok]
            ax.errorbar(obs[ok], med, yerr=[med - lo, hi - med], fmt="none", ecolor=colour, elinewidth=lw, alpha=0.8,
                        capsize=0)
        ax.scatter(obs[ok], med, color=colour, s=14, edgecolors="black", linewidths=0.4, label=target, zorder=3)
        everything.extend([obs[ok], cell["lo90"].values[ok], cell["hi90"].values[ok]])
    if everything:
        values = np.concatenate(everything)
        values = values[np.isfinite(values) & (values > 0)]
        lo, hi = values.min() / 1.08, values.max() * 1.08
        ax.plot([lo, hi], [lo, hi], color="black", linestyle="--", linewidth=1, label="y = x", zorder=1)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_log_ticks(ax)
    ax.set_xlabel("observed loss", fontsize=10)
    ax.set_ylabel("predicted loss (median; bars: 50 % and 90 %)", fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8.5, frameon=False, loc="upper left")
    if scores is None:
        from bayescale.evaluate.check import score_predictions

        try:
            scores = score_predictions(holdout)
        except Exception:  # too few cells to score: the figure still shows them
            scores = None
    if scores:
        ax.set_title(
            f"Held-out runs: r = {scores['pearson_r']:.3f}, 90 % coverage = {scores['coverage_90']:.0%}, "
            f"50 % coverage = {scores['coverage_50']:.0%} (n = {scores['n']})",
            fontsize=10.5,
        )
    else:
        ax.set_title("Held-out runs", fontsize=11)


def plot_allocation_path(allocation: dict) -> Figure:
    """Recommended amount of each source as the budget grows (the allocation path), solved with the
    same objective and constraints as the main recommendation; the main budget is marked."""
    path = [entry for entry in allocation.get("path") or [] if entry.get("allocation")]
    fig = Figure(figsize=(12.5, 4.4), layout="constrained")
    ax_amount, ax_share = fig.subplots(1, 2)
    if not path:
        for ax in (ax_amount, ax_share):
            ax.text(0.5, 0.5, "no feasible budget on the path", transform=ax.transAxes, ha="center")
        return fig
    sources = list(path[0]["allocation"])
    budgets = np.array([entry["budget"] for entry in path])
    for k, src in enumerate(sources):
        amounts = np.array([entry["allocation"][src] for entry in path])
        shares = np.array([entry["fractions"][src] for entry in path])
        ax_amount.plot(budgets, amounts, "o-", color=f"C{k % 10}", label=src, markersize=4)
        ax_share.plot(budgets, 100 * shares, "o-", color=f"C{k % 10}", label=src, markersize=4)
    main = allocation.get("budget")
    for ax in (ax_amount, ax_share):
        if main is not None:
            ax.axvline(main, color="black", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        _plain_log_ticks(ax, which="x")
        ax.set_xlabel("budget (dotted: the recommendation above)", fontsize=10)
        ax.grid(True, which="both", alpha=0.25)
    ax_amount.set_ylabel("recommended amount", fontsize=10)
    ax_amount.set_title(f"Allocation path ({allocation.get('objective', '?')})", fontsize=11)
    ax_share.set_ylabel("share of budget (%)", fontsize=10)
    ax_share.set_title("Shares along the path", fontsize=11)
    ax_amount.legend(fontsize=8.5, frameon=False)
    return fig


def plot_calibration(holdout: xr.Dataset) -> Figure:
    """Left: histogram of the held-out cells' PIT values (flat when the predictive is calibrated;
    U-shaped when over-confident, a hump when under-confident) with the band a calibrated
    predictive stays in. Right: empirical coverage of central intervals against their nominal level."""
    fig = Figure(figsize=(11.5, 4.4), layout="constrained")
    ax_pit, ax_cov = fig.subplots(1, 2)
    _draw_pit(ax_pit, holdout)
    _draw_coverage(ax_cov, holdout)
    return fig


def plot_check(holdout: xr.Dataset, scores: dict | None = None) -> Figure:
    """What ``bayescale check --figure`` saves: predicted vs observed, PIT histogram, coverage vs nominal."""
    fig = Figure(figsize=(17.5, 5.4), layout="constrained")
    ax_pred, ax_pit, ax_cov = fig.subplots(1, 3, width_ratios=[1.15, 1, 1])
    _draw_holdout(ax_pred, holdout, scores)
    _draw_pit(ax_pit, holdout)
    _draw_coverage(ax_cov, holdout)
    return fig


def _draw_pit(ax, holdout: xr.Dataset) -> None:
    from scipy import stats

    pit = holdout["pit"].values.ravel()
    pit = pit[np.isfinite(pit)]
    n, bins = pit.size, 10
    counts, edges = np.histogram(pit, bins=bins, range=(0, 1))
    lo, hi = stats.binom.ppf([0.025, 0.975], n, 1 / bins)
    ax.axhspan(lo, hi, color="#bbbbbb", alpha=0.4, label="95 % range if calibrated")
    ax.axhline(n / bins, color="black", linestyle="--", linewidth=1)
    ax.bar(edges[:-1], counts, width=1 / bins, align="edge", color="#4c72b0", edgecolor="white")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, max(counts.max(), hi) * 1.25)
    ax.set_xlabel("PIT: share of predictive draws below the observed loss", fontsize=10)
    ax.set_ylabel("held-out cells", fontsize=10)
    ax.set_title(f"PIT histogram (n = {n}); piled at the edges = over-confident", fontsize=11)
    ax.legend(fontsize=8.5, frameon=False, loc="upper center")


def _draw_coverage(ax, holdout: xr.Dataset) -> None:
    from bayescale.evaluate.check import coverage_curve

    curve = coverage_curve(holdout)
    nominal = 100 * np.asarray(curve["nominal"])
    ax.fill_between(nominal, 100 * np.asarray(curve["lo"]), 100 * np.asarray(curve["hi"]), color="#bbbbbb", alpha=0.4,
                    label="95 % range if calibrated")
    ax.plot([0, 100], [0, 100], color="black", linestyle="--", linewidth=1, label="nominal")
    ax.plot(nominal, 100 * np.asarray(curve["empirical"]), "o-", color="#c44e52", markersize=4, label="held-out cells")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_xlabel("nominal coverage of the central interval (%)", fontsize=10)
    ax.set_ylabel("held-out cells inside (%)", fontsize=10)
    ax.set_title("Coverage vs nominal; below the band = over-confident", fontsize=11)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8.5, frameon=False, loc="upper left")


# --------------------------------------------------------------------------------------
# HTML


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: #222; background: #fafafa; margin: 0; line-height: 1.45; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 32px 64px; background: #fff; }
h1 { font-size: 1.7em; margin: 0.2em 0 0.1em; }
h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 2px solid #e3e3e3; padding-bottom: 4px; }
.sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.6em 0 1em; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 4px 10px; text-align: right; }
th { background: #f2f2f2; font-weight: 600; }
td.name, th.name, td.text { text-align: left; }
tr:nth-child(even) td { background: #fbfbfb; }
td.bad { background: #fde2e2 !important; color: #a40000; font-weight: 600; }
td.good { color: #1a6b1a; }
.note { color: #666; font-style: italic; }
.warn { background: #fff4e5; border-left: 4px solid #f0a020; padding: 6px 12px; }
.ok { background: #eaf7ea; border-left: 4px solid #3a9a3a; padding: 6px 12px; }
figure { margin: 1.2em 0 2em; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #444; font-size: 0.92em; margin-top: 4px; }
pre { background: #f6f6f6; padding: 8px 12px; overflow-x: auto; font-size: 0.88em; }
code { font-size: 0.92em; }
.share { color: #666; font-size: 0.88em; }
.scroll { overflow-x: auto; }
"""

CAPTIONS = {
    "scaling_curves": "Each panel is one target: dots are observed losses of training runs (diamonds are held-out runs "
    "the fit never saw); the lines and bands are the posterior median and 50 %/90 % credible bands of the expected loss "
    "when training only on that target's own data (blue) or on an equal mix of all sources (orange); "
    "curves that pass through the diamonds extrapolate well.",
    "transfer_matrix": "Row i, column j is the posterior mean of T_ij, how much a unit of data from source i counts as "
    "target j's own data (x_j gains T_ij d_i^beta_ij), with its 90 % credible interval in brackets; brighter cells "
    "are sources that help that target more, and the diagonal is the target's own data (T = 1 by definition).",
    "allocation": "Left: the share of the budget each strategy puts on each source (numbers above the green bars are "
    "the recommended amounts); right: each strategy's predicted loss per target, mean with its credible interval — "
    "lower is better.",
    "transfer_graph": "Left: the directed transfer graph (an arrow i -> j when source i's data, at the reference amount, "
    "is worth a noticeable share of target j's effective data; wider arrows transfer more), nodes coloured hub, island or "
    "neither with their posterior probabilities. Right: each domain's out-transfer (how much it helps others) against its "
    "in-transfer (how much others help it), posterior means with intervals; the rules are in the table above.",
    "allocation_path": "The recommended allocation re-solved at a range of budgets with the same objective and "
    "constraints: which source to add next as the budget grows (left: amounts; right: shares). Budgets the constraints "
    "cannot meet are left out.",
    "calibration": "Left: where each held-out observation falls within its predictive distribution (PIT). A calibrated "
    "predictive gives a flat histogram inside the grey band; bars piled at 0 and 1 mean the intervals are too narrow. "
    "Right: the share of held-out cells inside the central interval of each nominal level; points below the diagonal "
    "and grey band mean the law is more confident than it should be.",
    "holdout": "Each point is one held-out (run, target) cell: its observed loss (x) against the posterior predictive "
    "median (y) with 50 % (thick) and 90 % (thin) intervals; points on the dashed line are predicted exactly, and "
    "about 90 % of the thin bars should cross it.",
}


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value, spec: str = ".4g") -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return _e(value)
    if not math.isfinite(value):
        return "n/a"
    return format(value, spec)


def _table(header: list[str], rows: list[list[tuple[str, str]]]) -> str:
    """rows: lists of (html cell content, css class); the first column is left-aligned."""
    heads = "".join(f'<th class="name">{_e(h)}</th>' if k == 0 else f"<th>{_e(h)}</th>" for k, h in enumerate(header))
    out = ['<div class="scroll"><table>', f"<tr>{heads}</tr>"]
    for row in rows:
        cells = []
        for k, (content, cls) in enumerate(row):
            classes = " ".join(c for c in (("name" if k == 0 else ""), cls) if c)
            cells.append(f'<td class="{classes}">{content}</td>' if classes else f"<td>{content}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table></div>")
    return "\n".join(out)


def _diagnostics_html(diag: dict | None) -> str:
    if diag is None:
        return '<p class="note">No diagnostics were given, so this section is omitted.</p>'

    def flag(bad: bool) -> str:
        return "bad" if bad else "good"

    rows = []
    rhat = diag.get("max_rhat", float("nan"))
    rows.append([("max r-hat", ""), (_fmt(rhat, ".3f"), flag(not (rhat <= RHAT_MAX))), (f"&le; {RHAT_MAX}", "")])
    for key, label in (("min_ess_bulk", "min bulk ESS"), ("min_ess_tail", "min tail ESS")):
        if key in diag:
            v = diag[key]
            rows.append([(label, ""), (_fmt(v, ".0f"), flag(not (v >= ESS_MIN))), (f"&ge; {ESS_MIN}", "")])
    div = diag.get("divergences", 0)
    rows.append([("divergences", ""), (_e(int(div)), flag(div > 0)), ("0", "")])
    if "min_bfmi" in diag:
        v = diag["min_bfmi"]
        rows.append([("min E-BFMI", ""), (_fmt(v, ".2f"), flag(not (v >= BFMI_MIN))), (f"&ge; {BFMI_MIN}", "")])
    for key in ("chains", "draws"):
        if key in diag:
            rows.append([(key, ""), (_e(diag[key]), ""), ("", "")])
    ok = bool(diag.get("ok", True)) and all(cls != "bad" for row in rows for _, cls in row)
    banner = (
        '<p class="ok">The sampler converged by these checks.</p>'
        if ok
        else '<p class="warn">Some convergence checks failed (red): treat the posterior with suspicion; '
        "sample longer or with a higher target acceptance.</p>"
    )
    return banner + _table(["check", "value", "wanted"], rows)


def _allocation_html(allocation: dict | None, unit: str) -> str:
    if allocation is None:
        return '<p class="note">No allocation was given, so this section is omitted.</p>'
    strategies = _strategies(allocation)
    sources = list(allocation.get("allocation", {}))
    parts = []
    status = str(allocation.get("status", "?"))
    cls = "ok" if status == "optimal" else "warn"
    parts.append(
        f'<p class="{cls}">Status <b>{_e(status)}</b>; objective <code>{_e(allocation.get("objective", "?"))}</code>; '
        f"budget {_fmt(allocation.get('budget'), 'g')} {_e(unit)}; solver {_e(allocation.get('solver', '?'))}"
        + (f" on {_e(allocation['draws_used'])} posterior draws" if "draws_used" in allocation else "")
        + ".</p>"
    )
    # One column per strategy, amount over share, so five strategies fit the page.
    header = [f"source: amount ({unit}) and share"] + [name for name, _ in strategies]
    rows = []
    for s in sources:
        row = [(_e(s), "")]
        for _, strat in strategies:
            amounts = strat["allocation"]
            total = sum(float(v) for v in amounts.values())
            amount = float(amounts.get(s, 0.0))
            share = _fmt(100 * amount / total if total > 0 else 0.0, ".1f") + " %"
            row.append((f'{_fmt(amount, ".2f")}<br><span class="share">{share}</span>', ""))
        rows.append(row)
    total_row = [("<b>total</b>", "")]
    objective_row = [("<b>objective value</b>", "")]
    for name, strat in strategies:
        total_row.append((_fmt(sum(float(v) for v in strat["allocation"].values()), ".2f"), ""))
        objective_row.append((_fmt(strat.get("objective_value"), ".5g"), "good" if name == "recommended" else ""))
    parts.append(_table(header, rows + [total_row, objective_row]))
    shadow = allocation.get("shadow_price")
    facts = []
    if shadow is not None:
        facts.append(f"<li>shadow price of the budget: <b>{_fmt(shadow, '.4g')}</b> (change of the objective per extra "
                     f"unit of data, in {_e(unit)}; negative means more data still helps, 0 if the budget is not binding)</li>")
    if allocation.get("binding"):
        facts.append(f"<li>binding constraints: {_e(', '.join(map(str, allocation['binding'])))}</li>")
    for note in allocation.get("solver_notes") or []:
        facts.append(f"<li>solver note: {_e(note)}</li>")
    certificate = allocation.get("certificate") or {}
    if certificate.get("relative_gap") is not None:
        facts.append(f"<li>optimality certificate: relative gap {_fmt(certificate['relative_gap'], '.1e')} "
                     f"between the objective and an independent lower bound</li>")
    value = allocation.get("value_of_transfer") or {}
    for key, label in ((f"vs_{value.get('reference')}", f"the {value.get('reference')} mixture"), ("vs_transfer_unaware", "the transfer-unaware optimum")):
        red = value.get(key)
        if red and red.get("mean") is not None:
            facts.append(f"<li>reduction of weighted reducible loss against {_e(label)}: <b>{_fmt(100 * red['mean'], '.1f')} %</b> "
                         f"[{_fmt(100 * red['lo'], '.1f')}, {_fmt(100 * red['hi'], '.1f')}] %, better in "
                         f"{_fmt(100 * red['probability_better'], '.0f')} % of posterior draws</li>")
    if facts:
        parts.append("<ul>" + "".join(facts) + "</ul>")
    with_pred = [(name, strat) for name, strat in strategies if strat.get("predicted")]
    if with_pred:
        targets = list(with_pred[0][1]["predicted"])
        rows = []
        for t in targets:
            row = [(_e(t), "")]
            for _, strat in with_pred:
                p = strat["predicted"].get(t)
                row.append((f"{_fmt(p['mean'], '.4f')} [{_fmt(p['lo'], '.4f')}, {_fmt(p['hi'], '.4f')}]" if p else "n/a", ""))
            rows.append(row)
        parts.append("<p>Predicted loss per target (mean [credible interval]):</p>")
        parts.append(_table(["target"] + [name for name, _ in with_pred], rows))
    unc = allocation.get("decision_uncertainty") or {}
    if unc.get("fractions"):
        parts.append(f"<p>How sure is the recommendation? The optimal shares re-solved on each of {_e(unc.get('solved'))} "
                     "posterior draws (median [interval]) and how often each source gets the largest share:</p>")
        rows = [[(_e(src), ""), (_fmt(100 * allocation.get("fractions", {}).get(src, float("nan")), ".1f") + " %", ""),
                 (f"{_fmt(100 * f['median'], '.1f')} [{_fmt(100 * f['lo'], '.1f')}, {_fmt(100 * f['hi'], '.1f')}] %", ""),
                 (_fmt(100 * unc.get("largest_share", {}).get(src, 0.0), ".0f") + " %", "")]
                for src, f in unc["fractions"].items()]
        parts.append(_table(["source", "recommended share", "per-draw optimal share", "largest share in"], rows))
    return "\n".join(parts)


def _loo_html(loo: dict | None) -> str:
    if not loo:
        return ""
    bad = loo.get("pareto_k_bad", 0)
    rows = [
        [("elpd (PSIS-LOO)", ""), (_fmt(loo["elpd_loo"], ".1f") + " &plusmn; " + _fmt(loo["se"], ".1f"), ""), ("higher is better", "")],
        [("effective parameters p_loo", ""), (_fmt(loo["p_loo"], ".1f"), ""), ("", "")],
        [("observations with Pareto k above " + _fmt(loo["pareto_k_threshold"], ".2f"), ""),
         (f"{_e(bad)} of {_e(loo['n'])}", "bad" if bad else "good"), ("0", "")],
    ]
    note = (f'<p class="warn">LOO is unreliable for {_e(bad)} observations (high Pareto k): '
            "compare laws on held-out runs (<code>bayescale check --laws</code>) rather than by LOO alone.</p>") if bad else ""
    return "<p>Leave-one-out predictive accuracy of the fitted runs:</p>" + _table(["check", "value", "wanted"], rows) + note


def loo_summary(idata) -> dict | None:
    """PSIS-LOO of a posterior with a log-likelihood group, as a small dict; None without one."""
    import warnings

    import arviz as az

    if "log_likelihood" not in getattr(idata, "children", {}):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the Pareto-k count below says it
        loo = az.loo(idata)
    k = np.asarray(loo.pareto_k).ravel()
    return {"elpd_loo": float(loo.elpd), "se": float(loo.se), "p_loo": float(loo.p), "n": int(k.size),
            "pareto_k_bad": int(np.sum(k > loo.good_k)), "pareto_k_threshold": float(loo.good_k)}


def _hubs_html(hubs: xr.Dataset | None) -> str:
    if hubs is None:
        return '<p class="note">No hub and island table was given (a law without transfer has none), so this section is omitted.</p>'
    from bayescale.evaluate.hubs import summary_from_table

    summary = summary_from_table(hubs)
    rows = []
    for name, d in summary["domains"].items():
        def measure(m):
            return "n/a" if m is None else f"{_fmt(m['mean'], '.3g')} [{_fmt(m['lo'], '.3g')}, {_fmt(m['hi'], '.3g')}]"

        label = d["label"]
        rows.append([(_e(name), "name"), (_e(d["role"]), "text"), (measure(d["out_transfer"]), ""), (measure(d["in_transfer"]), ""),
                     (_fmt(d["p_hub"], ".2f") if d["p_hub"] is not None else "n/a", ""),
                     (_fmt(d["p_island"], ".2f") if d["p_island"] is not None else "n/a", ""),
                     (f"<b>{_e(label)}</b>" if label != "neither" else _e(label), "")])
    pct = round(100 * summary["interval"])
    table = _table(["domain", "role", f"out-transfer [{pct} %]", f"in-transfer [{pct} %]", "P(hub)", "P(island)", "label"], rows)
    definitions = "".join(f"<li><b>{_e(k)}</b>: {_e(v)}</li>" for k, v in summary["definitions"].items())
    return table + f"<ul>{definitions}</ul>"


def _path_html(allocation: dict | None) -> str:
    path = (allocation or {}).get("path") or []
    if not path:
        return ""
    sources = next((list(e["allocation"]) for e in path if e.get("allocation")), [])
    rows = []
    for entry in path:
        if entry.get("allocation"):
            cells = [(_fmt(100 * entry["fractions"][s], ".0f") + " %", "") for s in sources]
            rows.append([(_fmt(entry["budget"], ".4g"), "")] + cells + [(_e(entry["status"]), "text")])
        else:
            rows.append([(_fmt(entry["budget"], ".4g"), "")] + [("&ndash;", "") for _ in sources]
                        + [(_e(entry.get("message", entry["status"])), "text bad")])
    return "<p>The recommendation at other budgets (shares of each budget):</p>" + _table(["budget"] + sources + ["status"], rows)


def _holdout_html(holdout: xr.Dataset | None, scores: dict | None) -> str:
    if holdout is None and scores is None:
        return '<p class="note">No held-out predictions were given, so this section is omitted.</p>'
    parts = []
    if scores is not None:
        def cov(key, nominal):
            v = scores.get(key, float("nan"))
            bad = not (abs(v - nominal) <= 0.2)
            return (_fmt(100 * v, ".0f") + " %", "bad" if bad else "")

        rows = [
            [("cells scored", ""), (_e(scores.get("n", "?")), "")],
            [("Pearson r (median vs observed)", ""), (_fmt(scores.get("pearson_r"), ".3f"), "")],
            [("median |relative error|", ""), (_fmt(scores.get("median_abs_rel_error"), ".3f"), "")],
            [("50 % interval coverage", ""), cov("coverage_50", 0.5)],
            [("90 % interval coverage", ""), cov("coverage_90", 0.9)],
        ]
        parts.append(_table(["score", "value"], rows))
        verdict = scores.get("calibration") or {}
        if verdict.get("verdict") not in (None, "ok"):
            parts.append(f'<p class="warn">{_e(verdict["message"])}</p>')
    if holdout is not None:
        from bayescale.evaluate.check import score_by_target

        rows = [
            [(_e(target), ""), (_e(row["n"]), ""), (_fmt(row["median_abs_rel_error"], ".3f"), ""), (_fmt(100 * row["coverage_90"], ".0f") + " %", "")]
            for target, row in score_by_target(holdout).items()
        ]
        if rows:
            parts.append("<p>Per target:</p>")
            parts.append(_table(["target", "cells", "median |rel. error|", "90 % coverage"], rows))
    return "\n".join(parts)


def _grid_html(grid: xr.Dataset, idata) -> str:
    from bayescale.inference.fit import grid_fingerprint

    parts = []
    description = grid.attrs.get("description", "")
    if description:
        parts.append(f"<p>{_e(description)}</p>")
    parts.append("<pre>" + _e(grids.format_grid_summary(grids.grid_summary(grid))) + "</pre>")
    rows = []
    for key, value in grid.attrs.items():
        text = str(value)
        if len(text) > 160:
            text = text[:150] + f" … ({len(text)} characters)"
        rows.append([(_e(key), ""), (_e(text), "text")])
    if rows:
        parts.append(_table(["grid attribute", "value"], rows))
    attrs = dict(getattr(idata, "attrs", {}) or {})
    post_rows = []
    for key in ("law", "likelihood", "method", "data_scale", "grid", "grid_fingerprint", "seed"):
        if key in attrs and str(attrs[key]) != "":
            post_rows.append([(_e(key), ""), (_e(_fmt(attrs[key], ".4g") if key == "data_scale" else attrs[key]), "text")])
    if post_rows:
        parts.append(_table(["posterior attribute", "value"], post_rows))
    fingerprint = attrs.get("grid_fingerprint")
    if fingerprint:
        try:
            mine = grid_fingerprint(grid)
        except Exception:  # pragma: no cover - a grid the fingerprint cannot read
            mine = None
        if mine is not None and mine != str(fingerprint):
            parts.append(
                f'<p class="warn">This grid (fingerprint {_e(mine)}) is not the grid the posterior was fitted to '
                f"({_e(fingerprint)}): the observed points in the figures may not be the fitted data.</p>"
            )
    return "\n".join(parts)


def _figure_html(name: str, png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure id="fig-{_e(name)}"><img alt="{_e(alt)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{_e(CAPTIONS[name])} <span class=\"note\">(also saved as {_e(name)}.png)</span></figcaption></figure>"
    )


def write_report(
    out: str | os.PathLike,
    *,
    idata,
    grid: xr.Dataset,
    allocation: dict | None = None,
    holdout: xr.Dataset | None = None,
    scores: dict | None = None,
    diagnostics: dict | None = None,
    hubs: xr.Dataset | None = None,
    loo: dict | None = None,
    title: str = "bayescale report",
) -> Path:
    """Write the figures as PNG files and ``report.html`` (figures embedded) into the folder ``out``.

    Sections whose input is None are left out with a note. ``hubs`` is a
    :func:`bayescale.evaluate.hubs.hub_island_table`; ``loo`` the PSIS-LOO summary of :func:`loo_summary`.
    Returns the HTML path.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    grid = grids.validate_grid(grid)
    draws = law_draws(idata)
    unit = str(grid.attrs.get("data_unit", "units"))

    figures: list[tuple[str, Figure, str]] = [
        ("scaling_curves", plot_scaling_curves(draws, grid), "scaling curves per target"),
        ("transfer_matrix", plot_transfer_matrix(draws), "posterior transfer matrix"),
    ]
    if hubs is not None:
        from bayescale.evaluate.hubs import plot_transfer_graph

        figures.append(("transfer_graph", plot_transfer_graph(idata, hubs, data_unit=unit), "transfer graph with hubs and islands"))
    if allocation is not None:
        figures.append(("allocation", plot_allocation(allocation), "recommended allocation vs baselines"))
        if any(entry.get("allocation") for entry in allocation.get("path") or []):
            figures.append(("allocation_path", plot_allocation_path(allocation), "allocation path over budgets"))
    if holdout is not None:
        figures.append(("holdout", plot_holdout(holdout, scores), "held-out predictions vs observations"))
        if "pit" in holdout and np.isfinite(holdout["pit"].values).any():
            figures.append(("calibration", plot_calibration(holdout), "calibration: PIT histogram and coverage vs nominal"))
    rendered = {}
    for name, fig, alt in figures:
        png = _figure_png(fig)
        with atomic_path(out / f"{name}.png") as tmp:
            tmp.write_bytes(png)
        rendered[name] = (png, alt)
    # A figure left from an earlier report into this folder would contradict this one.
    for name in FIGURE_NAMES:
        if name not in rendered and (out / f"{name}.png").is_file():
            (out / f"{name}.png").unlink()

    def figure_or_note(name: str, what: str) -> str:
        if name in rendered:
            return _figure_html(name, *rendered[name])
        return f'<p class="note">No {_e(what)} was given, so this figure is omitted.</p>'

    def figure_if(name: str) -> str:
        return _figure_html(name, *rendered[name]) if name in rendered else ""

    sections = [
        ("Grid", _grid_html(grid, idata)),
        ("Convergence diagnostics", _diagnostics_html(diagnostics) + _loo_html(loo)),
        ("Scaling curves", figure_or_note("scaling_curves", "grid")),
        ("Transfer between domains", figure_or_note("transfer_matrix", "posterior")),
        ("Hubs and islands", _hubs_html(hubs) + figure_if("transfer_graph")),
        ("Recommended allocation", _allocation_html(allocation, unit) + "\n" + figure_or_note("allocation", "allocation")
         + _path_html(allocation) + figure_if("allocation_path")),
        ("Held-out check", _holdout_html(holdout, scores) + ("\n" + figure_or_note("holdout", "held-out prediction")
                                                             + figure_if("calibration") if holdout is not None else "")),
    ]
    subtitle = (
        f"{len(draws.sources)} sources, {len(draws.targets)} targets; law <code>{_e(draws.law)}</code>, "
        f"likelihood <code>{_e(draws.likelihood)}</code>, {draws.n_draws} posterior draws; "
        f"data scale D0 = {_fmt(draws.data_scale, '.4g')} {_e(unit)}"
    )
    body = "\n".join(f'<section><h2>{_e(heading)}</h2>\n{content}\n</section>' for heading, content in sections)
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{CSS}</style>
</head>
<body>
<main>
<h1>{_e(title)}</h1>
<p class="sub">{subtitle}</p>
{body}
</main>
</body>
</html>
"""
    path = out / "report.html"
    write_text_atomic(path, page)
    return path
