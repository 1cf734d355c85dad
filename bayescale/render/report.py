"""The self-contained HTML report of a fit, an allocation and a held-out check.

:func:`write_report` computes the view model (:func:`build_view`: plain dicts and lists of
already formatted strings, no markup), renders each figure of :mod:`bayescale.render.figures`
to a PNG file, renders the page from the Jinja2 templates of :mod:`bayescale.render.html`
(autoescaped: every text of the grid, the posterior or the allocation reaches the page as text)
with every figure also embedded as base64, so the page opens offline, and writes it all atomically.

The page reads as a person asks: first the answer (the recommended allocation, its predicted
gain over the baselines, the calibration verdict and the sampler's health), then the details
behind it (figures and tables), and last the grid's attributes and provenance.

The module is long because it holds the view model of every section (one function each:
:func:`recommendation_view`, :func:`trust_view`, :func:`allocation_view`, :func:`holdout_view`,
:func:`hubs_view`, :func:`diagnostics_view`, :func:`grid_view`) and the figure captions; the
markup is in the templates, the drawing in :mod:`bayescale.render.figures`.
"""

from __future__ import annotations

import base64
import json
import math
import os
from pathlib import Path

import numpy as np
import xarray as xr

from bayescale._files import atomic_path, write_text_atomic
from bayescale.data import grid as grids
from bayescale.evaluate.check import CALIBRATION_ALPHA, calibration_verdict, score_by_target
from bayescale.evaluate.hubs import summary_from_table
from bayescale.inference.posterior import LawDraws, law_draws
from bayescale.render import figures as figs
from bayescale.render.html import render_report
from bayescale.render.text import format_grid_summary

# The report's figures in the order the page shows them.
FIGURE_NAMES = ("allocation", "allocation_path", "holdout", "calibration", "scaling_curves", "transfer_matrix", "transfer_graph")
RHAT_MAX, ESS_MIN, BFMI_MIN = 1.01, 400, 0.3
MAX_ATTRIBUTE_CHARS = 300

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
    "in-transfer (how much others help it), posterior means with intervals; the rules are in the list above.",
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
ALTS = {
    "scaling_curves": "scaling curves per target",
    "transfer_matrix": "posterior transfer matrix",
    "transfer_graph": "transfer graph with hubs and islands",
    "allocation": "recommended allocation vs baselines",
    "allocation_path": "allocation path over budgets",
    "holdout": "held-out predictions vs observations",
    "calibration": "calibration: PIT histogram and coverage vs nominal",
}
# How the answer names each comparison of `allocate` (key in the allocation, label).
COMPARISONS = (
    ("uniform", "the uniform mixture (equal amounts of every source)"),
    ("proportional", "the proportional mixture (amounts in proportion to the data available)"),
    ("temperature", "temperature sampling"),
    ("transfer_unaware", "the optimum that ignores transfer between domains (independent per-domain scaling laws "
                         "fitted to the same grid)"),
    ("transfer_zeroed", "the ablation that switches transfer off inside this posterior (T = 0, the rest as fitted "
                        "with transfer)"),
)


# --------------------------------------------------------------------------------------
# formatting: every number reaches the template as a string


def _fmt(value, spec: str = ".4g") -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(value):
        return "n/a"
    return format(value, spec)


def _pct(value, spec: str = ".1f") -> str:
    """A fraction as a percentage: 0.1234 -> '12.3 %'."""
    if value is None:
        return "n/a"
    return _fmt(100 * float(value), spec) + " %"


def short_percent(value) -> str:
    """A percentage with enough digits to tell a small gain from none: 12 %, 4.4 %, 0.031 %."""
    if value is None or not math.isfinite(float(value)):
        return "n/a"
    size = abs(100 * float(value))
    spec = ".0f" if size >= 10 else ".1f" if size >= 1 else ".2f" if size >= 0.1 else ".2g"
    return _fmt(100 * float(value), spec) + "\u00a0%"  # no line break between a number and its unit


