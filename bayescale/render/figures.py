"""Every figure of bayescale, each a pure function returning a :class:`matplotlib.figure.Figure`
(no pyplot, no global state), so the report, the command line, notebooks and tests call them alike.

- :func:`plot_scaling_curves`   observed losses vs budget with posterior curves, one panel per target
- :func:`plot_transfer_matrix`  posterior mean transfer T (source x target) with 90 % intervals
- :func:`plot_transfer_graph`   the directed transfer graph with hubs and islands, and an out/in map
- :func:`plot_allocation`       recommended shares vs baselines, and their predicted losses
- :func:`plot_allocation_path`  the recommended allocation as the budget grows
- :func:`plot_holdout`          predicted vs observed loss on held-out runs
- :func:`plot_calibration`      PIT histogram and coverage vs nominal of the held-out runs
- :func:`plot_check`            what ``bayescale check --figure`` saves: holdout and calibration in one row

:func:`to_png` renders a figure to PNG bytes as the report embeds it.

The module is long because it holds every figure of the package; each is a few dozen lines of
matplotlib layout, read on its own, and they share the colours and the log-axis tick helper.
"""

from __future__ import annotations

import io
import math

import matplotlib
import numpy as np
import xarray as xr
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Circle, FancyArrowPatch, Patch, Rectangle
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
from scipy import stats

from bayescale.data import grid as grids
from bayescale.evaluate.check import coverage_curve, score_predictions
from bayescale.evaluate.hubs import LABEL_COLOURS, LABELS, hub_island_table
from bayescale.evaluate.predict import loss_draws
from bayescale.inference.posterior import LawDraws
from bayescale.laws.noise import with_extrapolation_error

DPI = 110
OWN_COLOUR = "#1f77b4"
UNIFORM_COLOUR = "#ff7f0e"
OTHER_COLOUR = "#9a9a9a"
STRATEGY_COLOURS = {"recommended": "#2ca02c", "uniform": "#ff7f0e", "proportional": "#7f7f7f"}


# --------------------------------------------------------------------------------------
# small helpers


def _quantiles(samples: np.ndarray, axis: int = 0) -> dict[str, np.ndarray]:
    q = np.nanquantile(samples, [0.05, 0.25, 0.5, 0.75, 0.95], axis=axis)
    return dict(zip(("lo90", "lo50", "median", "hi50", "hi90"), q))


def _budget_grid(budgets: np.ndarray, n_points: int) -> np.ndarray:
    positive = budgets[np.isfinite(budgets) & (budgets > 0)]
    lo, hi = (float(positive.min()), float(positive.max())) if positive.size else (1.0, 1.0)
    return np.geomspace(lo, 2.0 * hi, n_points)


def short_number(value: float) -> str:
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


