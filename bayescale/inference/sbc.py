"""Simulation-based calibration (Talts et al. 2018) of the law families of data amounts (the transfer laws).

If the parameters of a world are drawn from the model's prior and its losses from the
model's likelihood, then for every scalar parameter the rank of the true value among
the posterior draws is uniform, and the posterior predictive intervals of held-out
cells cover at their nominal rates — *if* the sampler is right. Deviations say what is
wrong: a U-shaped rank histogram means over-confident posteriors, a hump under-confident
ones, a slope bias.

The model's priors adapt to the grid in one place: a target's level (log loss at its
reference allocation) is centred on its median observed loss, with a spread far wider than the
data pin it (see :mod:`bayescale.laws.transfer`); a bend's break and the reference allocations
follow the run design, which every world shares. A prior draw cannot reproduce the centring,
so worlds are drawn with unit scales (``loss_floor = loss_scale = 1``) and each world is then
fitted with the scales ``fit`` computes from its own simulated fit runs
(:func:`bayescale.laws.transfer.loss_scales`): what is calibrated is the prior users get,
and a rank histogram that bends in ``E`` or ``A`` says the data-adapted centre misleads.

Every world uses the same run design (single-domain ladders and Dirichlet mixtures at fit
budgets, mixtures above every fit budget held out), so the sampler is compiled once and
reused (``jit_model_args``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path

import jax
import numpy as np
from scipy import stats

from bayescale import laws
from bayescale._files import write_text_atomic
from bayescale.data.simulate import Design, design_runs, draw_world
from bayescale.errors import InputError
from bayescale.inference.sampling import ensure_host_devices
from bayescale.laws.base import LawFamily, self_mask_for
from bayescale.laws.transfer import ModelData, break_centre, loss_scales, reference_allocations
from bayescale.laws.noise import log_budgets

# The scalar quantities whose ranks are recorded: per-target parameters and the
# off-diagonal entries of the transfer matrices.
TARGET_QUANTITIES = ("alpha", "E", "A", "x0", "sigma", "delta", "sigma_run", "noise_slope")
PAIR_QUANTITIES = ("T", "beta")
LEVELS = (0.5, 0.9)
# The sampler of the calibration study: 2 chains x 300 draws after 300 warmup at the
# default target acceptance, 600 draws thinned to 99 for the ranks. Enough for uniform
# ranks when the chains mix, and a K = 3 world takes ~15-40 s on 2 cores.
SAMPLER = {"chains": 2, "warmup": 300, "draws": 300, "target_accept": 0.98, "thin_to": 99}


@dataclasses.dataclass(frozen=True)
class SBCDesign:
    """The run design shared by every world, in law units, and the cells to fit and hold out."""

    domains: tuple[str, ...]
    d: np.ndarray  # (N, K) data per run in law units
    fit: np.ndarray  # (N,) bool: run is fitted (else held out)

    def model_data(self, log_loss: np.ndarray | None, runs: np.ndarray, scales: tuple[np.ndarray, np.ndarray] | None = None) -> ModelData:
        """ModelData for the given runs, every target observed; loss scales ``(floor, scale)``
        (default 1: the scales worlds are drawn with). A bend's prior is centred on the largest
        fit budget, as ``fit`` does."""
        k = len(self.domains)
        obs_run, obs_target = np.meshgrid(np.arange(runs.sum()), np.arange(k), indexing="ij")
        floor, scale = scales if scales is not None else (np.ones(k), np.ones(k))
        fit_obs_run, fit_obs_target = np.meshgrid(np.arange(self.fit.sum()), np.arange(k), indexing="ij")
        self_mask = self_mask_for(self.domains, self.domains)
        return ModelData(
            d=self.d[runs],
            obs_run=obs_run.ravel(),
            obs_target=obs_target.ravel(),
            log_loss=None if log_loss is None else np.asarray(log_loss).reshape(-1),
            log_se=np.zeros(obs_run.size),
            self_mask=self_mask,
            loss_floor=np.asarray(floor, dtype=np.float64),
            loss_scale=np.asarray(scale, dtype=np.float64),
            # Always the fit runs' references: held-out runs are predicted with the fit's E and A.
            reference_d=reference_allocations(self.d[self.fit], fit_obs_run.ravel(), fit_obs_target.ravel(), self_mask),
            break_centre=break_centre(self.d[self.fit]),
            log_budget=log_budgets(self.d[runs].sum(axis=1), self.d[self.fit].sum(axis=1)),
        )


def make_design(domains: int = 3, design: Design | None = None, seed: int = 0) -> SBCDesign:
    """The shared design: ``bayescale.data.simulate``'s run layout for ``domains`` domains."""
    world = draw_world(domains, seed=seed)
    if design is not None:
        world = dataclasses.replace(world, design=design)
    _, data, splits, _ = design_runs(world, np.random.default_rng(seed))
    fit = np.array([s == "fit" for s in splits])
    scale = float(np.median(data[fit][data[fit] > 0]))  # D0 as grid.data_scale defines it
    return SBCDesign(domains=tuple(world.domains), d=data / scale, fit=fit)