def cell(text, cls: str = "", *, sub: str = "", strong: bool = False, pairs=()) -> dict:
    """One table cell: its text, a css class ('bad', 'good', 'text'), a second line in grey,
    bold, or a list of (key, value) pairs shown as a small definition list."""
    return {"text": str(text), "cls": cls, "sub": str(sub), "strong": bool(strong), "pairs": [(str(k), str(v)) for k, v in pairs]}


def table(header, rows, *, text_columns=()) -> dict:
    """A table for the template: header strings, rows of :func:`cell` dicts (plain strings allowed).

    The first column is names (left-aligned), the others numbers (right-aligned) except
    ``text_columns``, whose header is left-aligned like their text cells."""
    head = [{"text": str(h), "cls": "name" if k == 0 else ("text" if k in text_columns else "")} for k, h in enumerate(header)]
    return {"header": head, "rows": [[c if isinstance(c, dict) else cell(c) for c in row] for row in rows]}


def _sentence(text: str) -> str:
    """'held-out intervals are ...' -> 'Held-out intervals are ....'"""
    text = str(text).strip()
    return (text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")) if text else text


def _signed_class(red: dict) -> str:
    """'good' when the whole interval says the recommendation is better, 'bad' when it says worse."""
    if red.get("lo") is not None and red["lo"] > 0:
        return "good"
    if red.get("hi") is not None and red["hi"] < 0:
        return "bad"
    return ""


def fact(text: str, value: str = "", tail: str = "") -> dict:
    """A line of a list: text, a value in bold, more text."""
    return {"text": text, "value": value, "tail": tail}


def _absent(note: str) -> dict:
    return {"present": False, "note": note}


# --------------------------------------------------------------------------------------
# the answer


def _strategy_label(key: str, allocation) -> str:
    if key == "temperature":
        temperature = (allocation.get("temperature_sampling") or {}).get("temperature")
        return "temperature sampling" + (f" (T = {_fmt(temperature, 'g')})" if temperature is not None else "")
    return dict(COMPARISONS).get(key, f"the {key} allocation")


def _comparison(allocation, key: str):
    if key in ("uniform", "proportional"):
        return (allocation.get("baselines") or {}).get(key)
    return allocation.get({"temperature": "temperature_sampling"}.get(key, key))


def recommendation_view(allocation, unit: str) -> dict:
    """The answer: how to spend the budget, and what it buys over the baselines."""
    if allocation is None:
        return _absent("No allocation was given, so there is no recommendation to show.")
    amounts = {str(s): float(v) for s, v in (allocation.get("allocation") or {}).items()}
    total = sum(amounts.values())
    fractions = allocation.get("fractions") or {}
    rows = [[cell(s), cell(_fmt(a, ".2f")), cell(_pct(fractions.get(s, a / total if total > 0 else 0.0)))]
            for s, a in amounts.items()]
    rows.append([cell("total", strong=True), cell(_fmt(total, ".2f"), strong=True), cell(_pct(1.0 if total > 0 else 0.0))])
    status = str(allocation.get("status", "?"))
    budget = allocation.get("budget")
    lead = (f"Spend the budget of {_fmt(budget, 'g')} {unit}" if allocation.get("mode") != "min_budget" and budget is not None
            else f"The smallest spend that meets the constraints, {_fmt(allocation.get('spend'), '.4g')} {unit},")
    lead += f" as follows (objective: {allocation.get('objective', '?')}):"
    status_note = "" if status == "optimal" else (
        f"The solver reports status {status}: the allocation meets the constraints but may not be optimal "
        "(see the solver notes under Allocation details).")

    level = allocation.get("interval")
    interval_name = f"{_fmt(100 * level, 'g')} % interval" if level is not None else "credible interval"
    headline, in_headline = [], set()
    value = allocation.get("value_of_transfer") or {}
    reference = value.get("reference")
    # ignoring transfer: the fair optimum under the independent law, or (without one) the ablation, said as such
    transfer = value.get("transfer_baseline") or "transfer_unaware"
    suffix = {"transfer_unaware": " (the value of modelling transfer)",
              "transfer_zeroed": " (an ablation, not the fair figure: no independent-law fit was given)"}
    for key in ([reference] if reference else []) + [transfer]:
        red = value.get(f"vs_{key}") or {}
        if red.get("mean") is None:
            continue
        in_headline.add(key)
        label = _strategy_label(key, allocation) + suffix.get(key, "")
        sign, word = (1, "lower") if red["mean"] >= 0 else (-1, "higher")
        lo, hi = sorted((sign * red["lo"], sign * red["hi"]))
        headline.append(fact(f"Against {label}: the weighted reducible loss is predicted", f"{short_percent(sign * red['mean'])} {word}",
                             f" [{short_percent(lo)}, {short_percent(hi)}]; the recommendation is better in "
                             f"{_pct(red.get('probability_better'), '.0f')} of posterior draws."))
    for key in ([reference] if reference else []) + [transfer]:
        saving = value.get(f"budget_saving_vs_{key}")
        if saving is not None:
            headline.append(fact(f"Against {_strategy_label(key, allocation)}: needs", f"{short_percent(saving)} less data",
                                 " to meet the same constraints."))
    others = []
    for key, _ in COMPARISONS:
        red = ((_comparison(allocation, key) or {}).get("reducible_loss_reduction")) or {}
        if key in in_headline or red.get("mean") is None:
            continue
        p_better = red.get("probability_better")
        others.append([cell(_strategy_label(key, allocation)), cell(short_percent(red["mean"]), _signed_class(red)),
                       cell(f"[{short_percent(red['lo'])}, {short_percent(red['hi'])}]"), cell(_pct(p_better, ".0f"))])
    return {
        "present": True,
        "lead": lead,
        "status_note": status_note,
        "table": table(["source", f"amount ({unit})", "share"], rows),
        "headline": headline,
        "others": table(["against", "reduction", interval_name, "P(recommendation better)"], others) if others else None,
    }


def _diagnostic_checks(diag: dict) -> list[dict]:
    """Each convergence check: label, formatted value, what is wanted, and whether it failed."""
    approximate = bool(diag.get("approximate"))
    checks = []
    rhat = diag.get("max_rhat", float("nan"))
    if not (approximate and not math.isfinite(float(rhat))):
        checks.append({"label": "max r-hat", "value": _fmt(rhat, ".3f"), "wanted": f"≤ {RHAT_MAX}", "bad": not (rhat <= RHAT_MAX)})
    for key, label in (("min_ess_bulk", "min bulk ESS"), ("min_ess_tail", "min tail ESS")):
        if key in diag:
            v = diag[key]
            checks.append({"label": label, "value": _fmt(v, ".0f"), "wanted": f"≥ {ESS_MIN}", "bad": not (v >= ESS_MIN)})
    div = int(diag.get("divergences", 0))
    checks.append({"label": "divergences", "value": str(div), "wanted": "0", "bad": div > 0})
    if "min_bfmi" in diag:
        v = diag["min_bfmi"]
        checks.append({"label": "min E-BFMI", "value": _fmt(v, ".2f"), "wanted": f"≥ {BFMI_MIN}", "bad": not (v >= BFMI_MIN)})
    return checks


def _diagnostics_ok(diag: dict, checks: list[dict]) -> bool:
    return bool(diag.get("ok", True)) and not any(c["bad"] for c in checks)


def _fingerprint_warning(grid: xr.Dataset, idata) -> str:
    fingerprint = (getattr(idata, "attrs", {}) or {}).get("grid_fingerprint")
    if not fingerprint:
        return ""
    try:
        mine = grids.grid_fingerprint(grid)
    except Exception:  # pragma: no cover - a grid the fingerprint cannot read
        return ""
    if mine == str(fingerprint):
        return ""
    return (f"This grid (fingerprint {mine}) is not the grid the posterior was fitted to ({fingerprint}): "
            "the observed points in the figures may not be the fitted data.")


def trust_view(scores: dict | None, diag: dict | None, fingerprint_warning: str) -> dict:
    """How far to trust the answer: the calibration verdict of the held-out check and the sampler's health."""
    if scores is None:
        calibration = {"cls": "note", "text": "No held-out check was given, so the law's extrapolation is not judged here."}
    else:
        verdict = scores.get("calibration")
        if verdict is None:
            try:
                verdict = calibration_verdict(scores)
            except (KeyError, ValueError, ZeroDivisionError):  # scores without coverage: nothing to judge
                verdict = None
        if verdict is None:
            calibration = {"cls": "note", "text": f"Held-out check on {scores.get('n', '?')} cells: no calibration verdict."}
        else:
            ok = verdict.get("verdict") == "ok"
            text = _sentence(verdict.get("message", ""))
            if verdict.get("verdict") == "over-confident":
                text += " The intervals of the predicted gain above come from the same posterior: read them as too narrow too."
            calibration = {"cls": "ok" if ok else "warn", "text": text}
    if diag is None:
        sampler = {"cls": "note", "text": "No diagnostics were given.", "lines": []}
    else:
        checks = _diagnostic_checks(diag)
        ok = _diagnostics_ok(diag, checks)
        method = str(diag.get("method", "nuts"))
        if diag.get("approximate"):
            text = (f"The posterior is an approximation ({method}): r-hat does not apply, "
                    "so treat its intervals as rough.")
        elif ok:
            text = "The sampler converged by these checks:"
        else:
            text = "Some convergence checks failed: treat the posterior with suspicion (sample longer or with a higher target acceptance):"
        lines = [{"text": f"{c['label']} {c['value']} (wanted {c['wanted']})", "cls": "bad" if c["bad"] else "good"}
                 for c in checks]
        sampler = {"cls": "ok" if ok and not diag.get("approximate") else "warn", "text": text, "lines": lines}
    return {"calibration": calibration, "sampler": sampler, "fingerprint": fingerprint_warning}


# --------------------------------------------------------------------------------------
# the details


def allocation_view(allocation, unit: str) -> dict:
    """Every strategy side by side, the solver's facts, predicted losses, how sure the shares are, the path."""
    if allocation is None:
        return _absent("No allocation was given, so this section is omitted.")
    strategies = figs.allocation_strategies(allocation)
    sources = list(allocation.get("allocation", {}))
    status = str(allocation.get("status", "?"))
    banner = {
        "cls": "ok" if status == "optimal" else "warn",
        "text": f"Status {status}; objective {allocation.get('objective', '?')}; budget {_fmt(allocation.get('budget'), 'g')} "
                f"{unit}; solver {allocation.get('solver', '?')}"
                + (f" on {allocation['draws_used']} posterior draws" if "draws_used" in allocation else "") + ".",
    }
    # One column per strategy, amount over share, so five strategies fit the page.
    rows = []
    for s in sources:
        row = [cell(s)]
        for _, strat in strategies:
            amounts = strat["allocation"]
            total = sum(float(v) for v in amounts.values())
            amount = float(amounts.get(s, 0.0))
            row.append(cell(_fmt(amount, ".2f"), sub=_pct(amount / total if total > 0 else 0.0)))
        rows.append(row)
    rows.append([cell("total", strong=True)]
                + [cell(_fmt(sum(float(v) for v in strat["allocation"].values()), ".2f")) for _, strat in strategies])
    rows.append([cell("objective value", strong=True)]
                + [cell(_fmt(strat.get("objective_value"), ".5g"), "good" if name == "recommended" else "")
                   for name, strat in strategies])
    strategy_table = table([f"source: amount ({unit}) and share"] + [name for name, _ in strategies], rows)

    facts = []
    shadow = allocation.get("shadow_price")
    if shadow is not None:
        facts.append(fact("shadow price of the budget:", _fmt(shadow, ".4g"),
                          f" (change of the objective per extra unit of data, in {unit}; negative means more data "
                          "still helps, 0 if the budget is not binding)"))
    if allocation.get("binding"):
        facts.append(fact("binding constraints: " + ", ".join(map(str, allocation["binding"]))))
    for note in allocation.get("solver_notes") or []:
        facts.append(fact(f"solver note: {note}"))
    certificate = allocation.get("certificate") or {}
    if certificate.get("relative_gap") is not None:
        facts.append(fact(f"optimality certificate: relative gap {_fmt(certificate['relative_gap'], '.1e')} "
                          "between the objective and an independent lower bound"))

    predicted = None
    with_pred = [(name, strat) for name, strat in strategies if strat.get("predicted")]
    if with_pred:
        rows = []
        for t in with_pred[0][1]["predicted"]:
            row = [cell(t)]
            for _, strat in with_pred:
                p = strat["predicted"].get(t)
                row.append(cell(f"{_fmt(p['mean'], '.4f')} [{_fmt(p['lo'], '.4f')}, {_fmt(p['hi'], '.4f')}]" if p else "n/a"))
            rows.append(row)
        predicted = table(["target"] + [name for name, _ in with_pred], rows)

    uncertainty = None
    unc = allocation.get("decision_uncertainty") or {}
    if unc.get("fractions"):
        fractions = allocation.get("fractions") or {}
        rows = [[cell(src), cell(_pct(fractions.get(src, float("nan")))),
                 cell(f"{_fmt(100 * f['median'], '.1f')} [{_fmt(100 * f['lo'], '.1f')}, {_fmt(100 * f['hi'], '.1f')}] %"),
                 cell(_pct(unc.get("largest_share", {}).get(src, 0.0), ".0f"))]
                for src, f in unc["fractions"].items()]
        uncertainty = {"solved": str(unc.get("solved")),
                       "table": table(["source", "recommended share", "per-draw optimal share", "largest share in"], rows)}

    path = None
    entries = allocation.get("path") or []
    if entries:
        path_sources = next((list(e["allocation"]) for e in entries if e.get("allocation")), [])
        rows = []
        for entry in entries:
            if entry.get("allocation"):
                rows.append([cell(_fmt(entry["budget"], ".4g"))] + [cell(_pct(entry["fractions"][s], ".0f")) for s in path_sources]
                            + [cell(entry["status"], "text")])
            else:
                rows.append([cell(_fmt(entry["budget"], ".4g"))] + [cell("–") for _ in path_sources]
                            + [cell(entry.get("message", entry["status"]), "text bad")])
        path = table(["budget"] + path_sources + ["status"], rows, text_columns=(len(path_sources) + 1,))
    return {"present": True, "banner": banner, "strategies": strategy_table, "facts": facts, "predicted": predicted,
            "uncertainty": uncertainty, "path": path}


def proposal_view(proposal, unit: str) -> dict:
    """The batch of runs ``bayescale propose`` would train next (a ProposalResult or its JSON, or a
    one-line reason why there is none)."""
    if proposal is None or isinstance(proposal, str):
        return _absent(proposal or "No proposal was computed, so this section is omitted.")
    evoi = proposal["criterion"] == "evoi"
    what = "improve the recommendation's" if evoi else "narrow the posterior of the recommendation's"
    lead = (f"The {len(proposal['batch'])} runs whose losses are expected to {what} {proposal['objective']} at budget "
            f"{_fmt(proposal['budget'], 'g')} {unit} most per {proposal['cost_unit']} of training, chosen greedily from "
            f"{proposal['candidates']} candidates (bayescale propose; expected value of information for the decision over "
            f"{proposal['decisions']} allocations):")
    rows = []
    for k, run in enumerate(proposal["batch"], start=1):
        data = ", ".join(f"{s} {_fmt(a, 'g')}" for s, a in run["amounts"].items())
        why = ", ".join(f"{name} sd ×{_fmt(ratio, '.2f')}" for name, ratio in run["informs"].items())
        rows.append([cell(str(k)), cell(run["name"], "text"), cell(data, "text"), cell(_fmt(run["cost"], "g")),
                     cell(f"{_fmt(run['gain'], '.3g')} ± {_fmt(run['gain_se'], '.2g')}"), cell(why, "text")])
    facts_ = [fact("Expected gain of the whole batch: ", f"{_fmt(proposal['expected_gain'], '.3g')} ± "
                   f"{_fmt(proposal['expected_gain_se'], '.2g')}",
                   f" in {proposal['objective']} (today {_fmt(proposal['value_now'], '.5g')}), for "
                   f"{_fmt(proposal['cost'], 'g')} {proposal['cost_unit']}."),
              fact("Posterior after each outcome: ", "", f"{proposal['method']}; {proposal['effective_draws']:.0f} effective "
                   f"draws of {proposal['evaluation_draws']} on average.")]
    facts_ += [fact("Warning: ", "", note) for note in proposal.get("notes", [])]
    return {"present": True, "lead": lead, "facts": facts_,
            "table": table(["#", "run", f"data ({unit})", "cost", "expected gain ± MC se", "shrinks most (sd after / before)"],
                           rows, text_columns=(1, 2, 5))}


def holdout_view(holdout: xr.Dataset | None, scores: dict | None) -> dict:
    if holdout is None and scores is None:
        return _absent("No held-out predictions were given, so this section is omitted.")
    scores_table = warning = by_target = None
    if scores is not None:
        p_low = (scores.get("calibration") or {}).get("p_values") or {}

        def coverage(key, nominal):
            # Flagged when far from nominal, or when the calibration verdict finds it too low to be chance.
            v = scores.get(key, float("nan"))
            low = p_low.get(f"{nominal:g}")
            bad = not (abs(v - nominal) <= 0.2) or (low is not None and low < CALIBRATION_ALPHA)
            return cell(_pct(v, ".0f"), "bad" if bad else "")

        scores_table = table(["score", "value"], [
            ["cells scored", cell(scores.get("n", "?"))],
            ["Pearson r (median vs observed)", cell(_fmt(scores.get("pearson_r"), ".3f"))],
            ["median |relative error|", cell(_fmt(scores.get("median_abs_rel_error"), ".3f"))],
            ["50 % interval coverage", coverage("coverage_50", 0.5)],
            ["90 % interval coverage", coverage("coverage_90", 0.9)],
        ])
        verdict = scores.get("calibration") or {}
        if verdict.get("verdict") not in (None, "ok"):
            warning = _sentence(verdict["message"])
    if holdout is not None:
        rows = [[cell(target), cell(row["n"]), cell(_fmt(row["median_abs_rel_error"], ".3f")), cell(_pct(row["coverage_90"], ".0f"))]
                for target, row in score_by_target(holdout).items()]
        if rows:
            by_target = table(["target", "cells", "median |rel. error|", "90 % coverage"], rows)
    return {"present": True, "scores": scores_table, "warning": warning, "by_target": by_target}


def hubs_view(hubs: xr.Dataset | None) -> dict:
    if hubs is None:
        return _absent("No hub and island table was given (a law without transfer has none), so this section is omitted.")
    summary = summary_from_table(hubs)

    def measure(m, centre="mean"):
        if m is None or m[centre] is None:
            return "n/a"
        return f"{_fmt(m[centre], '.3g')} [{_fmt(m['lo'], '.3g')}, {_fmt(m['hi'], '.3g')}]"

    rows = []
    for name, d in summary["domains"].items():
        label = d["label"]
        rows.append([cell(name), cell(d["role"], "text"), cell(measure(d["out_transfer"])), cell(measure(d["in_transfer"])),
                     cell(_fmt(d["p_hub"], ".2f") if d["p_hub"] is not None else "n/a"),
                     cell(_fmt(d["p_island"], ".2f") if d["p_island"] is not None else "n/a"),
                     cell(label, "text", strong=label != "neither"),
                     cell(measure(d["exponent"], "median"))])
    pct = round(100 * summary["interval"])
    pairs = [[cell(f"{x['source']} → {x['target']}", "text"), cell(_fmt(x["p"], ".2f")),
              cell(measure(x["ratio"], "median"))]
             for x in summary["asymmetry"]]
    return {
        "present": True,
        "table": table(["domain", "role", f"out-transfer [{pct} %]", f"in-transfer [{pct} %]", "P(hub)", "P(island)", "label",
                        f"exponent α [{pct} %]"], rows, text_columns=(1, 6)),
        "asymmetry": table(["stronger direction i → j", "P(s_ij > s_ji)", f"s_ij / s_ji, median [{pct} %]"], pairs,
                           text_columns=(0,)) if pairs else None,
        "definitions": [fact("", f"{k}:", f" {v}") for k, v in summary["definitions"].items()],
    }


def diagnostics_view(diag: dict | None, loo: dict | None = None) -> dict:
    """The convergence table (failed checks flagged 'bad') and the PSIS-LOO summary."""
    loo_view = None
    if loo:
        bad = int(loo.get("pareto_k_bad", 0))
        loo_view = {
            "table": table(["check", "value", "wanted"], [
                ["elpd (PSIS-LOO)", cell(f"{_fmt(loo['elpd_loo'], '.1f')} ± {_fmt(loo['se'], '.1f')}"), "higher is better"],
                ["effective parameters p_loo", cell(_fmt(loo["p_loo"], ".1f")), ""],
                [f"observations with Pareto k above {_fmt(loo['pareto_k_threshold'], '.2f')}",
                 cell(f"{bad} of {loo['n']}", "bad" if bad else "good"), "0"],
            ]),
            "warning": (f"LOO is unreliable for {bad} observations (high Pareto k): compare laws on held-out runs "
                        "(bayescale check --laws) rather than by LOO alone.") if bad else "",
        }
    if diag is None:
        return {"present": False, "note": "No diagnostics were given, so this section is omitted.", "loo": loo_view}
    checks = _diagnostic_checks(diag)
    rows = [[c["label"], cell(c["value"], "bad" if c["bad"] else "good"), c["wanted"]] for c in checks]
    rows += [[key, cell(diag[key]), ""] for key in ("chains", "draws") if key in diag]
    ok = _diagnostics_ok(diag, checks)
    banner = ({"cls": "ok", "text": "The sampler converged by these checks."} if ok else
              {"cls": "warn", "text": "Some convergence checks failed (red): treat the posterior with suspicion; "
                                      "sample longer or with a higher target acceptance."})
    return {"present": True, "banner": banner, "table": table(["check", "value", "wanted"], rows), "loo": loo_view}


def _attribute_value(value) -> dict:
    """A grid attribute as a readable cell: JSON objects as key/value pairs, lists joined, long text cut."""
    text = str(value.item() if isinstance(value, np.generic) else value)
    parsed = None
    if text[:1] in "{[":
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None

    def plain(v) -> str:
        if v is None:
            return "none"
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, float):
            return format(v, ".6g")
        if isinstance(v, list):
            return ", ".join(plain(x) for x in v) if v else "none"
        if isinstance(v, dict):
            if any(isinstance(x, dict) for x in v.values()):
                return "; ".join(f"{k}: ({plain(x)})" for k, x in v.items())
            return ", ".join(f"{k} = {plain(x)}" for k, x in v.items())
        return str(v)

    if isinstance(parsed, dict) and parsed:
        return cell("", "text", pairs=[(k, plain(v)) for k, v in parsed.items()])
    if isinstance(parsed, list):
        text = plain(parsed)
    if len(text) > MAX_ATTRIBUTE_CHARS:
        text = text[: MAX_ATTRIBUTE_CHARS - 10] + f" … ({len(text)} characters)"
    return cell(text, "text")


