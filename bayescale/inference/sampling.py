"""Running the samplers: host devices for parallel chains, NUTS and SVI over any law
family's model, in a worker thread so that Ctrl-C stops a long fit at once.

An SVI fit is checked the way Yao, Vehtari, Simpson and Gelman (2018, "Yes, but did it
work?") propose: the Pareto k-hat of the importance ratios ``p(theta, y) / q(theta)`` over
draws of the guide (:func:`guide_psis_khat`). k-hat <= 0.7 says the guide is close enough to
the posterior for importance sampling from it to be reliable; above, its intervals cannot be
trusted."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable

import jax
import numpy as np

from bayescale.errors import InputError


def ensure_host_devices(n: int | None = None) -> int:
    """Ask XLA for ``n`` CPU devices (default: at least 4, or one per core) so chains run in parallel.

    XLA reads the setting once, when JAX's backend starts; after that this changes nothing, and
    chains run one after the other where there are fewer devices than chains. So it is called
    where sampling starts (``fit``, ``sbc``, the command line) rather than on import. Returns the
    number of devices JAX has (or will have).
    """
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        return jax.local_device_count()
    import numpyro

    n = n or max(4, os.cpu_count() or 1)
    flags = os.environ.get("XLA_FLAGS", "")
    if "--xla_force_host_platform_device_count" not in flags:
        numpyro.set_host_device_count(n)
        return n
    return int(flags.split("--xla_force_host_platform_device_count=")[1].split()[0])


_ABANDONED: list[threading.Event] = []


def computation_abandoned() -> bool:
    """Is a computation that Ctrl-C left behind still running in this process?

    A process must then end with ``os._exit``: XLA aborts if the interpreter shuts down
    under a running computation. The command line does so (exit status 130)."""
    return any(not finished.is_set() for finished in _ABANDONED)


def interruptible(fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, run so that Ctrl-C (SIGINT) stops the command at once.

    Python handles a signal only between bytecodes of the main thread, and a compiled JAX
    loop (parallel chains, or no progress bar) keeps the main thread inside XLA until the
    whole phase is done, which can be minutes or hours. So the work runs in a daemon thread
    while the main thread waits in short waits, where a KeyboardInterrupt arrives at once;
    the abandoned computation dies with the process, and nothing has been written yet.
    """
    if threading.current_thread() is not threading.main_thread():
        return fn(*args, **kwargs)
    outcome: dict = {}
    finished = threading.Event()
    x64 = bool(jax.config.jax_enable_x64)  # a thread-local setting (jax.enable_x64): carry it over

    def work():
        try:
            with jax.enable_x64(x64):
                outcome["value"] = fn(*args, **kwargs)
        except BaseException as error:  # handed to the caller's thread below
            outcome["error"] = error
        finally:
            finished.set()

    # An Event, not Thread.join: a join interrupted by Ctrl-C marks a running thread as stopped.
    threading.Thread(target=work, name="bayescale-sampler", daemon=True).start()
    try:
        while not finished.wait(0.1):
            pass
    except KeyboardInterrupt:
        _ABANDONED.append(finished)
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def sample_nuts(model, data, model_kwargs: dict, key, *, chains: int, warmup: int, draws: int, target_accept: float,
                dense_mass: bool | list, init_samples: int, progress: bool,
                on_warmup: Callable[[dict], None] | None = None) -> tuple[dict, dict]:
    """NUTS draws of ``model(data, **model_kwargs)``: samples and sampler stats, shaped (chain, draw, ...).

    ``on_warmup``: called once warm-up has finished with :func:`sampling_estimate`'s dict (how
    long warm-up took, how long the draws will take), so a long fit can say when it will end.
    Warm-up and sampling then run as two calls, which continue the same chains (the draws are
    the same to the bit) at the cost of compiling the sampler twice (about 3 s); without it, one."""
    from numpyro.infer import MCMC, NUTS, init_to_median

    # Chains run in parallel when the host exposes enough XLA devices (ensure_host_devices).
    chain_method = "parallel" if jax.local_device_count() >= chains else "sequential"
    kernel = NUTS(model, target_accept_prob=target_accept, init_strategy=init_to_median(num_samples=init_samples), dense_mass=dense_mass)
    mcmc = MCMC(kernel, num_warmup=warmup, num_samples=draws, num_chains=chains, chain_method=chain_method, progress_bar=progress)
    fields = ("diverging", "energy", "num_steps")

    def sample():
        if on_warmup is None:
            mcmc.run(key, data, extra_fields=fields, **model_kwargs)
        else:
            with compile_seconds() as compiling:
                start = time.perf_counter()
                mcmc.warmup(key, data, extra_fields=("num_steps",), collect_warmup=True, **model_kwargs)
                steps = np.asarray(mcmc.get_extra_fields(group_by_chain=True)["num_steps"])  # waits for warm-up
                elapsed = time.perf_counter() - start
            on_warmup(sampling_estimate(steps, elapsed, draws, compiling[0]))
            # The post-warm-up state carries each chain's key on: the chains go on as one run would.
            mcmc.run(mcmc.post_warmup_state.rng_key, data, extra_fields=fields, **model_kwargs)
        # np.asarray waits for the (asynchronously dispatched) chains: inside, so Ctrl-C reaches it.
        samples = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
        extra = mcmc.get_extra_fields(group_by_chain=True)
        stats = {"diverging": np.asarray(extra["diverging"]), "energy": np.asarray(extra["energy"]), "n_steps": np.asarray(extra["num_steps"])}
        return samples, stats

    return interruptible(sample)


