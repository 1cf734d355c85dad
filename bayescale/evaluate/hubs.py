"""Hubs and islands: which domains help the others, which are helped, which stand alone.

Everything here is a pure function of posterior draws (:class:`~bayescale.inference.posterior.LawDraws`,
or a posterior DataTree, which is turned into draws first).

The unit: the effective-data share
----------------------------------
T_ij alone is not comparable across pairs (its meaning depends on beta_ij and on the data
scale D0), so transfer is measured, per posterior draw, as the **effective-data share** at a
reference amount d_ref (law units, d = D / D0; default 1 law unit = D0 raw data units)::

    s_ij = T_ij * d_ref ** beta_ij / d_ref

d_ref units of source i add T_ij d_ref^beta_ij to target j's effective data x_j, exactly as
that many units of j's *own* data would; s_ij is that amount per unit of source data:
1 = a unit of i is worth a unit of j's own data, 0 = no help. For beta_ij = 1 it is T_ij at
every d_ref; for beta_ij < 1 it falls as d_ref grows (diminishing returns from another domain).

- **out-transfer** of domain i (how much it helps others): mean of s_ij over every target
  j != i. None if i is not a source, or its only target is itself.
- **in-transfer** of domain j (how much others help it): mean of s_ij over every source
  i != j. None if j is not a target, or its only source is itself.

Classification (per draw, then over draws)
------------------------------------------
- **hub** in a draw: out_i >= tau_hub (``hub_threshold``, default 0.25) *and*
  out_i >= r_hub (``hub_ratio``, default 2) x the median out-transfer of the *other* domains
  that are sources (the threshold alone when there is no other). A hub both helps a lot and
  stands out.
- **island** in a draw: every measure of the domain that is defined (out and in) is below
  tau_island (``island_threshold``, default 0.05): it neither gives nor takes.
- p_hub / p_island: the share of posterior draws in which the domain is a hub / an island
  (p_hub is None for a domain that is not a source). Since tau_island <= tau_hub is required,
  no draw makes a domain both.
- label: ``"hub"`` if p_hub >= 0.5, ``"island"`` if p_island >= 0.5, else ``"neither"``
  (a 0.5 / 0.5 tie is ``"neither"``).

Asymmetry (per pair of domains that are both source and target)
----------------------------------------------------------------
- p_stronger_ij: the share of draws in which s_ij > s_ji, i.e. a unit of i's data is worth more
  to j than a unit of j's data is worth to i (the paper's asymmetric transfer). p_stronger_ij +
  p_stronger_ji = 1 but for ties.
- ratio_ij: s_ij / s_ji, posterior median and central credible interval.
The JSON lists each pair once, in its stronger direction (p >= 0.5), the clearest first.

Out and in transfer are reported as the posterior mean and a central credible interval
(default 90 %). :data:`DEFINITIONS` holds these definitions as text; every summary carries
them with its own numbers filled in.

API
---
- :func:`require_transfer`       the draws, or :class:`InputError` if the posterior has no transfer
- :func:`transfer_share`         s_ij per draw, (S, I, J), NaN on a target's own source
- :func:`hub_island_draws`       per-draw out/in transfer and hub/island flags (dims draw, domain)
- :func:`hub_island_table`       posterior summary per domain as an ``xr.Dataset`` (dim domain)
- :func:`asymmetric_pairs`       the table's pairs in their stronger direction, clearest first
- :func:`hubs_summary`           the same as a JSON-able dict
The text table ``bayescale hubs`` prints is :func:`bayescale.render.text.hubs_command_output`,
the figure of the transfer graph :func:`bayescale.render.figures.plot_transfer_graph`.
"""

from __future__ import annotations

import math

import numpy as np
import xarray as xr

from bayescale import laws
from bayescale.errors import InputError
from bayescale.evaluate.results import HubsSummary
from bayescale.inference.posterior import LawDraws, law_draws

LABELS = ("hub", "island", "neither")
LABEL_COLOURS = {"hub": "#e6550d", "island": "#3182bd", "neither": "#d9d9d9"}
HUB_THRESHOLD = 0.25
HUB_RATIO = 2.0
ISLAND_THRESHOLD = 0.05
INTERVAL = 0.9