def to_png(fig: Figure, dpi: int = DPI) -> bytes:
    """The figure as PNG bytes (white background, tight bounding box), as the report embeds it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    return buf.getvalue()


# --------------------------------------------------------------------------------------
# figures


def plot_scaling_curves(draws: LawDraws, grid: xr.Dataset, *, n_points: int = 60, max_draws: int = 1000) -> Figure:
    """Observed loss vs run budget per target, with posterior curves and 50 % / 90 % bands.

    Curves: training only on the target's own source (when the target is also a source)
    and a uniform mixture over all sources, over a log-spaced budget grid from the
    smallest run budget to twice the largest. One axes per posterior target.
    """
    grid = grids.validate_grid(grid)
    sources, targets = list(draws.sources), list(draws.targets)
    if draws.n_draws > max_draws:
        draws = draws.subset(np.linspace(0, draws.n_draws - 1, max_draws).round().astype(int))
    budgets = grids.run_budgets(grid).values
    xs = _budget_grid(budgets, n_points)
    n_src = len(sources)
    # Rows: every source alone at each budget, then the uniform mixture at each budget.
    allocs = np.concatenate([np.kron(np.eye(n_src), xs[:, None]), np.outer(xs, np.full(n_src, 1.0 / n_src))])
    # Past the fit runs' data the bands carry the law's error there, as predict has it.
    log_losses = loss_draws(draws, allocs, log=True).astype(np.float64)
    losses = np.exp(with_extrapolation_error(log_losses, draws, allocs))  # (S, (I+1)N, J)
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
            ax.text(j, i - 0.12, short_number(value), ha="center", va="center", fontsize=10, color=colour, fontweight="bold")
            ax.text(j, i + 0.2, f"[{short_number(lo[i, j])}, {short_number(hi[i, j])}]", ha="center", va="center", fontsize=7.5, color=colour)
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


def allocation_strategies(allocation) -> list[tuple[str, dict]]:
    """(name, {allocation, predicted, objective_value}) for the recommendation and each baseline."""
    out = [("recommended", {"allocation": allocation.get("allocation", {}), "predicted": allocation.get("predicted"),
                            "objective_value": allocation.get("objective_value")})]
    for name, base in (allocation.get("baselines") or {}).items():
        if base and base.get("allocation"):  # a baseline the constraints rule out has none
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
    strategies = allocation_strategies(allocation)
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
                ax_share.annotate(f"{amount:.3g}", (p, 100 * share), xytext=(0, 2), textcoords="offset points",
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


def plot_transfer_graph(
    posterior, table: xr.Dataset | None = None, *, min_share: float = 0.02, data_unit: str | None = None
) -> Figure:
    """The directed transfer graph and an out/in map, as one Figure.

    Left: domains on a circle, an arrow i -> j for every pair whose posterior mean share
    s_ij is at least ``min_share`` (width proportional to it, labelled with it); nodes
    coloured by label (hub, island, neither) and annotated with p_hub and p_island.
    Right: each domain's out-transfer against its in-transfer (posterior mean, central
    interval bars) with the hub threshold and the island box drawn.
    """
    if table is None:
        table = hub_island_table(posterior)
    if data_unit is None:
        data_unit = "data units" if isinstance(posterior, LawDraws) else str(posterior.attrs.get("data_unit", "data units"))
    domains = [str(d) for d in table["domain"].values]
    labels = [str(v) for v in table["label"].values]
    k = len(domains)
    a = table.attrs

    fig = Figure(figsize=(13.0, 6.4), layout="constrained")
    ax_graph, ax_map = fig.subplots(1, 2, width_ratios=[1.15, 1.0])

    # --- the graph ---------------------------------------------------------------------
    angles = np.pi / 2 - 2 * np.pi * np.arange(k) / max(k, 1)
    pos = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    radius = 0.16 if k <= 6 else 0.11
    nodes = {}
    for d, (name, label) in enumerate(zip(domains, labels)):
        circle = Circle(pos[d], radius, facecolor=LABEL_COLOURS[label], edgecolor="black", linewidth=1.2, zorder=3,
                        gid=f"node:{name}")
        ax_graph.add_patch(circle)
        nodes[name] = circle
        row = table.isel(domain=d)
        probs = []
        if np.isfinite(row["p_hub"]):
            probs.append(f"P(hub) {float(row['p_hub']):.2f}")
        if np.isfinite(row["p_island"]):
            probs.append(f"P(island) {float(row['p_island']):.2f}")
        direction = pos[d] / np.linalg.norm(pos[d])
        text_at = pos[d] + direction * (radius + 0.12)
        ha = "center" if abs(direction[0]) < 0.3 else ("left" if direction[0] > 0 else "right")
        va = "center" if abs(direction[1]) < 0.3 else ("bottom" if direction[1] > 0 else "top")
        ax_graph.text(*text_at, f"{name}\n{label}\n" + " · ".join(probs), ha=ha, va=va, fontsize=9, zorder=4,
                      fontweight="bold" if label != "neither" else "normal", linespacing=1.25)

    share = table["share_mean"]
    finite = share.values[np.isfinite(share.values)]
    top = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    n_edges = 0
    for src in table["source"].values:
        for tgt in table["target"].values:
            value = float(share.sel(source=src, target=tgt))
            if not np.isfinite(value) or value < min_share:
                continue
            i, j = domains.index(str(src)), domains.index(str(tgt))
            width = 0.6 + 7.0 * value / top
            arrow = FancyArrowPatch(
                pos[i], pos[j], patchA=nodes[str(src)], patchB=nodes[str(tgt)], shrinkA=3, shrinkB=3,
                connectionstyle="arc3,rad=0.17", arrowstyle="-|>", mutation_scale=10 + 2.2 * width,
                linewidth=width, color=LABEL_COLOURS["hub"] if labels[i] == "hub" else "#555555",
                alpha=0.75, zorder=2, gid=f"edge:{src}->{tgt}",
            )
            ax_graph.add_patch(arrow)
            n_edges += 1
            # A point on the curve, past its middle towards the head (arc3's control point is the
            # chord's midpoint offset by rad x the chord turned clockwise), so that the labels of
            # i -> j and j -> i, and of crossing diagonals, do not sit on one another.
            chord = pos[j] - pos[i]
            control = (pos[i] + pos[j]) / 2 + 0.17 * np.array([chord[1], -chord[0]])
            t = 0.62
            at = (1 - t) ** 2 * pos[i] + 2 * (1 - t) * t * control + t**2 * pos[j]
            ax_graph.text(*at, f"{value:.2g}", fontsize=7.5, ha="center", va="center", zorder=5,
                          bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="none", alpha=0.85))
    ax_graph.set_xlim(-1.75, 1.75)
    ax_graph.set_ylim(-1.7, 1.85)
    ax_graph.set_aspect("equal")
    ax_graph.axis("off")
    ax_graph.set_title(
        f"Transfer graph: arrow i → j = effective-data share s_ij at {a['reference_data']:.3g} {data_unit}\n"
        f"(posterior mean; width ∝ share; shares < {min_share:g} omitted)", fontsize=10.5,
    )
    handles = [Patch(facecolor=LABEL_COLOURS[lab], edgecolor="black", label=lab) for lab in LABELS]
    handles += [Line2D([], [], color="#555555", linewidth=0.6 + 7.0 * v, label=f"share {v * top:.2g}") for v in (0.25, 1.0)]
    ax_graph.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), fontsize=8, frameon=False, ncol=5)
    ax_graph.text(0.99, 0.01, f"{n_edges} arrows", transform=ax_graph.transAxes, ha="right", va="bottom", fontsize=7.5,
                  color="#777777")

    # --- the out/in map ----------------------------------------------------------------
    both = np.isfinite(table["out_mean"].values) & np.isfinite(table["in_mean"].values)
    lows = np.concatenate([table["out_lo"].values[both], table["in_lo"].values[both]])
    highs = np.concatenate([table["out_hi"].values[both], table["in_hi"].values[both]])
    log = lows.size > 0 and np.all(lows > 0)
    tau_h, tau_i = a["hub_threshold"], a["island_threshold"]
    if log:
        lo_lim = min(float(lows.min()), tau_i) / 1.6
        hi_lim = max(float(highs.max()), tau_h) * 1.6
        ax_map.set_xscale("log")
        ax_map.set_yscale("log")
    else:
        lo_lim, hi_lim = 0.0, max(float(highs.max()) if highs.size else 1.0, tau_h) * 1.1
    ax_map.add_patch(Rectangle((lo_lim, lo_lim), tau_i - lo_lim, tau_i - lo_lim, facecolor=LABEL_COLOURS["island"],
                               alpha=0.15, edgecolor="none", zorder=0))
    ax_map.axvspan(tau_h, hi_lim, color=LABEL_COLOURS["hub"], alpha=0.08, zorder=0, linewidth=0)
    ax_map.axvline(tau_h, color=LABEL_COLOURS["hub"], linestyle="--", linewidth=1)
    ax_map.text(tau_h, hi_lim / (1.15 if log else 1),
                f" hub needs out ≥ {tau_h:g}\n (and ≥ {a['hub_ratio']:g}× median of others)",
                fontsize=7.5, va="top", ha="left", color="#a63603")
    ax_map.text(lo_lim * (1.1 if log else 1) + (0 if log else 0.005), tau_i, f"island: out, in < {tau_i:g}", fontsize=7.5,
                va="bottom", ha="left", color="#08519c")
    for d in np.flatnonzero(both):
        row = table.isel(domain=d)
        x, y = float(row["out_mean"]), float(row["in_mean"])
        ax_map.errorbar(x, y, xerr=[[x - float(row["out_lo"])], [float(row["out_hi"]) - x]],
                        yerr=[[y - float(row["in_lo"])], [float(row["in_hi"]) - y]],
                        fmt="o", markersize=9, markerfacecolor=LABEL_COLOURS[labels[d]], markeredgecolor="black",
                        ecolor="#444444", elinewidth=1, capsize=2.5, zorder=3)
    ax_map.set_xlim(lo_lim if log else 0.0, hi_lim)
    ax_map.set_ylim(lo_lim if log else 0.0, hi_lim)
    ax_map.set_xlabel("out-transfer: mean share over targets (how much it helps others)", fontsize=9)
    ax_map.set_ylabel("in-transfer: mean share over sources (how much others help it)", fontsize=9)
    ax_map.set_title(f"Out- vs in-transfer (posterior mean, {100 * a['interval']:g} % intervals)", fontsize=10.5)
    ax_map.tick_params(labelsize=8)
    missing = [domains[d] for d in np.flatnonzero(~both)]
    if missing:
        ax_map.text(0.99, 0.01, "not shown (only a source or only a target): " + ", ".join(missing),
                    transform=ax_map.transAxes, ha="right", va="bottom", fontsize=7.5, color="#777777")
    fig.suptitle("Hubs and islands", fontsize=13)
    # Names go on last, once the layout has fixed where the points land on the page.
    fig.get_layout_engine().execute(fig)
    _label_points(ax_map, [(domains[d], float(table["out_mean"][d]), float(table["in_mean"][d])) for d in np.flatnonzero(both)])
    return fig


def _label_points(ax, points: list[tuple[str, float, float]], fontsize: float = 9) -> None:
    """Name each point beside it, choosing for each label the first of four corners whose
    (estimated) box overlaps no label placed so far."""
    scale = ax.figure.dpi / 72.0
    marker = 5 * scale
    placed = []  # boxes in display coordinates: every marker, then every label placed
    for _, x, y in points:
        px, py = ax.transData.transform((x, y))
        placed.append((px - marker, py - marker, px + marker, py + marker))
    for name, x, y in sorted(points, key=lambda p: (-p[2], p[1])):
        px, py = ax.transData.transform((x, y))
        width, height = 0.62 * fontsize * len(name) * scale, 1.25 * fontsize * scale
        chosen = None
        corners = ((7, 6, "left", "bottom"), (7, -6, "left", "top"), (-7, 6, "right", "bottom"), (-7, -6, "right", "top"),
                   (0, 9, "center", "bottom"), (0, -9, "center", "top"))
        for dx, dy, ha, va in corners:
            x0 = px + dx * scale - {"left": 0.0, "center": width / 2, "right": width}[ha]
            y0 = py + dy * scale - (height if va == "top" else 0)
            box = (x0, y0, x0 + width, y0 + height)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                chosen = (dx, dy, ha, va, box)
                break
        if chosen is None:
            chosen = (7, 6, "left", "bottom", (px, py, px + width, py + height))
        dx, dy, ha, va, box = chosen
        placed.append(box)
        ax.annotate(name, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va, fontsize=fontsize, zorder=4)