#: Warm-up's last iterations, after NumPyro's last step-size and mass-matrix update but one, are
#: the ones whose tree sizes the draws will have: its final adaptation window is 50 iterations.
SETTLED_WARMUP = 50
#: Compiling the draws' loop takes about this share of what compiling warm-up took (its loop and
#: the initialisation): 6.7 of 18.3 s on the phantom grid, 2 chains, this machine.
SAMPLING_COMPILE_SHARE = 0.4


@contextlib.contextmanager
def compile_seconds():
    """Seconds XLA spends tracing and compiling inside the block (from :mod:`jax.monitoring`):
    yields a one-element list filled in when the block ends."""
    total = [0.0]

    def listener(event: str, seconds: float, **_) -> None:
        if event.startswith("/jax/core/compile/"):
            total[0] += seconds

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield total
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def sampling_estimate(warmup_steps: np.ndarray, warmup_seconds: float, draws: int, compile_seconds: float = 0.0) -> dict:
    """How long ``draws`` NUTS iterations will take, from warm-up's leapfrog steps (chain, iteration),
    its wall time and the part of it spent compiling: the seconds per leapfrog step warm-up ran at,
    times the draws' steps, taken at the mean tree size of warm-up's last :data:`SETTLED_WARMUP`
    iterations, for the chain with the most work ahead (chains in parallel end with the slowest),
    plus compiling the draws' loop (:data:`SAMPLING_COMPILE_SHARE`). Measured on the phantom grid
    (2 chains, 300 warm-up, 600 draws): 48.5 s estimated against 50.0 s taken."""
    steps = np.asarray(warmup_steps, dtype=float).reshape(-1, np.shape(warmup_steps)[-1])
    settled = steps[:, -min(SETTLED_WARMUP, steps.shape[1]):].mean(axis=1)
    ahead = draws * settled / np.maximum(steps.sum(axis=1), 1.0)  # draws' steps per warm-up step, per chain
    running = max(warmup_seconds - compile_seconds, 0.0)
    return {"warmup_seconds": float(warmup_seconds), "draws": int(draws), "steps_per_draw": float(settled.max()),
            "estimated_seconds": float(running * ahead.max() + SAMPLING_COMPILE_SHARE * compile_seconds)}


def tenfold_decay(start: float, steps: int):
    """An SVI step size that falls from ``start`` tenfold over ``steps`` steps: the guide settles
    instead of jittering, or blowing up, at a constant step."""
    return lambda i: start * 0.1 ** (i / steps)


PSIS_DRAWS = 1000  # at least this many guide draws for the Pareto k-hat of an SVI fit


class SVIFit(tuple):
    """What :func:`approximate_svi` returns: unpacks as ``(samples, final_loss)``; ``psis_khat`` (the
    Pareto k-hat of the guide, :func:`guide_psis_khat`) rides along, for the posterior's attrs."""

    def __new__(cls, samples: dict, final_loss: float, psis_khat: float, step_schedule: str = "constant"):
        fitted = super().__new__(cls, (samples, final_loss))
        fitted.psis_khat = float(psis_khat)
        fitted.step_schedule = step_schedule  # "decaying" where the constant step diverged
        return fitted

    @property
    def samples(self) -> dict:
        return self[0]

    @property
    def final_loss(self) -> float:
        return self[1]