DEFINITIONS = {
    "effective_data_share": (
        "s_ij = T_ij * d_ref^beta_ij / d_ref, per posterior draw: what one unit of source i's data is worth "
        "in units of target j's own data when d_ref units of i are used (1 = as good as j's own data, 0 = no help); "
        "d_ref = {reference:g} x D0 = {reference_data:.4g} raw data units (D0 = {data_scale:.4g}, the law's data scale). "
        "For beta_ij = 1 it equals T_ij; for beta_ij < 1 it falls as d_ref grows."
    ),
    "out_transfer": (
        "how much domain i helps the others: the mean of s_ij over every target j other than i (none if i is not a source)."
    ),
    "in_transfer": (
        "how much the others help domain j: the mean of s_ij over every source i other than j (none if j is not a target)."
    ),
    "hub": (
        "in a draw, domain i is a hub if its out-transfer is >= {hub_threshold:g} and >= {hub_ratio:g} x the median "
        "out-transfer of the other source domains; p_hub is the share of posterior draws in which it is a hub."
    ),
    "island": (
        "in a draw, a domain is an island if its out-transfer and its in-transfer (those defined) are both < "
        "{island_threshold:g}: it neither gives nor takes; p_island is the share of posterior draws in which it is an island."
    ),
    "label": "'hub' if p_hub >= 0.5, 'island' if p_island >= 0.5, otherwise 'neither'.",
    "exponent": (
        "alpha_j, the power-law exponent of target j's loss in its effective data (L_j = E_j + A_j (x_j + x0_j)^-alpha_j): "
        "posterior median and central {interval_pct:g} % interval."
    ),
    "asymmetry": (
        "for domains i and j that are both sources and targets: p = the share of posterior draws in which s_ij > s_ji "
        "(a unit of i's data is worth more to j than a unit of j's data to i), and the ratio s_ij / s_ji as the posterior "
        "median and central {interval_pct:g} % interval; each pair is listed once, in the direction with p >= 0.5."
    ),
    "interval": (
        "out- and in-transfer are given as the posterior mean and the central {interval_pct:g} % credible interval (lo, hi)."
    ),
}


# --------------------------------------------------------------------------------------
# input


def _as_draws(posterior) -> LawDraws:
    return posterior if isinstance(posterior, LawDraws) else law_draws(posterior)


def require_transfer(posterior, source: str = "posterior") -> LawDraws:
    """The posterior's draws if it has transfer to analyse; :class:`InputError` (one line) if not.

    Refused: an ``independent``-law posterior, one whose off-diagonal T are all exactly 0,
    and one without any pair of distinct source and target domains.
    """
    draws = _as_draws(posterior)
    hint = "hubs need a transfer or linear fit"
    if not laws.of_draws(draws).transfer:
        raise InputError(f"{source}: posterior has no transfer parameters (law {draws.law!r}); {hint}, not the {draws.law} law")
    off = draws.self_mask < 0.5
    if not off.any():
        raise InputError(f"{source}: posterior has no transfer parameters (no source differs from its target); {hint}")
    if not np.any(draws.T[:, off] != 0):
        raise InputError(f"{source}: posterior has no transfer parameters (law {draws.law!r}, every off-diagonal T is 0); {hint}")
    return draws


def _reference(draws: LawDraws, reference, reference_data) -> float:
    if reference is not None and reference_data is not None:
        raise InputError("give the reference amount either in law units (reference) or in data units (reference_data), not both")
    if reference_data is not None:
        value, name = reference_data, "reference_data"
        ref = float(reference_data) / draws.data_scale if _finite_positive(reference_data) else float("nan")
    else:
        value, name = (1.0 if reference is None else reference), "reference"
        ref = float(value) if _finite_positive(value) else float("nan")
    if not math.isfinite(ref) or ref <= 0:
        raise InputError(f"{name} must be a finite number > 0, got {value}", parameter=name)
    return ref


def _finite_positive(value) -> bool:
    try:
        return math.isfinite(float(value)) and float(value) > 0
    except (TypeError, ValueError):
        return False


def _check_rules(hub_threshold, hub_ratio, island_threshold, interval) -> None:
    for name, value in (("hub_threshold", hub_threshold), ("hub_ratio", hub_ratio), ("island_threshold", island_threshold)):
        try:
            ok = math.isfinite(float(value)) and float(value) >= 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise InputError(f"{name} must be a finite number >= 0, got {value}", parameter=name)
    if island_threshold > hub_threshold:
        raise InputError(f"island_threshold ({island_threshold:g}) must not exceed hub_threshold ({hub_threshold:g})",
                         parameter="island_threshold")
    if not 0 < interval < 1:
        raise InputError(f"interval must lie strictly between 0 and 1, got {interval}", parameter="interval")


def _domains(draws: LawDraws) -> list[str]:
    """Sources in order, then targets that are not sources."""
    return list(draws.sources) + [t for t in draws.targets if t not in draws.sources]


