"""Plain-text renderings of results: what the command line prints.

Each section below renders one kind of result; a renderer reads its result as a mapping
(the typed result, or the JSON read back), so the same text comes from either.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import xarray as xr
from rich.table import Table

from bayescale.evaluate.hubs import asymmetric_pairs, hub_island_table
from bayescale.inference.posterior import LawDraws

# ------------------------------------------------------------------------------------ allocation
# Renders bayescale.optimise.results.AllocationResult (or its JSON); what ``bayescale allocate`` prints.


def format_allocation(result: Mapping) -> str:
    """An allocation result as plain-text tables (what ``bayescale allocate`` prints).

    ``result``: an :class:`~bayescale.optimise.results.AllocationResult` or its JSON (a dict).
    """
    lines = []
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    cert = result.get("certificate", {})
    least = result.get("mode") == "min_budget"
    head = (f"status {result['status']} · least budget (cost-weighted spend) {result['spend']:.6g}" if least else
            f"status {result['status']} · {result['objective']} = {result['objective_value']:.6g} "
            f"· budget {result['budget']:g}")
    if cert.get("relative_gap") is not None:
        head += f" · certified gap {cert['relative_gap']:.1e} ({cert['iterations']} SQP iterations, {cert['seconds']:.2f}s)"
    lines.append(head)
    unc = result.get("decision_uncertainty") or {}
    fr = unc.get("fractions") or {}
    integer = (result.get("integer") or {}).get("allocation")
    header = f"{'source':<20} {'amount':>10} {'share':>8}"
    if fr:
        header += f" {'per-draw optimum share (interval)':>34}"
    if integer:
        header += f" {'whole units':>12}"
    lines.append(header)
    for name, amount in result["allocation"].items():
        row = f"{name:<20} {amount:>10.4g} {pct(result['fractions'][name]):>8}"
        if fr:
            f = fr.get(name, {})
            row += f" {pct(f.get('median')):>12} ({pct(f.get('lo'))} .. {pct(f.get('hi'))})".rjust(35)
        if integer:
            row += f" {integer[name]:>12g}"
        lines.append(row)
    if result.get("shadow_price") is not None:
        lines.append(f"shadow price of the budget: {result['shadow_price']:.4g} per unit · "
                     f"binding: {', '.join(result['binding']) or 'none'}")
    elif result.get("binding"):
        lines.append(f"binding: {', '.join(result['binding'])}")
    bases = dict(result.get("baselines") or {})
    for key, label in (("temperature_sampling", "temperature"), ("transfer_unaware", "transfer_unaware"),
                       ("transfer_zeroed", "transfer_zeroed")):
        if result.get(key):
            bases[label] = result[key]
    strategies = [("recommended", {"predicted": result["predicted"], "objective_value": result["objective_value"]})]
    # the ablation gets no column of its own beside the fair transfer-unaware optimum (only its line below)
    strategies += [(k, b) for k, b in bases.items() if b.get("predicted")
                   and not (k == "transfer_zeroed" and "transfer_unaware" in bases)]
    if strategies:
        lines.append("")
        lines.append("predicted loss per target: mean (interval)")
        lines.append(f"{'target':<20} " + " ".join(f"{k:>24}" for k, _ in strategies))
        for t in result["predicted"]:
            cells = []
            for _, s in strategies:
                p = s["predicted"][t]
                cells.append(f"{p['mean']:.4g} ({p['lo']:.3g}..{p['hi']:.3g})".rjust(24))
            lines.append(f"{t:<20} " + " ".join(cells))
        lines.append(f"{'objective':<20} " + " ".join(f"{s['objective_value']:>24.5g}" for _, s in strategies))
    for k, b in bases.items():
        red = b.get("reducible_loss_reduction")
        if least and b.get("spend"):
            lines.append(f"vs {k:<17} needs {b['spend']:.5g} to meet the chance constraints; the recommendation "
                         f"saves {100 * (1 - result['spend'] / b['spend']):.1f}%")
        elif red and red.get("of_means") is not None:
            extra = "" if b.get("feasible", True) else f" [breaks {', '.join(b.get('violations', []))}]"
            change = red["of_means"]
            word = f"{100 * change:.1f}% lower" if change >= 0 else f"{-100 * change:.1f}% higher"
            lines.append(f"vs {k:<17} weighted reducible loss {word} (reduction per draw {100 * red['lo']:.1f}% .. "
                         f"{100 * red['hi']:.1f}%, P(better) {red['probability_better']:.2f}){extra}")
        elif b.get("note"):
            lines.append(f"vs {k:<17} {b['note']}")
    if result.get("value_of_transfer"):
        lines.append(transfer_baseline_line(result))
    if result.get("chance"):
        on = result.get("chance_on") or "expected"
        lines.append("chance constraints on " + (
            "the loss one run will observe (the law's loss and one run's noise; held-out draws with fresh noise)"
            if on == "predictive" else "the law's expected loss (run noise ignored)"))
    for ch in result.get("chance") or []:
        held, se = ch["achieved_held_out"], ch.get("held_out_se")
        shown = "-" if held is None else f"{held:.3f}" + ("" if se is None else f" ± {se:.3f}")
        lines.append(f"chance {ch['constraint']}: P on optimisation draws {ch['achieved_optimisation_draws']:.3f}, "
                     f"on {ch['held_out_draws']} held-out draws {shown}"
                     + ("" if ch["met_held_out"] is None else (" (met)" if ch["met_held_out"] else " (NOT met)")))
    for entry in result.get("path") or []:
        if entry.get("status") == "infeasible":
            lines.append(f"budget {entry['budget']:>10g}: infeasible ({entry['message']})")
            continue
        shares = " ".join(f"{k}={pct(v)}" for k, v in entry["fractions"].items())
        lines.append(f"budget {entry['budget']:>10g}: {result['objective']} {entry['objective_value']:.5g} · {shares}")
    for note in result.get("solver_notes") or []:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def format_proposal(result: Mapping) -> str:
    """A proposal (``bayescale propose``) as plain text: the batch in the order chosen, what each run
    is expected to buy and why. ``result``: a :class:`~bayescale.optimise.results.ProposalResult` or its JSON."""
    evoi = result["criterion"] == "evoi"
    what = (f"expected improvement of {result['objective']} at budget {result['budget']:g}" if evoi else
            f"expected fall of the posterior variance of {result['objective']} at budget {result['budget']:g}")
    lines = [f"{len(result['batch'])} runs to train next, {result['cost']:g} {result['cost_unit']} in all: {what} "
             f"{result['expected_gain']:.3g} ± {result['expected_gain_se']:.2g} "
             f"(from {result['value_now']:.6g}; {result['candidates']} candidates, {result['decisions']} decisions)",
             f"{'#':>2} {'run':<28} {'data':<34} {'cost':>6} {'gain':>10} {'± se':>9} {'gain/cost':>10}  shrinks most (sd after / before)"]
    for k, run in enumerate(result["batch"], start=1):
        data = ", ".join(f"{s} {a:g}" for s, a in run["amounts"].items())
        why = ", ".join(f"{name} {ratio:.2f}" for name, ratio in run["informs"].items())
        lines.append(f"{k:>2} {run['name']:<28} {data:<34} {run['cost']:>6g} {run['gain']:>10.3g} {run['gain_se']:>9.2g} "
                     f"{run['gain_per_cost']:>10.3g}  {why}")
    lines.append(f"posterior after each outcome: {result['method']}; {result['effective_draws']:.0f} effective draws "
                 f"of {result['evaluation_draws']} on average over {result['outcomes']} simulated outcomes")
    lines += [f"warning: {note}" for note in result.get("notes", [])]
    return "\n".join(lines)


def transfer_baseline_line(result: Mapping) -> str:
    """Which comparison stands for ignoring transfer in ``value_of_transfer``, and what it is."""
    value = result.get("value_of_transfer") or {}
    if value.get("transfer_baseline") == "transfer_unaware":
        return ("ignoring transfer: transfer_unaware is the optimum under the independent law fitted to the same grid, "
                "judged under the transfer posterior; transfer_zeroed is an ablation (T = 0 inside the transfer posterior)")
    return ("ignoring transfer: only the ablation transfer_zeroed (T = 0 inside the transfer posterior, E, A, alpha as "
            "fitted with transfer), not what a planner without transfer modelling would choose; give the independent law "
            "fitted to the same grid "
            "(--unaware FIT.nc) for the fair transfer_unaware baseline")


def value_of_transfer_text(allocation: Mapping) -> str:
    """One line: the headline reduction against ignoring transfer, and which baseline that was (what the demo prints)."""
    value = allocation.get("value_of_transfer") or {}
    key = value.get("transfer_baseline")
    if key is None:
        return "value of transfer: not computed (no baselines)"
    red = value.get(f"vs_{key}") or {}
    if key == "transfer_unaware":
        what = "the optimum under independent per-domain laws (the independent law fitted to the same grid)"
    else:
        what = "the ablation T = 0 inside the transfer posterior (no independent-law fit given: not the fair figure)"
    saving = value.get(f"budget_saving_vs_{key}")
    if saving is not None:
        return f"value of transfer: {100 * saving:.1f}% less budget than {what}"
    if red.get("of_means") is None:
        base = allocation.get(key) or {}
        return f"value of transfer vs {what}: {base.get('note') or 'no figure'}"
    change = red["of_means"]
    word = f"{_percent(change)} lower" if change >= 0 else f"{_percent(-change)} higher"
    line = (f"value of transfer: weighted reducible loss {word} than {what} "
            f"(per draw {_percent(red['lo'])} .. {_percent(red['hi'])}, P(better) {red['probability_better']:.2f})")
    zeroed = ((allocation.get("transfer_zeroed") or {}).get("reducible_loss_reduction") or {}).get("of_means")
    if key == "transfer_unaware" and zeroed is not None:
        line += f"; the ablation T = 0 inside the transfer posterior would say {_percent(zeroed)}"
    return line


def _percent(share: float) -> str:
    """A share as a percentage with enough digits to tell a small figure from none: 12.3%, 0.31%, 0.0042%."""
    value = 100 * share
    return f"{value:.1f}%" if abs(value) >= 1 or value == 0 else f"{value:.2g}%"


def allocation_table(allocation: Mapping, budget: float, unit: str, objective: str) -> Table:
    """The recommended shares beside each baseline's, and their objective values (what ``bayescale demo`` prints)."""
    table = Table(title=f"allocation of {budget:g} {unit} ({objective})")
    table.add_column("source")
    table.add_column("recommended", justify="right")
    for name in allocation["baselines"]:
        table.add_column(name, justify="right")
    for src in allocation["allocation"]:
        row = [src, f"{allocation['fractions'][src]:.1%}"]
        for base in allocation["baselines"].values():
            amount = base["allocation"][src]
            row.append(f"{amount / budget:.1%}")
        table.add_row(*row)
    table.add_row(
        "objective", f"{allocation['objective_value']:.4g}", *[f"{b['objective_value']:.4g}" for b in allocation["baselines"].values()]
    )
    return table


