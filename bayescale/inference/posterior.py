"""The posterior contract: save, load, validate, diagnose, and turn into law draws.

A posterior is an ArviZ DataTree (groups ``posterior``, ``sample_stats``,
``log_likelihood``, ``observed_data``, ``constant_data``) whose ``posterior`` holds
``E, A, alpha, x0, sigma`` (dim ``target``) and ``T, beta`` (dims ``source, target``),
with ``constant_data.data_scale`` = D0 and attrs naming the law, the likelihood and
the grid it came from. :class:`LawDraws` is the flat NumPy view that ``predict``,
``allocate``, ``check`` and ``hubs`` work on.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

import numpy as np
import xarray as xr

from bayescale._files import atomic_path
from bayescale.errors import InputError

TARGET_PARAMS = ("E", "A", "alpha", "x0", "sigma")
PAIR_PARAMS = ("T", "beta")
REQUIRED_GROUPS = ("posterior", "constant_data")  # plus sample_stats for a sampler's (NUTS) posterior


@dataclasses.dataclass(frozen=True)
class LawDraws:
    """Posterior draws of the law, flattened over (chain, draw) into one axis of length S."""

    sources: tuple[str, ...]
    targets: tuple[str, ...]
    self_mask: np.ndarray  # (I, J): 1 where source i is target j
    E: np.ndarray  # (S, J)
    A: np.ndarray  # (S, J)
    alpha: np.ndarray  # (S, J)
    x0: np.ndarray  # (S, J)
    sigma: np.ndarray  # (S, J) noise sd of log loss
    T: np.ndarray  # (S, I, J)
    beta: np.ndarray  # (S, I, J)
    data_scale: float
    law: str = "transfer"
    likelihood: str = "normal"
    nu: np.ndarray | None = None  # (S,) Student-t degrees of freedom

    @property
    def n_draws(self) -> int:
        return self.E.shape[0]

    def subset(self, index) -> LawDraws:
        """The draws at ``index`` (an index array or slice along the draw axis)."""
        fields = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in TARGET_PARAMS + PAIR_PARAMS or (f.name == "nu" and value is not None):
                value = value[index]
            fields[f.name] = value
        return LawDraws(**fields)

    def source_index(self, name: str, flag: str = "--alloc") -> int:
        if name not in self.sources:
            raise InputError(f"{flag}: unknown source domain {name!r}; the posterior's sources are {', '.join(self.sources)}")
        return self.sources.index(name)

    def target_index(self, name: str, flag: str = "--weights") -> int:
        if name not in self.targets:
            raise InputError(f"{flag}: unknown target domain {name!r}; the posterior's targets are {', '.join(self.targets)}")
        return self.targets.index(name)


def self_mask_for(sources, targets) -> np.ndarray:
    return np.array([[1.0 if s == t else 0.0 for t in targets] for s in sources])


def is_mixing(idata) -> bool:
    """Is this a posterior of the exponential mixing law (``bayescale.laws.mixing``)?"""
    return str(idata.attrs.get("law", "")) == "mixing"


def law_draws(idata) -> LawDraws:
    """Flatten a posterior DataTree into :class:`LawDraws`."""
    if is_mixing(idata):
        raise InputError("posterior is of the mixing law (one fixed budget); predict, allocate and hubs need a "
                         "transfer-law fit (bayescale fit --law transfer|linear|independent); check works on both")
    post = _group(idata, "posterior")
    sources = tuple(str(s) for s in post["source"].values)
    targets = tuple(str(t) for t in post["target"].values)

    def flat(name, dims):
        da = post[name].transpose("chain", "draw", *dims)
        return np.asarray(da.values, dtype=np.float64).reshape((-1,) + da.shape[2:])

    params = {name: flat(name, ("target",)) for name in TARGET_PARAMS}
    params.update({name: flat(name, ("source", "target")) for name in PAIR_PARAMS})
    nu = flat("nu", ()) if "nu" in post else None
    const = _group(idata, "constant_data")
    return LawDraws(
        sources=sources,
        targets=targets,
        self_mask=self_mask_for(sources, targets),
        data_scale=float(const["data_scale"].values),
        law=str(post.attrs.get("law", idata.attrs.get("law", "transfer"))),
        likelihood=str(idata.attrs.get("likelihood", "normal")),
        nu=nu,
        **params,
    )


def _group(idata, name) -> xr.Dataset:
    try:
        return idata[name].to_dataset()
    except KeyError:
        raise InputError(f"posterior has no {name!r} group") from None


def validate_posterior(idata, source: str = "posterior") -> None:
    """Check the posterior contract; raise :class:`InputError` naming what is missing."""
    children = set(idata.children)
    required = REQUIRED_GROUPS + (("sample_stats",) if idata.attrs.get("method", "nuts") == "nuts" else ())
    for group in required:
        if group not in children:
            raise InputError(f"{source}: not a bayescale posterior (no {group!r} group)")
    post = idata["posterior"]
    if is_mixing(idata):
        # The exponential mixing law (bayescale.laws.mixing) has parameters of its own.
        for name in ("c", "k", "t", "sigma"):
            if name not in post.data_vars or not np.all(np.isfinite(post[name].values)):
                raise InputError(f"{source}: mixing-law posterior variable {name!r} is missing or non-finite")
        return
    for name in TARGET_PARAMS:
        if name not in post.data_vars or "target" not in post[name].dims:
            raise InputError(f"{source}: posterior variable {name!r} with dim 'target' is missing")
    for name in PAIR_PARAMS:
        if name not in post.data_vars or set(post[name].dims) != {"chain", "draw", "source", "target"}:
            raise InputError(f"{source}: posterior variable {name!r} with dims (source, target) is missing")
    if "data_scale" not in idata["constant_data"].data_vars:
        raise InputError(f"{source}: constant_data has no 'data_scale'")
    for name in TARGET_PARAMS + PAIR_PARAMS:
        if not np.all(np.isfinite(post[name].values)):
            raise InputError(f"{source}: posterior variable {name!r} holds non-finite draws")


def save_posterior(idata, path: str | os.PathLike) -> None:
    """Write the posterior as NetCDF atomically (no partial file on failure)."""
    with atomic_path(path) as tmp:
        idata.to_netcdf(tmp, engine="netcdf4")


def load_posterior(path: str | os.PathLike):
    """Read and validate a posterior written by :func:`save_posterior`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such posterior file")
    try:
        # Load into memory and close: netCDF4 crashes after many open handles to one file.
        with xr.open_datatree(path, engine="netcdf4") as tree:
            idata = tree.load()
    except Exception as exc:  # any reader failure means "not our file"
        raise InputError(f"{path}: not a readable NetCDF posterior ({type(exc).__name__})") from None
    validate_posterior(idata, str(path))
    return idata