# --------------------------------------------------------------------------------------
# per-draw measures


def transfer_share(draws: LawDraws, reference: float = 1.0) -> np.ndarray:
    """Effective-data share s_ij = T_ij d_ref^beta_ij / d_ref per draw: (S, I, J); NaN where i is j.

    ``reference`` is d_ref in law units (multiples of D0).
    """
    if not _finite_positive(reference):
        raise InputError(f"reference must be a finite number > 0, got {reference}", parameter="reference")
    share = draws.T * np.power(float(reference), draws.beta - 1.0)
    return np.where(draws.self_mask[None] > 0.5, np.nan, share)


def hub_island_draws(
    posterior,
    *,
    reference: float | None = None,
    reference_data: float | None = None,
    hub_threshold: float = HUB_THRESHOLD,
    hub_ratio: float = HUB_RATIO,
    island_threshold: float = ISLAND_THRESHOLD,
) -> xr.Dataset:
    """Per draw and domain: ``out_transfer``, ``in_transfer`` (NaN where not defined),
    ``is_hub``, ``is_island`` (False where not defined), and ``share`` (draw, source, target).

    ``reference`` is d_ref in law units (default 1); ``reference_data`` the same in raw data
    units (d_ref = reference_data / D0). See the module docstring for the rules.
    """
    draws = require_transfer(posterior)
    _check_rules(hub_threshold, hub_ratio, island_threshold, INTERVAL)
    ref = _reference(draws, reference, reference_data)
    share = transfer_share(draws, ref)
    domains = _domains(draws)
    n_draws, k = draws.n_draws, len(domains)
    out = np.full((n_draws, k), np.nan)
    inn = np.full((n_draws, k), np.nan)
    off = draws.self_mask < 0.5
    for i, name in enumerate(draws.sources):
        if off[i].any():
            out[:, domains.index(name)] = share[:, i, off[i]].mean(axis=1)
    for j, name in enumerate(draws.targets):
        if off[:, j].any():
            inn[:, domains.index(name)] = share[:, off[:, j], j].mean(axis=1)

    has_out = np.isfinite(out[0]) if n_draws else np.zeros(k, bool)
    has_in = np.isfinite(inn[0]) if n_draws else np.zeros(k, bool)
    is_hub = np.zeros((n_draws, k), dtype=bool)
    for d in np.flatnonzero(has_out):
        others = [e for e in np.flatnonzero(has_out) if e != d]
        bar = np.full(n_draws, float(hub_threshold))
        if others:
            bar = np.maximum(bar, hub_ratio * np.median(out[:, others], axis=1))
        is_hub[:, d] = out[:, d] >= bar
    low_out = np.where(has_out[None], out < island_threshold, True)
    low_in = np.where(has_in[None], inn < island_threshold, True)
    is_island = low_out & low_in & (has_out | has_in)[None]

    return xr.Dataset(
        {
            "out_transfer": (("draw", "domain"), out),
            "in_transfer": (("draw", "domain"), inn),
            "is_hub": (("draw", "domain"), is_hub),
            "is_island": (("draw", "domain"), is_island),
            "share": (("draw", "source", "target"), share),
        },
        coords={"domain": domains, "source": list(draws.sources), "target": list(draws.targets), "draw": np.arange(n_draws)},
        attrs={
            "reference": ref,
            "reference_data": ref * draws.data_scale,
            "data_scale": float(draws.data_scale),
            "hub_threshold": float(hub_threshold),
            "hub_ratio": float(hub_ratio),
            "island_threshold": float(island_threshold),
            "law": draws.law,
        },
    )


# --------------------------------------------------------------------------------------
# summaries