# ------------------------------------------------------------------------------------ end of allocation


# ------------------------------------------------------------------------------------ grid
# What ``bayescale grid info`` prints: bayescale.data.grid.grid_summary as lines.


def format_grid_summary(summary: dict) -> str:
    """A few lines of text for a person, from :func:`grid_summary`."""
    unit = summary["data_unit"]
    splits = summary["splits"]
    cells = summary["runs"] * len(summary["targets"])
    lines = [
        f"runs: {summary['runs']} ({splits['fit']} fit, {splits['holdout']} holdout); "
        f"seeds: {short_list([str(s) for s in summary['seeds']])}",
        f"sources ({len(summary['sources'])}): {short_list(summary['sources'])}",
        f"targets ({len(summary['targets'])}): {short_list(summary['targets'])}",
        f"budgets ({len(summary['budgets'])} distinct, {unit}): {short_list([f'{b:g}' for b in summary['budgets']])}",
    ]
    ranges = [
        f"{split} {lo:g} to {hi:g}"
        for split, r in summary["budget_range"].items()
        if r is not None
        for lo, hi in [r]
    ]
    lines.append(f"budget range: {'; '.join(ranges)} {unit}")
    lines.append(f"loss: {summary['loss_name']}; {summary['missing_losses']} of {cells} cells not evaluated")
    return "\n".join(lines)