def grid_view(grid: xr.Dataset, idata, fingerprint_warning: str) -> dict:
    """What the grid and the posterior say about themselves: description, summary, attributes, provenance."""
    rows = [[key, _attribute_value(value)] for key, value in grid.attrs.items() if key != "description"]
    attrs = dict(getattr(idata, "attrs", {}) or {})
    post_rows = [[key, cell(_fmt(attrs[key], ".4g") if key == "data_scale" else attrs[key], "text")]
                 for key in ("law", "likelihood", "method", "data_scale", "grid", "grid_fingerprint", "seed")
                 if key in attrs and str(attrs[key]) != ""]
    return {
        "description": str(grid.attrs.get("description", "")),
        "summary": format_grid_summary(grids.grid_summary(grid)),
        "attributes": table(["grid attribute", "value"], rows, text_columns=(1,)) if rows else None,
        "posterior": table(["posterior attribute", "value"], post_rows, text_columns=(1,)) if post_rows else None,
        "fingerprint": fingerprint_warning,
    }


# --------------------------------------------------------------------------------------
# the page


def _figure_view(name: str, png: bytes) -> dict:
    return {"name": name, "alt": ALTS[name], "caption": CAPTIONS[name], "file": f"{name}.png",
            "src": "data:image/png;base64," + base64.b64encode(png).decode("ascii")}