def diagnostics(idata) -> dict:
    """Convergence summary over the law's parameters: max r-hat, min bulk/tail ESS, divergences."""
    if is_mixing(idata):
        from bayescale.laws.mixing import PARAMS as names
    else:
        names = TARGET_PARAMS + PAIR_PARAMS + ("nu",)
    return sampler_diagnostics(idata, [n for n in names if n in idata["posterior"].data_vars])


def sampler_diagnostics(idata, names) -> dict:
    """Max r-hat, min bulk/tail ESS, divergences and min E-BFMI over the posterior variables ``names``."""
    import arviz as az

    post = idata["posterior"].to_dataset()[list(names)]
    n_draws = int(post.sizes["chain"] * post.sizes["draw"])
    if "sample_stats" not in idata.children:
        # An approximate (SVI) posterior: independent draws, no sampler to diagnose.
        return {"method": str(idata.attrs.get("method", "svi")), "approximate": True, "max_rhat": float("nan"),
                "min_ess_bulk": float(n_draws), "min_ess_tail": float(n_draws), "divergences": 0,
                "draws": n_draws, "chains": int(post.sizes["chain"]), "ok": True}
    # Fixed entries (T = 1 on a target's own source, beta = 1 in the linear law) have no
    # variance; their r-hat is NaN and says nothing, so they are dropped before the max.
    varying = post.std(("chain", "draw")) > 0
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        rhat = az.rhat(post).where(varying)
        ess_bulk = az.ess(post, method="bulk").where(varying)
        ess_tail = az.ess(post, method="tail").where(varying)
    stats = idata["sample_stats"]
    divergences = int(stats["diverging"].sum()) if "diverging" in stats.data_vars else 0

    def reduce(ds, fn):
        values = np.concatenate([np.ravel(ds[v].values) for v in ds.data_vars])
        values = values[np.isfinite(values)]
        return float(fn(values)) if values.size else float("nan")

    result = {
        "method": "nuts",
        "approximate": False,
        "max_rhat": reduce(rhat, np.max),
        "min_ess_bulk": reduce(ess_bulk, np.min),
        "min_ess_tail": reduce(ess_tail, np.min),
        "divergences": divergences,
        "draws": n_draws,
        "chains": int(post.sizes["chain"]),
    }
    if "energy" in stats.data_vars:
        result["min_bfmi"] = float(np.min(np.asarray(az.bfmi(idata).to_dataset()["energy"])))
    result["ok"] = bool(
        result["max_rhat"] <= 1.01 and result["divergences"] == 0 and result["min_ess_bulk"] >= 400
    )
    return result


def format_diagnostics(diag: dict) -> str:
    if diag.get("approximate"):
        return f"approximate posterior ({diag['method']}): {diag['draws']} independent draws; no sampler diagnostics — check against NUTS before trusting intervals"
    return (
        f"max r-hat {diag['max_rhat']:.3f} · min bulk ESS {diag['min_ess_bulk']:.0f} · "
        f"min tail ESS {diag['min_ess_tail']:.0f} · divergences {diag['divergences']}"
        + (f" · min E-BFMI {diag['min_bfmi']:.2f}" if "min_bfmi" in diag else "")
        + f" ({diag['chains']} chains, {diag['draws']} draws)"
    )