def short_list(items: list[str], limit: int = 8) -> str:
    if len(items) <= limit:
        return ", ".join(items)
    return ", ".join(items[: limit - 2]) + f", ... ({len(items) - limit + 1} more), " + items[-1]


# ------------------------------------------------------------------------------------ sampler
# One line of sampler diagnostics (bayescale.inference.posterior.diagnostics).


def format_rising(row: dict, unit: str = "") -> str:
    """One target whose loss rises with more data (:func:`bayescale.evaluate.check.rising_losses`) in one line."""
    mixture = ", ".join(f"{k} {v:.0%}" for k, v in row["mixture"].items())
    return (f"{row['target']}: loss rises with more data ({mixture}): {row['rise']:+.1%} at {row['largest_budget']:g} {unit} over "
            f"its lowest at {row['lowest_at_budget']:g} (noise {row['noise']:.1%}); no monotone law predicts this, so its "
            f"held-out cells cannot be covered as promised").replace("  ", " ")


def format_extrapolation(record: dict, unit: str = "") -> str:
    """The calibration of the law's error past its data (a fit's ``extrapolation`` attr) in one line."""
    if record.get("kind") != "leave-future-out":
        return record.get("kind", "not calibrated")
    return (f"slope error s = {record['scale_median']:.3f} [{record['scale_q05']:.3f}, {record['scale_q95']:.3f}] "
            f"(fitted up to {record['fitted_up_to_budget']:g} {unit}, scored on {record['scored_runs']} larger runs); "
            f"predictions past the largest fitted total widen by s per e-fold of data").replace("  ", " ")