def hub_island_table(
    posterior,
    *,
    reference: float | None = None,
    reference_data: float | None = None,
    hub_threshold: float = HUB_THRESHOLD,
    hub_ratio: float = HUB_RATIO,
    island_threshold: float = ISLAND_THRESHOLD,
    interval: float = INTERVAL,
) -> xr.Dataset:
    """Posterior summary per domain (dim ``domain``).

    Variables: ``out_mean, out_lo, out_hi, in_mean, in_lo, in_hi`` (NaN where not defined),
    ``p_hub`` (NaN for a domain that is not a source), ``p_island``, ``label``,
    ``is_source``, ``is_target``, ``alpha_median, alpha_lo, alpha_hi`` (the power-law exponent of a
    target's loss in its effective data; NaN for a domain that is not a target); and per pair ``share_mean, share_lo, share_hi``
    (dims source, target; NaN where the source is the target), ``p_stronger`` (the share of
    draws with s_ij > s_ji) and ``ratio_median, ratio_lo, ratio_hi`` of s_ij / s_ji (NaN where
    either direction is undefined). Attrs: the reference amount (law and raw units), D0,
    thresholds, interval, law, number of draws.
    """
    _check_rules(hub_threshold, hub_ratio, island_threshold, interval)
    draws = require_transfer(posterior)  # once: a DataTree is turned into draws here, not again below
    per = hub_island_draws(
        draws, reference=reference, reference_data=reference_data,
        hub_threshold=hub_threshold, hub_ratio=hub_ratio, island_threshold=island_threshold,
    )
    q = [(1 - interval) / 2, (1 + interval) / 2]
    out, inn = per["out_transfer"].values, per["in_transfer"].values
    has_out, has_in = np.isfinite(out).all(axis=0), np.isfinite(inn).all(axis=0)

    def stats(values, ok):
        mean = np.full(values.shape[1], np.nan)
        lo, hi = mean.copy(), mean.copy()
        if ok.any():
            mean[ok] = values[:, ok].mean(axis=0)
            lo[ok], hi[ok] = np.quantile(values[:, ok], q, axis=0)
        return mean, lo, hi

    out_mean, out_lo, out_hi = stats(out, has_out)
    in_mean, in_lo, in_hi = stats(inn, has_in)
    p_hub = np.where(has_out, per["is_hub"].values.mean(axis=0), np.nan)
    p_island = np.where(has_out | has_in, per["is_island"].values.mean(axis=0), np.nan)
    labels = [_label(h, s) for h, s in zip(p_hub, p_island)]
    share = per["share"].values
    off = np.isfinite(share).all(axis=0)
    share_mean = np.where(off, np.nanmean(np.where(off[None], share, 0.0), axis=0), np.nan)
    share_q = np.quantile(np.where(off[None], share, 0.0), q, axis=0)
    domains = list(per["domain"].values)
    sources, targets = list(per["source"].values), list(per["target"].values)
    p_stronger, ratio = _asymmetry(share, sources, targets, q)
    alpha = np.full((3, len(domains)), np.nan)
    for j, name in enumerate(draws.targets):
        alpha[:, domains.index(name)] = [np.median(draws.alpha[:, j]), *np.quantile(draws.alpha[:, j], q)]
    return xr.Dataset(
        {
            "out_mean": ("domain", out_mean), "out_lo": ("domain", out_lo), "out_hi": ("domain", out_hi),
            "in_mean": ("domain", in_mean), "in_lo": ("domain", in_lo), "in_hi": ("domain", in_hi),
            "p_hub": ("domain", p_hub), "p_island": ("domain", p_island),
            "label": ("domain", np.array(labels, dtype=object)),
            "alpha_median": ("domain", alpha[0]), "alpha_lo": ("domain", alpha[1]), "alpha_hi": ("domain", alpha[2]),
            "is_source": ("domain", np.array([d in sources for d in domains])),
            "is_target": ("domain", np.array([d in targets for d in domains])),
            "share_mean": (("source", "target"), share_mean),
            "share_lo": (("source", "target"), np.where(off, share_q[0], np.nan)),
            "share_hi": (("source", "target"), np.where(off, share_q[1], np.nan)),
            "p_stronger": (("source", "target"), p_stronger),
            "ratio_median": (("source", "target"), ratio[0]),
            "ratio_lo": (("source", "target"), ratio[1]),
            "ratio_hi": (("source", "target"), ratio[2]),
        },
        coords={"domain": domains, "source": sources, "target": targets},
        attrs={**per.attrs, "interval": float(interval), "n_draws": int(per.sizes["draw"])},
    )


def _asymmetry(share: np.ndarray, sources: list[str], targets: list[str], q) -> tuple[np.ndarray, np.ndarray]:
    """P(s_ij > s_ji) and the (median, lo, hi) of s_ij / s_ji over draws, (I, J) each; NaN where undefined."""
    n_i, n_j = len(sources), len(targets)
    p = np.full((n_i, n_j), np.nan)
    ratio = np.full((3, n_i, n_j), np.nan)
    for i, a in enumerate(sources):
        for j, b in enumerate(targets):
            if a == b or b not in sources or a not in targets:
                continue
            forward, backward = share[:, i, j], share[:, sources.index(b), targets.index(a)]
            if not (np.isfinite(forward).all() and np.isfinite(backward).all()):
                continue
            p[i, j] = float(np.mean(forward > backward))
            with np.errstate(divide="ignore", invalid="ignore"):
                r = forward / backward
            r = r[~np.isnan(r)]  # 0 / 0: neither direction helps in that draw
            if r.size:
                levels = [0.5, *q]
                with np.errstate(invalid="ignore"):  # inf - inf between two infinite neighbours
                    values = np.quantile(r, levels)
                # where a quantile falls between two infinite ratios (x / 0), it is that infinity
                ratio[:, i, j] = np.where(np.isnan(values), np.quantile(r, levels, method="nearest"), values)
    return p, ratio