def build_view(*, title: str, draws: LawDraws, grid: xr.Dataset, idata, allocation=None, holdout: xr.Dataset | None = None,
               scores: dict | None = None, diagnostics: dict | None = None, hubs: xr.Dataset | None = None,
               loo: dict | None = None, pngs: dict[str, bytes] | None = None, proposal=None) -> dict:
    """Everything the template shows, as plain dicts and lists of formatted strings.

    ``pngs``: the rendered figures by name (those missing are not shown).
    """
    unit = str(grid.attrs.get("data_unit", "units"))
    fingerprint = _fingerprint_warning(grid, idata)
    return {
        "title": title,
        "subtitle": (f"{len(draws.sources)} sources, {len(draws.targets)} targets; law {draws.law}, likelihood {draws.likelihood}, "
                     f"{draws.n_draws} posterior draws; data scale D0 = {_fmt(draws.data_scale, '.4g')} {unit}"),
        "recommendation": recommendation_view(allocation, unit),
        "trust": trust_view(scores, diagnostics, fingerprint),
        "allocation": allocation_view(allocation, unit),
        "proposal": proposal_view(proposal, unit),
        "holdout": holdout_view(holdout, scores),
        "hubs": hubs_view(hubs),
        "diagnostics": diagnostics_view(diagnostics, loo),
        "grid": grid_view(grid, idata, fingerprint),
        "figures": {name: _figure_view(name, png) for name, png in (pngs or {}).items()},
    }