def sbc_family(law: str) -> LawFamily:
    """The family to calibrate: one of data amounts, whose worlds this design (ladders and
    mixtures at several budgets, larger ones held out) can simulate."""
    family = laws.get(law)
    if not family.amounts:
        raise InputError(f"law: SBC simulates ladders and mixtures at several budgets; the {law} law ({family.summary}) "
                         "does not model budgets", parameter="law")
    if family.members:
        raise InputError(f"law: the {law} law has no prior to draw worlds from; calibrate its members "
                         f"({', '.join(family.members)}) one by one", parameter="law")
    return family


def _model(law: str):
    family = sbc_family(law)
    return functools.partial(family.model, **family.model_kwargs(family.likelihoods[0]))


def draw_prior_world(design: SBCDesign, key, law: str = "transfer") -> tuple[dict, np.ndarray]:
    """Parameters and log losses of every run (fit and held out) drawn from the model's prior."""
    from numpyro.infer import Predictive

    every_run = np.ones(design.d.shape[0], dtype=bool)
    data = design.model_data(None, every_run)
    sim = Predictive(_model(law), num_samples=1)(key, data)
    truth = {k: np.asarray(v)[0] for k, v in sim.items() if k != "log_loss"}
    return truth, np.asarray(sim["log_loss"])[0].reshape(design.d.shape[0], len(design.domains))


@functools.lru_cache(maxsize=4)
def _sampler(law: str, chains: int, warmup: int, draws: int, target_accept: float):
    from numpyro.infer import MCMC, NUTS, init_to_median

    kernel = NUTS(_model(law), target_accept_prob=target_accept, init_strategy=init_to_median(num_samples=laws.get(law).init_samples))
    chain_method = "parallel" if jax.local_device_count() >= chains else "sequential"
    return MCMC(kernel, num_warmup=warmup, num_samples=draws, num_chains=chains, chain_method=chain_method,
                progress_bar=False, jit_model_args=True)


def ranks(truth: dict, samples: dict, thin_to: int, self_mask: np.ndarray) -> dict[str, list[int]]:
    """Rank of each true scalar among ``thin_to`` evenly thinned posterior draws (0 … thin_to)."""
    n = next(iter(samples.values())).shape[0]
    keep = np.linspace(0, n - 1, thin_to).round().astype(int)
    off = self_mask == 0
    out = {}
    for name in TARGET_QUANTITIES + PAIR_QUANTITIES:
        if name not in samples:
            continue
        post, true = np.asarray(samples[name])[keep], np.asarray(truth[name])
        if name in PAIR_QUANTITIES:
            post, true = post[:, off], true[off]
        if np.all(post == post[:1]):  # fixed by the law (beta = 1 in the linear law)
            continue
        out[name] = [int(r) for r in np.sum(post < true[None], axis=0).ravel()]
    return out


def holdout_coverage(design: SBCDesign, samples: dict, log_loss_holdout: np.ndarray, seed: int, law: str,
                     scales=None) -> dict[str, float]:
    """Share of held-out cells inside the central 50 % / 90 % posterior predictive intervals
    (new runs: their run effects are drawn afresh)."""
    from numpyro.infer import Predictive

    held = ~design.fit
    data = design.model_data(None, held, scales)
    posterior_samples = {k: v for k, v in samples.items() if k not in ("log_loss", "z_run")}
    pred = Predictive(_model(law), posterior_samples=posterior_samples, return_sites=["log_loss"])(
        jax.random.PRNGKey(seed), data
    )["log_loss"]
    pred = np.asarray(pred)
    observed = log_loss_holdout.reshape(-1)
    out = {}
    for level in LEVELS:
        lo, hi = np.quantile(pred, [(1 - level) / 2, (1 + level) / 2], axis=0)
        out[f"coverage_{int(level * 100)}"] = float(np.mean((lo <= observed) & (observed <= hi)))
    return out


def run_world(design: SBCDesign, index: int, *, law: str = "transfer", chains: int = 4, warmup: int = 400,
              draws: int = 250, target_accept: float = 0.98, thin_to: int = 99, seed: int = 0) -> dict:
    """One SBC replicate: draw a world from the prior, fit its fit runs, rank the truth, score held-out cells."""
    key_world, key_fit, key_pred = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), index), 3)
    truth, log_loss = draw_prior_world(design, key_world, law)
    # The fit's own prior construction: loss scales from the world's simulated fit runs.
    scales = loss_scales(np.exp(log_loss[design.fit]))
    data = design.model_data(log_loss[design.fit], design.fit, scales)
    mcmc = _sampler(law, chains, warmup, draws, target_accept)
    mcmc.run(key_fit, data, extra_fields=("diverging",))
    samples = {k: np.asarray(v) for k, v in mcmc.get_samples().items()}
    by_chain = mcmc.get_samples(group_by_chain=True)
    rhat = max(float(np.nanmax(np.asarray(numpyro_rhat(np.asarray(by_chain[name])))))
               for name in TARGET_QUANTITIES + PAIR_QUANTITIES if name in by_chain and np.ptp(np.asarray(by_chain[name])) > 0)
    return {
        "index": index,
        "ranks": ranks(truth, samples, thin_to, design.model_data(None, design.fit).self_mask),
        "thin_to": thin_to,
        "divergences": int(np.asarray(mcmc.get_extra_fields()["diverging"]).sum()),
        "max_rhat": rhat,
        **holdout_coverage(design, samples, log_loss[~design.fit], int(jax.random.randint(key_pred, (), 0, 2**31 - 1)), law, scales),
    }