def asymmetric_pairs(table: xr.Dataset) -> list[dict]:
    """Each pair once, in its stronger direction (p >= 0.5), the clearest (largest p) first."""
    sources, targets = list(table["source"].values), list(table["target"].values)
    pairs, seen = [], set()
    for i, a in enumerate(sources):
        for j, b in enumerate(targets):
            p = float(table["p_stronger"].values[i, j])
            if not np.isfinite(p) or frozenset((a, b)) in seen:
                continue
            back = float(table["p_stronger"].values[sources.index(b), targets.index(a)])
            if p < back or (p == back and str(a) > str(b)):
                continue  # listed from the other side
            seen.add(frozenset((a, b)))
            pairs.append({
                "source": str(a), "target": str(b), "p": p,
                "ratio": {stat: _num(table[f"ratio_{stat}"].values[i, j]) for stat in ("median", "lo", "hi")},
            })
    return sorted(pairs, key=lambda pair: (-pair["p"], pair["source"], pair["target"]))


def _label(p_hub: float, p_island: float) -> str:
    p_hub = 0.0 if not np.isfinite(p_hub) else float(p_hub)
    p_island = 0.0 if not np.isfinite(p_island) else float(p_island)
    if p_hub >= 0.5 and p_hub > p_island:
        return "hub"
    if p_island >= 0.5 and p_island > p_hub:
        return "island"
    return "neither"


def definitions(table: xr.Dataset) -> dict[str, str]:
    """:data:`DEFINITIONS` with the table's reference amount, thresholds and interval filled in."""
    values = dict(table.attrs)
    values["interval_pct"] = 100 * values["interval"]
    return {key: text.format(**values) for key, text in DEFINITIONS.items()}


def _num(value) -> float | None:
    return float(value) if np.isfinite(value) else None


def _measure(row: xr.Dataset, key: str) -> dict[str, float] | None:
    if not np.isfinite(row[f"{key}_mean"]):
        return None
    return {stat: float(row[f"{key}_{stat}"]) for stat in ("mean", "lo", "hi")}


def summary_from_table(table: xr.Dataset) -> HubsSummary:
    """The JSON-able form of a :func:`hub_island_table`."""
    domains = {}
    for k, name in enumerate(table["domain"].values):
        row = table.isel(domain=k)
        is_source, is_target = bool(row["is_source"]), bool(row["is_target"])
        role = "source and target" if is_source and is_target else ("source only" if is_source else "target only")
        domains[str(name)] = {
            "role": role,
            "out_transfer": _measure(row, "out"),
            "in_transfer": _measure(row, "in"),
            "p_hub": _num(row["p_hub"].values),
            "p_island": _num(row["p_island"].values),
            "label": str(row["label"].values),
            "exponent": ({stat: float(row[f"alpha_{stat}"]) for stat in ("median", "lo", "hi")}
                         if np.isfinite(row["alpha_median"]) else None),
        }
    attrs = table.attrs
    return HubsSummary(
        definitions=definitions(table),
        reference=float(attrs["reference"]),
        reference_data=float(attrs["reference_data"]),
        data_scale=float(attrs["data_scale"]),
        thresholds={
            "hub": float(attrs["hub_threshold"]),
            "hub_ratio": float(attrs["hub_ratio"]),
            "island": float(attrs["island_threshold"]),
        },
        interval=float(attrs["interval"]),
        law=str(attrs["law"]),
        draws=int(attrs["n_draws"]),
        hubs=[d for d, v in domains.items() if v["label"] == "hub"],
        islands=[d for d, v in domains.items() if v["label"] == "island"],
        domains=domains,
        asymmetry=asymmetric_pairs(table),
    )


def hubs_summary(posterior, **kwargs) -> HubsSummary:
    """JSON-able hubs and islands: definitions, reference amount, thresholds, and per domain
    ``out_transfer`` / ``in_transfer`` (``{"mean", "lo", "hi"}`` or None), ``p_hub``,
    ``p_island``, ``label`` and ``role``; plus the lists ``hubs`` and ``islands``.

    Keyword arguments are those of :func:`hub_island_table`.
    """
    return summary_from_table(hub_island_table(posterior, **kwargs))