def _duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    return f"{minutes:.0f} min" if minutes < 90 else f"{minutes / 60:.1f} h"


def format_sampling_estimate(estimate: Mapping) -> str:
    """One line said between NUTS's warm-up and its draws: how long each took / will take.

    ``estimate``: :func:`bayescale.inference.sampling.sampling_estimate`'s dict, with ``fit`` (which fit)."""
    which = f"{estimate['fit']}: " if estimate.get("fit") else ""
    return (f"{which}warm-up took {_duration(estimate['warmup_seconds'])}; {estimate['draws']} draws per chain: about "
            f"{_duration(estimate['estimated_seconds'])} more ({estimate['steps_per_draw']:.0f} leapfrog steps per draw)")


def format_diagnostics(diag: dict) -> str:
    """The diagnostics of :func:`~bayescale.inference.posterior.diagnostics` in one line: for NUTS the
    worst r-hat and bulk ESS with the variable entry where each is worst; for SVI the Pareto k-hat."""
    if diag.get("approximate"):
        khat, limit = diag.get("psis_khat", float("nan")), diag.get("khat_limit", 0.7)
        if khat is None or not khat == khat:  # NaN: a posterior written before k-hat was computed
            verdict = "no PSIS k-hat stored, so nothing vouches for it"
        elif khat <= limit:
            verdict = f"PSIS k-hat {khat:.2f} <= {limit:g}: the guide is close enough to the posterior to use"
        else:
            verdict = f"PSIS k-hat {khat:.2f} > {limit:g}: the guide misses the posterior; refit with NUTS"
        return (f"approximate posterior ({diag['method']}): {diag['draws']} independent draws; {verdict} "
                "— check against NUTS before trusting intervals")
    where = lambda key: f" at {diag[key]}" if diag.get(key) else ""  # noqa: E731
    return (
        f"max r-hat {diag['max_rhat']:.3f}{where('worst_rhat_entry')} · min bulk ESS {diag['min_ess_bulk']:.0f}"
        f"{where('worst_ess_entry')} · min tail ESS {diag['min_ess_tail']:.0f} · divergences {diag['divergences']}"
        + (f" · min E-BFMI {diag['min_bfmi']:.2f}" if "min_bfmi" in diag else "")
        + f" ({diag['chains']} chains, {diag['draws']} draws"
        + (f", {len(diag['variables'])} variables incl. mu_*/tau_*" if diag.get("variables") else "")
        + ")"
    )