def guide_psis_khat(model, guide, params: dict, data, model_kwargs: dict, key, n_draws: int = PSIS_DRAWS) -> float:
    """Pareto k-hat of ``log p(theta, y) - log q(theta)`` over ``n_draws`` draws ``theta ~ q`` of the guide.

    Both log densities come from numpyro's ``log_density``: the guide's (its draws of the latent
    sites, with the Jacobian of their constraining transforms) and the model's, replayed at the
    guide's draws, observations included. The draws are independent (relative efficiency 1).
    NaN where a log ratio is NaN."""
    from arviz_stats.base import array_stats
    from numpyro import handlers
    from numpyro.infer.util import log_density

    def log_ratio(k):
        log_q, trace = log_density(handlers.seed(guide, k), (data,), model_kwargs, params)
        log_p, _ = log_density(handlers.replay(model, trace), (data,), model_kwargs, params)
        return log_p - log_q

    ratios = np.asarray(jax.vmap(log_ratio)(jax.random.split(key, n_draws)), dtype=np.float64)
    if np.isnan(ratios).any():
        return float("nan")
    # A draw outside the model's support has ratio 0: a very small log ratio stands in for -inf.
    ratios = np.where(np.isneginf(ratios), np.min(ratios[np.isfinite(ratios)], initial=0.0) - 1e3, ratios)
    if np.isposinf(ratios).any():
        return float("inf")
    if np.ptp(ratios) <= 1e-9 * max(1.0, float(np.max(np.abs(ratios)))):
        return float("-inf")  # the guide is the posterior (up to a constant): no tail at all
    # arviz-stats' psislw takes the log ratios negated (its LOO convention, -log_lik) and fits the
    # generalized Pareto to the right tail of the ratios themselves.
    _, khat = array_stats.psislw(-ratios, r_eff=1.0)
    return float(khat)


def approximate_svi(model, data, model_kwargs: dict, key, *, n_draws: int, steps: int, init_samples: int,
                    progress: bool) -> SVIFit:
    """A full-rank Gaussian guide fitted by SVI, and ``n_draws`` draws of every latent and
    deterministic site from it (shaped (1, draw, ...)); with the mean ELBO loss of the last 100 steps
    and the guide's Pareto k-hat over ``max(n_draws, PSIS_DRAWS)`` further draws (:class:`SVIFit`)."""
    import numpyro.optim as optim
    from numpyro import handlers
    from numpyro.infer import SVI, Predictive, Trace_ELBO, init_to_median
    from numpyro.infer.autoguide import AutoMultivariateNormal

    guide = AutoMultivariateNormal(model, init_loc_fn=init_to_median(num_samples=init_samples))
    fit_key, draw_key = jax.random.split(key)
    psis_key = jax.random.fold_in(key, 1)  # a stream of its own: the draws above stay what they were

    def optimise(step_size):
        svi = SVI(model, guide, optim.ClippedAdam(step_size=step_size), Trace_ELBO())
        result = svi.run(fit_key, steps, data, progress_bar=progress, **model_kwargs)
        return result, np.asarray(result.losses)

    result, losses = interruptible(optimise, 0.01)
    schedule = "constant"
    if not np.isfinite(losses[-1]):
        # A constant step of 0.01 can blow up late in the run on a large grid (RegMix's 17 x 13:
        # a non-finite ELBO at step 3,658 of 5,000); steps that decay tenfold over the run settle
        # instead. Only then: a fit that converged at the constant step stays what it was.
        result, losses = interruptible(optimise, tenfold_decay(0.01, steps))
        schedule = "decaying"
    if not np.isfinite(losses[-1]):
        raise InputError("method: SVI diverged (non-finite ELBO); use method 'nuts' for this grid", parameter="method")
    # Ask for every latent and deterministic site: by default Predictive returns only
    # the sites the guide does not sample.
    trace = handlers.trace(handlers.seed(model, 0)).get_trace(data, **model_kwargs)
    sites = [name for name, site in trace.items() if site["type"] in ("sample", "deterministic") and not site.get("is_observed")]
    predictive = Predictive(model, guide=guide, params=result.params, num_samples=n_draws, return_sites=sites)
    draws = predictive(draw_key, data, **model_kwargs)
    samples = {k: np.asarray(v)[None] for k, v in draws.items() if k != "log_loss"}
    khat = interruptible(guide_psis_khat, model, guide, result.params, data, model_kwargs, psis_key,
                         max(n_draws, PSIS_DRAWS))
    return SVIFit(samples, float(np.mean(losses[-100:])), khat, schedule)