def write_report(
    out: str | os.PathLike,
    *,
    idata,
    grid: xr.Dataset,
    allocation=None,
    holdout: xr.Dataset | None = None,
    scores: dict | None = None,
    diagnostics: dict | None = None,
    hubs: xr.Dataset | None = None,
    loo: dict | None = None,
    proposal=None,
    title: str = "bayescale report",
) -> Path:
    """Write the figures as PNG files and ``report.html`` (figures embedded) into the folder ``out``.

    Sections whose input is None are left out with a note. ``allocation`` is the result of
    :func:`bayescale.optimise.allocate.allocate` (read by key); ``hubs`` a
    :func:`bayescale.evaluate.hubs.hub_island_table`; ``loo`` the PSIS-LOO summary of
    :func:`bayescale.evaluate.compare.loo_summary`; ``proposal`` what :func:`bayescale.optimise.propose.propose`
    returns (or a string: why there is none). Returns the HTML path.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    grid = grids.validate_grid(grid)
    draws = law_draws(idata)
    unit = str(grid.attrs.get("data_unit", "units"))

    made = {
        "scaling_curves": figs.plot_scaling_curves(draws, grid),
        "transfer_matrix": figs.plot_transfer_matrix(draws),
    }
    if hubs is not None:
        made["transfer_graph"] = figs.plot_transfer_graph(idata, hubs, data_unit=unit)
    if allocation is not None:
        made["allocation"] = figs.plot_allocation(allocation)
        if any(entry.get("allocation") for entry in allocation.get("path") or []):
            made["allocation_path"] = figs.plot_allocation_path(allocation)
    if holdout is not None:
        made["holdout"] = figs.plot_holdout(holdout, scores)
        if "pit" in holdout and np.isfinite(holdout["pit"].values).any():
            made["calibration"] = figs.plot_calibration(holdout)
    pngs = {}
    for name in FIGURE_NAMES:
        if name in made:
            pngs[name] = figs.to_png(made[name])
            with atomic_path(out / f"{name}.png") as tmp:
                tmp.write_bytes(pngs[name])
        elif (out / f"{name}.png").is_file():
            # A figure left from an earlier report into this folder would contradict this one.
            (out / f"{name}.png").unlink()

    view = build_view(title=title, draws=draws, grid=grid, idata=idata, allocation=allocation, holdout=holdout,
                      scores=scores, diagnostics=diagnostics, hubs=hubs, loo=loo, pngs=pngs, proposal=proposal)
    path = out / "report.html"
    write_text_atomic(path, render_report(view))
    return path