# ------------------------------------------------------------------------------------ check
# The held-out scores in one line, and the per-law extrapolation table of ``bayescale check --laws``.


def format_check(scores: Mapping) -> str:
    """Held-out scores (:class:`~bayescale.evaluate.results.CheckResult` or its JSON) in one line."""
    return (f"held-out check: {scores['n']} cells · Pearson r {scores['pearson_r']:.4f} · median |rel. error| "
            f"{scores['median_abs_rel_error']:.2%} · coverage 50% {scores['coverage_50']:.0%} · 90% {scores['coverage_90']:.0%}")


def format_law_table(rows: list[dict]) -> str:
    """The per-law extrapolation table as aligned text, best (lowest median |rel. error|) marked."""
    best = min(range(len(rows)), key=lambda i: rows[i]["median_abs_rel_error"])
    lines = [f"{'law':<24} {'cells':>5} {'r':>7} {'med|err|':>9} {'cov50':>6} {'cov90':>6} {'calibration':<16} {'div':>4} {'r-hat':>6}"]
    for i, row in enumerate(rows):
        name = row["law"] + ("" if row["likelihood"] == "normal" else f":{row['likelihood']}") + ("  *" if i == best else "")
        lines.append(
            f"{name:<24} {row['n']:>5d} {row['pearson_r']:>7.4f} {row['median_abs_rel_error']:>9.2%} {row['coverage_50']:>6.0%} "
            f"{row['coverage_90']:>6.0%} {row['calibration']['verdict']:<16} {row['divergences']:>4d} {row['max_rhat']:>6.3f}"
        )
    lines.append("* lowest median |relative error| on the held-out runs; trust its intervals only if calibration says ok")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ hubs
# What ``bayescale hubs`` prints: bayescale.evaluate.hubs.hub_island_table as a table.


def probability_text(value) -> str:
    return "n/a" if not np.isfinite(value) else f"{float(value):.2f}"


def interval_text(mean, lo, hi) -> str:
    if not np.isfinite(mean):
        return "n/a"
    return f"{mean:.3g} [{lo:.3g}, {hi:.3g}]"


def hubs_command_output(posterior, *, data_unit: str | None = None, table: xr.Dataset | None = None, **kwargs) -> str:
    """A short text table of hubs and islands for the command line (``bayescale hubs``).

    ``posterior``: LawDraws or a posterior DataTree (its ``data_unit`` attr names the data
    unit); ``table``: a precomputed :func:`hub_island_table` (else computed with ``kwargs``).
    """
    if data_unit is None:
        data_unit = "units" if isinstance(posterior, LawDraws) else str(posterior.attrs.get("data_unit", "units"))
    if table is None:
        table = hub_island_table(posterior, **kwargs)
    a = table.attrs
    rows = [("domain", "out-transfer (helps others)", "in-transfer (helped by others)", "P(hub)", "P(island)", "label",
             "exponent alpha")]
    for k, name in enumerate(table["domain"].values):
        r = table.isel(domain=k)
        rows.append((
            str(name),
            interval_text(float(r["out_mean"]), float(r["out_lo"]), float(r["out_hi"])),
            interval_text(float(r["in_mean"]), float(r["in_lo"]), float(r["in_hi"])),
            probability_text(r["p_hub"].values), probability_text(r["p_island"].values), str(r["label"].values),
            interval_text(float(r["alpha_median"]), float(r["alpha_lo"]), float(r["alpha_hi"])),
        ))
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = [
        f"Hubs and islands ({a['law']} law, {a['n_draws']} draws). Transfer = effective-data share at "
        f"{a['reference_data']:.4g} {data_unit} ({a['reference']:g} x D0):",
        "what a unit of the source's data is worth in units of the target's own data; "
        f"mean [{100 * a['interval']:g} % interval]; exponent alpha of L = E + A (x + x0)^-alpha: median [{100 * a['interval']:g} % interval].",
    ]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.append(
        f"hub: out-transfer >= {a['hub_threshold']:g} and >= {a['hub_ratio']:g} x the median of the other domains; "
        f"island: out- and in-transfer < {a['island_threshold']:g}; a label needs P >= 0.5."
    )
    pairs = asymmetric_pairs(table)
    if pairs:
        lines.append(f"Asymmetry, clearest first: P(i -> j gives more than j -> i), ratio of the shares median "
                     f"[{100 * a['interval']:g} % interval]:")
        rows = [(f"{pair['source']} -> {pair['target']}", f"P = {pair['p']:.2f}",
                 "ratio " + interval_text(*(math.nan if pair["ratio"][k] is None else pair["ratio"][k] for k in ("median", "lo", "hi"))))
                for pair in pairs]
        widths = [max(len(row[c]) for row in rows) for c in range(3)]
        lines += ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ ladders