def model_hash(law: str) -> str:
    """A short hash of the model's code and the law it evaluates: results of another model are refused."""
    import hashlib
    import inspect

    from bayescale.laws import power, transfer

    sbc_family(law)
    # The model's code and priors only: an edit elsewhere in the family's class keeps the results.
    parts = [law, inspect.getsource(transfer.transfer_law_model), inspect.getsource(power.log_loss),
             inspect.getsource(power.log_reducible), inspect.getsource(power.effective_data),
             repr((transfer.E_PRIOR, transfer.E_SHARE_SPREAD, transfer.LEVEL_SD, transfer.RUN_EFFECT_SCALE, transfer.NOISE_SLOPE_SCALE)), inspect.getsource(transfer.reference_allocations)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def numpyro_rhat(x: np.ndarray) -> np.ndarray:
    """Split r-hat over the leading chain axis (NumPyro's implementation), NaN where constant."""
    from numpyro.diagnostics import split_gelman_rubin

    with np.errstate(invalid="ignore", divide="ignore"):
        return split_gelman_rubin(x)


def run_sbc(n_worlds: int, out_dir: str | os.PathLike, *, domains: int = 3, law: str = "transfer", seed: int = 0,
            progress=None, **fit_kwargs) -> list[dict]:
    """Run (or resume) ``n_worlds`` SBC replicates; each finished one is saved as ``world-NNNN.json``.

    A killed run loses at most the world in progress: rerunning skips finished worlds.
    ``progress``: optional callable ``(done, total)``.
    """
    sbc_family(law)
    ensure_host_devices()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    design = make_design(domains, seed=seed)
    settings = {"domains": domains, "law": law, "seed": seed, "model": model_hash(law), **fit_kwargs}
    settings_file = out / "settings.json"
    if settings_file.exists() and json.loads(settings_file.read_text()) != settings:
        raise ValueError(f"{out}: holds SBC results for other settings ({settings_file.read_text().strip()}); use another folder")
    write_text_atomic(settings_file, json.dumps(settings))
    results, fitted = [], 0
    for index in range(n_worlds):
        path = out / f"world-{index:04d}.json"
        if path.exists():
            results.append(json.loads(path.read_text()))
        else:
            result = run_world(design, index, law=law, seed=seed, **fit_kwargs)
            write_text_atomic(path, json.dumps(result))
            results.append(result)
            fitted += 1
            if fitted % 10 == 0:
                # Each world's predictive compiles anew; without this, LLVM runs out of
                # mappable memory after ~40 worlds in one process.
                _sampler.cache_clear()
                jax.clear_caches()
        if progress is not None:
            progress(index + 1, n_worlds)
    return results


def summarise(results: list[dict], bins: int = 10) -> dict:
    """Per quantity: chi-square test of the pooled rank histogram against uniform, and the
    share of true values inside the central 50 % / 90 % posterior intervals (from the ranks);
    over worlds: mean held-out coverage, divergences, worst r-hat."""
    thin_to = results[0]["thin_to"]
    out = {"worlds": len(results), "quantities": {}}
    for name in results[0]["ranks"]:
        r = np.concatenate([np.asarray(res["ranks"][name]) for res in results])
        # Ranks take thin_to + 1 values; bins of equal width in rank/(thin_to+1).
        counts = np.bincount(np.minimum((r * bins) // (thin_to + 1), bins - 1), minlength=bins)
        u = (r + 0.5) / (thin_to + 1)
        out["quantities"][name] = {
            "n": int(r.size),
            "histogram": counts.tolist(),
            "chi2_p": float(stats.chisquare(counts).pvalue),
            "inside_50": float(np.mean(np.abs(u - 0.5) <= 0.25)),
            "inside_90": float(np.mean(np.abs(u - 0.5) <= 0.45)),
        }
    for key in ("coverage_50", "coverage_90"):
        out[f"holdout_{key}"] = float(np.mean([res[key] for res in results]))
    out["worlds_with_divergences"] = int(sum(res["divergences"] > 0 for res in results))
    out["max_rhat"] = float(max(res["max_rhat"] for res in results))
    return out
