"""Sampler levers on one world, against NumPyro's NUTS as ``fit`` runs it (a benchmark, not a test).

    .venv/bin/python benchmarks/bench_sampler_levers.py [--domains 8] [--centring auto|none]
        [--levers parallel vectorized depth8 depth7 nutpie-low_rank nutpie-diag] [--warmup 500] [--draws 500]

The world is ``bench_scaling``'s (``draw_world(K, seed=0)``, about 12 fit runs per domain); every
row samples the transfer law's own log density, 4 chains at target acceptance 0.98, with the
centring ``fit --centring auto`` would choose (or none):

- ``parallel``: NumPyro's NUTS, chains on 4 XLA devices over the machine's cores (``fit``'s way);
- ``vectorized``: the same, the 4 chains in one XLA program;
- ``depth8`` / ``depth7``: ``parallel`` with NUTS's tree depth capped at 8 / 7 (255 / 127 steps);
- ``nutpie-low_rank`` / ``nutpie-diag``: nutpie's NUTS and its mass-matrix adaptation on the same
  density (a jitted JAX value-and-gradient through ``nutpie.compiled_pyfunc.from_pyfunc``; nutpie is
  not a bayescale dependency: ``pip install nutpie`` to run these). Every gradient crosses into
  Python, so compare its ESS per gradient, not its wall time.

Prints one table: steps per draw, min bulk ESS (every parameter the diagnostics cover) and the worst
variable, max r-hat, divergences, ESS per 1,000 gradients, wall seconds and the load average.
docs/speed.md reports what these measured.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from bayescale.inference.sampling import ensure_host_devices

ensure_host_devices()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scaling import world_grid  # noqa: E402

from bayescale import laws  # noqa: E402
from bayescale.data import grid as grids  # noqa: E402
from bayescale.inference import reparam  # noqa: E402
from bayescale.inference.fit import to_datatree  # noqa: E402
from bayescale.inference.posterior import diagnostics  # noqa: E402

LEVERS = ("parallel", "vectorized", "depth8", "depth7", "nutpie-low_rank", "nutpie-diag")


def numpyro_nuts(family, data, mk, key, lever: str, warmup: int, draws: int):
    from numpyro.infer import MCMC, NUTS, init_to_median

    depth = {"depth8": 8, "depth7": 7}.get(lever, 10)
    kernel = NUTS(family.model, target_accept_prob=0.98, max_tree_depth=depth,
                  init_strategy=init_to_median(num_samples=family.init_samples))
    method = "vectorized" if lever == "vectorized" else "parallel"
    mcmc = MCMC(kernel, num_warmup=warmup, num_samples=draws, num_chains=4, chain_method=method, progress_bar=False)
    mcmc.run(key, data, extra_fields=("diverging", "energy", "num_steps"), **mk)
    samples = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
    extra = mcmc.get_extra_fields(group_by_chain=True)
    return samples, {"diverging": np.asarray(extra["diverging"]), "energy": np.asarray(extra["energy"]),
                     "n_steps": np.asarray(extra["num_steps"])}


def nutpie_nuts(family, data, mk, key, adaptation: str, warmup: int, draws: int):
    import nutpie
    from jax.flatten_util import ravel_pytree
    from numpyro.infer import init_to_median
    from numpyro.infer.util import initialize_model

    info = initialize_model(key, family.model, model_args=(data,), model_kwargs=mk,
                            init_strategy=init_to_median(num_samples=family.init_samples))
    start, unravel = ravel_pytree(info.param_info.z)
    value_and_grad = jax.jit(jax.value_and_grad(lambda x: -info.potential_fn(unravel(x))))

    def make_logp():
        def logp(x, **_):
            value, grad = value_and_grad(jnp.asarray(x, jnp.float32))
            return float(value), np.asarray(grad, dtype=np.float64)
        return logp

    def make_expand(seed1, seed2, chain):
        return lambda x, **_: {"x": np.asarray(x, dtype=np.float64)}

    n = start.size
    model = nutpie.compiled_pyfunc.from_pyfunc(n, make_logp, make_expand, [np.dtype("float64")], [(n,)], ["x"],
                                               make_initial_point_fn=lambda seed: np.asarray(start, np.float64))
    trace = nutpie.sample(model, draws=draws, tune=warmup, chains=4, cores=2, seed=0, adaptation=adaptation,
                          progress_bar=False, target_accept=0.98)
    x = np.asarray(trace.posterior["x"].values)
    constrain = jax.jit(jax.vmap(lambda v: info.postprocess_fn(unravel(v))))
    per_chain = [constrain(jnp.asarray(chain, jnp.float32)) for chain in x]
    samples = {name: np.stack([np.asarray(c[name]) for c in per_chain]) for name in per_chain[0]}
    stats = trace.sample_stats
    return samples, {"diverging": np.asarray(stats["diverging"].values), "energy": np.asarray(stats["energy"].values),
                     "n_steps": np.asarray(stats["n_steps"].values)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", type=int, default=8)
    parser.add_argument("--centring", choices=("auto", "none"), default="auto")
    parser.add_argument("--levers", nargs="+", choices=LEVERS, default=["parallel", "vectorized", "depth8", "depth7"])
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--draws", type=int, default=500)
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    grid = world_grid(args.domains)
    family = laws.get("transfer")
    data, coords = family.model_data(grids.validate_grid(grid, "world"), "world")
    mk = family.model_kwargs("normal")
    key = jax.random.PRNGKey(0)
    if args.centring == "auto":  # fit's own choice (the same pilot key as fit(seed=0))
        data = family.with_centring(data, reparam.choose_centring(family, data, mk, jax.random.fold_in(key, 7)))
    table = Table(title=f"K = {args.domains}, centring {args.centring}, 4 x ({args.warmup} + {args.draws})")
    for col in ("lever", "steps/draw", "min bulk ESS", "worst", "max r-hat", "div.", "ESS/1000 grad", "wall s", "load"):
        table.add_column(col)
    for lever in args.levers:
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        if lever.startswith("nutpie-"):
            samples, stats = nutpie_nuts(family, data, mk, key, lever.split("-", 1)[1], args.warmup, args.draws)
        else:
            samples, stats = numpyro_nuts(family, data, mk, key, lever, args.warmup, args.draws)
        wall = time.perf_counter() - t0
        diag = diagnostics(to_datatree(family, samples, stats, data, coords, mk))
        gradients = int(stats["n_steps"].sum())
        table.add_row(lever, f"{stats['n_steps'].mean():.0f}", f"{diag['min_ess_bulk']:.0f}", str(diag["worst_ess_variable"]),
                      f"{diag['max_rhat']:.3f}", str(diag["divergences"]), f"{1000 * diag['min_ess_bulk'] / gradients:.3f}",
                      f"{wall:.0f}", f"{load:.1f} / {os.getloadavg()[0]:.1f}")
        jax.clear_caches()
    Console(width=160).print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