# Own-domain ladders against the baseline (bayescale.data.ladders).


def _cell(value: float, spread: float, seeds: int, fmt: str) -> str:
    if seeds == 0:
        return ""
    text = format(value, fmt) if math.isfinite(value) else "n/a"
    return text + (f" ± {100 * spread:.1f} %" if math.isfinite(spread) else f" ({seeds} seed)")


def format_ladders(ladders, goals: Mapping) -> str:
    """A table of loss / baseline per domain and budget (seed mean ± relative spread), and the goals met."""
    budgets = [f"{b:g}" for b in ladders["budget"].values]
    g = goals["goals"]
    has_baseline = bool(np.isfinite(ladders["ratio"].values).any())
    shown, fmt = ("ratio", ".3f") if has_baseline else ("loss", ".4g")
    what = "loss / baseline" if has_baseline else "loss (the grid has no baseline_loss)"
    lines = [
        f"own-domain ladders: {what}, seed mean ± seed-to-seed sd (in {ladders.attrs.get('data_unit') or 'data units'})",
        "| domain | " + " | ".join(budgets) + " | monotone | goals met |",
        "|---|" + "---:|" * len(budgets) + "---|---|",
    ]
    for domain in ladders["domain"].values:
        row = ladders.sel(domain=domain)
        cells = [_cell(float(r), float(s), int(n), fmt) for r, s, n in zip(row[shown].values, row["spread"].values, row["seeds"].values)]
        met = goals["domains"][str(domain)]["met"]
        missed = [k for k, ok in met.items() if not ok]
        lines.append(f"| {domain} | " + " | ".join(cells) + f" | {'yes' if bool(row['monotone']) else 'no'} | "
                     + ("all" if not missed else "not " + ", ".join(missed)) + " |")
    lines.append(f"goals: top rung <= {g['top_ratio']:g} of the baseline, seed spread <= {100 * g['max_spread']:g} %, "
                 f"monotone{'' if g['monotone'] else ' (not required)'}: {'all met' if goals['all_met'] else 'not all met'}")
    return "\n".join(lines)


def format_probe_comparison(rows) -> str:
    """Recipe probes side by side: per probe and domain, the top rung's ratio, the worst spread, monotone."""
    domains: list[str] = []
    for _, ladders, _ in rows:
        domains += [str(d) for d in ladders["domain"].values if str(d) not in domains]
    lines = ["top rung's loss / baseline (worst seed spread; * = not monotone)",
             "| probe | " + " | ".join(domains) + " | goals |", "|---|" + "---:|" * len(domains) + "---|"]
    for name, _, goals in rows:
        cells = []
        for d in domains:
            v = goals["domains"].get(d)
            if v is None:
                cells.append("")
                continue
            spread = f"{100 * v['worst_spread']:.1f} %" if math.isfinite(v["worst_spread"]) else "1 seed"
            cells.append(f"{v['top_ratio']:.3f} @ {v['top_budget']:g} ({spread}){'' if v['monotone'] else ' *'}")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {'all met' if goals['all_met'] else 'not met'} |")
    return "\n".join(lines)
