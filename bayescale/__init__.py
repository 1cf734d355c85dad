"""bayescale: Bayesian scaling laws with cross-domain transfer and risk-aware data allocation.

The flow is grid -> posterior -> decisions -> report::

    import bayescale as bs

    grid = bs.load_grid("data/grids/phantom-mae.nc")
    posterior = bs.fit(grid, law="transfer")            # NUTS; any family in bs.laws.names()
    bs.predict(bs.law_draws(posterior), {"ct_abdomen": 40, "pet_wholebody": 8})
    result = bs.allocate(bs.law_draws(posterior), 144, objective="cvar:0.9")
    scores = bs.check(posterior, grid)                  # held-out runs: r, error, coverage
    bs.report(posterior, grid, "report/")

Packages, each importing only those below it:

- :mod:`bayescale.data`       loss grids (load, validate, save), simulated worlds, real third-party grids
- :mod:`bayescale.laws`       law families and their registry (transfer, linear, independent, bend, interference, stack, mixing)
- :mod:`bayescale.inference`  NUTS/SVI fit, the posterior contract, SBC, the bootstrap
- :mod:`bayescale.evaluate`   prediction, held-out checks, hubs and islands, model comparison
- :mod:`bayescale.optimise`   risk-aware allocation (cvxpy), constraints, baselines
- :mod:`bayescale.render`     text tables, figures, the HTML report
- :mod:`bayescale.workflows`  the demo, check with refit, report of a posterior
- :mod:`bayescale.cli`        the ``bayescale`` command line

Names are loaded on first use, so ``import bayescale`` stays light and sets nothing up:
XLA's device count for parallel chains is set where sampling starts
(:func:`bayescale.inference.sampling.ensure_host_devices`).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> (module, attribute)
_PUBLIC = {
    "InputError": ("bayescale.errors", "InputError"),
    "load_grid": ("bayescale.data.grid", "load_grid"),
    "save_grid": ("bayescale.data.grid", "save_grid"),
    "make_grid": ("bayescale.data.grid", "make_grid"),
    "draw_world": ("bayescale.data.simulate", "draw_world"),
    "simulate_grid": ("bayescale.data.simulate", "simulate_grid"),
    "laws": ("bayescale.laws", None),
    "fit": ("bayescale.inference.fit", "fit"),
    "prior_predictive": ("bayescale.inference.fit", "prior_predictive"),
    "load_posterior": ("bayescale.inference.posterior", "load_posterior"),
    "save_posterior": ("bayescale.inference.posterior", "save_posterior"),
    "law_draws": ("bayescale.inference.posterior", "law_draws"),
    "diagnostics": ("bayescale.inference.posterior", "diagnostics"),
    "predict": ("bayescale.evaluate.predict", "predict"),
    "check": ("bayescale.workflows", "check"),
    "hub_island_table": ("bayescale.evaluate.hubs", "hub_island_table"),
    "compare_fits": ("bayescale.evaluate.compare", "compare_fits"),
    "allocate": ("bayescale.optimise.allocate", "allocate"),
    "make_candidates": ("bayescale.optimise.candidates", "make_candidates"),
    "propose": ("bayescale.optimise.propose", "propose"),
    "report": ("bayescale.workflows", "report_for"),
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    try:
        module, attribute = _PUBLIC[name]
    except KeyError:
        raise AttributeError(f"module 'bayescale' has no attribute {name!r}") from None
    value = importlib.import_module(module)
    if attribute is not None:
        value = getattr(value, attribute)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
