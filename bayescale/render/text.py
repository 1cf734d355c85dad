"""Plain-text renderings of results: what the command line prints.

Each section below renders one kind of result; a renderer reads its result as a mapping
(the typed result, or the JSON read back), so the same text comes from either.
"""

from __future__ import annotations

from collections.abc import Mapping

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
    for key, label in (("temperature_sampling", "temperature"), ("transfer_unaware", "transfer_unaware")):
        if result.get(key):
            bases[label] = result[key]
    strategies = [("recommended", {"predicted": result["predicted"], "objective_value": result["objective_value"]})]
    strategies += [(k, b) for k, b in bases.items() if b.get("predicted")]
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
    for ch in result.get("chance") or []:
        held = ch["achieved_held_out"]
        lines.append(f"chance {ch['constraint']}: P on optimisation draws {ch['achieved_optimisation_draws']:.3f}, "
                     f"on {ch['held_out_draws']} held-out draws {'-' if held is None else f'{held:.3f}'}"
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


# ------------------------------------------------------------------------------------ end of allocation
