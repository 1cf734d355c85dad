"""Timing of the many-draw law: predict 10,000 allocations x 4,000 posterior draws (a benchmark, not a test).

    .venv/bin/python benchmarks/bench_predict.py [--repeats 5] [--domains 5 8 17] [--resolve]

For each number of domains K (K sources x K targets) it times ``loss_draws`` (the (S, N, J) law
loss that predict, check and the figures read) against the implementation it replaced, kept
below as the reference, in the same process, alternating old and new, and prints the median
of the repeats, their ratio, the largest relative difference between the two and the machine's
load average (1 minute, before and after). Writes the table to benchmarks/results/bench_predict.md.

The draws are synthetic but shaped like a posterior: the parameters of a simulated world
(``simulate.draw_world(K, seed=0)``), each draw multiplied by log-normal noise of sd 0.1 (the
spread of a well-identified posterior), beta clipped to (0.05, 1]. The allocations are Dirichlet(1)
mixtures of 64 x data_scale raw units, the fit budgets' range.

``--resolve`` (``make bench-predict`` passes it) also times the allocation re-solve with a new
budget on a compiled cvar:0.9 program (K = 8, S = 4,000 NUTS draws: benchmarks/bench_allocate.py's
cached fit, 4-5 minutes the first time), with ``LawEval``'s evaluation before issue 15 (kept below)
and now, and checks that both give the same allocations and gaps to the bit (on draws without the law's
error past the data, which the old evaluation does not know).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import resource
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from rich.console import Console
from rich.table import Table

from bayescale.data import simulate
from bayescale.laws.base import self_mask_for
from bayescale.laws.power import log_reducible
from bayescale.laws.power import reducible_and_slopes as _reducible_and_slopes
from bayescale.laws.transfer import LawDraws, loss_draws

RESULTS = Path(__file__).resolve().parent / "results" / "bench_predict.md"


# ---------------------------------------------------------------------------
# the implementation before issue 15 (commit bfbe3df), kept as the reference


@functools.partial(jax.jit, static_argnames=("log",))
def old_loss_all_draws(d, E, A, alpha, x0, T, beta, self_mask, delta, log_xb, kappa, log=False):
    """(N, I) allocations x S draws -> (S, N, J) law loss (or its log)."""
    log_d = jnp.log(d)  # (N, I)
    transfer = T * (1.0 - self_mask)  # (S, I, J); a target's own source enters via d @ self_mask
    x = x0[:, None, :] + (d @ self_mask)[None]
    for i in range(d.shape[1]):
        x = x + transfer[:, None, i, :] * jnp.exp(beta[:, None, i, :] * log_d[None, :, i, None])
    log_x = jnp.log(jax.lax.optimization_barrier(x))
    log_r = log_reducible(log_x, jnp.log(A)[:, None, :], alpha[:, None, :], delta[:, None, :], log_xb[:, None, :])
    interference = jnp.einsum("ni,sij->snj", d, kappa * (1.0 - self_mask))  # 0 without interference
    if log:
        base = jnp.logaddexp(jnp.log(E)[:, None, :], log_r)
        return base + jnp.log1p(interference * jnp.exp(-base))
    return E[:, None, :] + jnp.exp(log_r) + interference


def old_loss_draws(draws: LawDraws, allocations, *, log: bool = False, chunk: int = 256) -> np.ndarray:
    allocations = np.asarray(allocations, dtype=np.float32)
    single = allocations.ndim == 1
    d = np.atleast_2d(allocations) / np.float32(draws.data_scale)
    params = [jnp.asarray(p, dtype=jnp.float32) for p in (draws.E, draws.A, draws.alpha, draws.x0, draws.T, draws.beta)]
    mask = jnp.asarray(draws.self_mask, dtype=jnp.float32)
    zeros = np.zeros_like(draws.E)
    bend = [jnp.asarray(zeros if p is None else p, dtype=jnp.float32) for p in (draws.delta, draws.log_xb)]
    bend.append(jnp.asarray(np.zeros_like(draws.T) if draws.kappa is None else draws.kappa, dtype=jnp.float32))
    n = d.shape[0]
    chunk = min(chunk, n)
    padded = np.concatenate([d, np.ones((-n % chunk, d.shape[1]), np.float32)])
    result = np.empty((draws.n_draws, padded.shape[0], len(draws.targets)), dtype=np.float32)
    for i in range(0, padded.shape[0], chunk):
        result[:, i : i + chunk] = np.asarray(old_loss_all_draws(jnp.asarray(padded[i : i + chunk]), *params, mask, *bend, log=log))
    result = result[:, :n]
    return result[:, 0, :] if single else result


# ---------------------------------------------------------------------------


def posterior_like(domains: int, n_draws: int, seed: int = 0) -> LawDraws:
    """Draws around a simulated world's parameters (log-normal noise of sd 0.1 per draw)."""
    world = simulate.draw_world(domains, seed=seed)
    rng = np.random.default_rng(seed)
    jitter = lambda v: v * np.exp(rng.normal(0.0, 0.1, (n_draws,) + np.shape(v)))
    eye = np.eye(domains)
    return LawDraws(sources=world.domains, targets=world.domains, self_mask=self_mask_for(world.domains, world.domains),
                    E=jitter(world.E), A=jitter(world.A), alpha=jitter(world.alpha), x0=jitter(world.x0),
                    sigma=jitter(world.sigma), T=eye + (1 - eye) * jitter(world.T),
                    beta=eye + (1 - eye) * np.clip(jitter(world.beta), 0.05, 1.0), data_scale=world.data_scale)


def load() -> float:
    return os.getloadavg()[0]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(fn, *args):
    """(wall seconds, CPU seconds of this process, result)."""
    c0, t0 = cpu_seconds(), time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, cpu_seconds() - c0, out


def bench_domains(domains: int, n_draws: int, n_alloc: int, repeats: int, old_repeats: int) -> dict:
    draws = posterior_like(domains, n_draws)
    D = np.random.default_rng(1).dirichlet(np.ones(domains), n_alloc) * 64 * draws.data_scale
    load_before = load()
    first = {}
    for name, fn in (("old", old_loss_draws), ("new", loss_draws)):
        t0 = time.perf_counter()
        out = fn(draws, D[:1000])  # compile (the chunk shape), touch the memory
        first[name] = time.perf_counter() - t0
        del out
    times = {"old": [], "new": []}
    cpus = {"old": [], "new": []}
    worst = 0.0
    for r in range(repeats):
        wall, cpu, new = timed(loss_draws, draws, D)
        times["new"].append(wall)
        cpus["new"].append(cpu)
        if r < old_repeats:
            wall, cpu, old = timed(old_loss_draws, draws, D)
            times["old"].append(wall)
            cpus["old"].append(cpu)
            worst = max(worst, float(np.max(np.abs(new / old - 1))))
            del old
        del new
    med = {k: statistics.median(v) for k, v in times.items()}
    cpu = {k: statistics.median(v) for k, v in cpus.items()}
    return {"K": domains, "old": med["old"], "new": med["new"], "old_cpu": cpu["old"], "new_cpu": cpu["new"],
            "old_runs": len(times["old"]), "new_runs": len(times["new"]), "ratio": med["old"] / med["new"],
            "first_old": first["old"], "first_new": first["new"], "max_rel": worst, "load": (load_before, load())}


# ---------------------------------------------------------------------------
# the allocation re-solve: LawEval's evaluation before issue 15, kept as the reference


class OldLawEvalMethods:
    """``values``, ``point`` and ``term_grad`` of :class:`bayescale.optimise.riskprog.LawEval` before issue 15."""

    def values(self, D) -> np.ndarray:
        """(S, J) losses at one raw allocation."""
        d = np.maximum(np.asarray(D, dtype=np.float64), 0.0) / self.D0
        with np.errstate(divide="ignore"):
            return self.E + _reducible_and_slopes(self._x(d)[0], self.A, self.alpha, self.delta, self.xb)[0] + np.einsum("i,sij->sj", d, self.kappa)

    def point(self, D, free) -> dict:
        """Losses and what gradients (:meth:`term_grad`) and Hessians (:meth:`hessian`) need, at a raw allocation."""
        d = np.maximum(np.asarray(D, dtype=np.float64), 0.0) / self.D0
        free = np.asarray(free)
        x, pw = self._x(d)
        R, c1, a = _reducible_and_slopes(x, self.A, self.alpha, self.delta, self.xb)  # R, dL/dx, d2L/dx2 >= 0
        L = self.E + R + np.einsum("i,sij->sj", d, self.kappa)
        ds = np.maximum(d[free], 1e-12)  # the slope of d ** beta is infinite at 0: evaluate just inside
        if self._Tb is None:
            self._Tb = self.T * self.beta
            self._Tbb = self._Tb * (self.beta - 1.0)
        if np.all(d[free] > 0):
            pwm1 = pw[:, free, :] / ds[None, :, None]  # d ** (beta - 1)
        else:
            pwm1 = np.exp((self.beta[:, free, :] - 1.0) * np.log(ds)[None, :, None])
        dx = self.mask[free][None] + self._Tb[:, free, :] * pwm1  # (S, n, J)
        d2x = self._Tbb[:, free, :] * (pwm1 / ds[None, :, None])  # (S, n, J), <= 0
        return {"L": L, "dx": dx, "d2x": d2x, "c1": c1, "a": a, "kappa": self.kappa[:, free, :]}

    def term_grad(self, pt, v) -> np.ndarray:
        """(S, n_free) gradients of f_s = L_s . v in the free raw amounts."""
        v = np.asarray(v)
        return (np.einsum("snj,sj->sn", pt["dx"], pt["c1"] * v[None, :]) + pt["kappa"] @ v) / self.D0


def bench_resolve(cache: Path, repeats: int) -> dict:
    """Median time to re-solve cvar:0.9 at 5 new budgets on the compiled K = 8, S = 4,000 problem of
    benchmarks/bench_allocate.py (its cached NUTS fit), with the old and the new LawEval, alternating."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_allocate as ba

    from bayescale.optimise import allocate as al
    from bayescale.optimise import riskprog

    new = {k: getattr(riskprog.LawEval, k) for k in ("values", "point", "term_grad")}
    old = {k: getattr(OldLawEvalMethods, k) for k in new}
    # Without the law's error past the fit runs' data: the old evaluation predates it (it scales
    # each draw's loss past the reach since 2026-12-06), so with it the two would solve different programs.
    draws = dataclasses.replace(ba.posterior(cache), slope_error=None)
    budgets = [ba.BUDGET * f for f in (0.5, 0.75, 1.5, 2.0, 3.0)]
    problems, times, results = {}, {"old": [], "new": []}, {"old": [], "new": []}
    load_before = load()
    try:
        for r in range(repeats + 1):  # the first round compiles (cold solve) and is not timed
            for name, methods in (("old", old), ("new", new)):
                for k, f in methods.items():
                    setattr(riskprog.LawEval, k, f)
                if r == 0:
                    problem = al.AllocationProblem(draws, al.build_spec(draws, objective="cvar:0.9"), reference_budget=ba.BUDGET)
                    problems[name] = (problem, problem.solve(ba.BUDGET))
                    continue
                problem, sol = problems[name]
                for b in budgets:
                    t0 = time.perf_counter()
                    s = problem.solve(b, start=sol.D * b / ba.BUDGET)
                    times[name].append(time.perf_counter() - t0)
                    if r == 1:
                        results[name].append(s)
    finally:
        for k, f in new.items():
            setattr(riskprog.LawEval, k, f)
    same = all(np.array_equal(a.D, b.D) and a.rel_gap == b.rel_gap for a, b in zip(results["old"], results["new"]))
    return {"old": statistics.median(times["old"]), "new": statistics.median(times["new"]), "n": len(times["new"]),
            "identical": same, "max_gap": max(s.rel_gap for s in results["new"]),
            "qp": statistics.median(s.qp_solves for s in results["new"]), "load": (load_before, load())}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--old-repeats", type=int, default=3, help="repeats of the old implementation (slow at K = 17)")
    parser.add_argument("--domains", type=int, nargs="+", default=[5, 8, 17])
    parser.add_argument("--draws", type=int, default=4000)
    parser.add_argument("--allocations", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--resolve", action="store_true",
                        help="also time the allocation re-solve (cvar:0.9, K = 8, S = 4,000; the NUTS fit cached by bench_allocate.py)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/bayescale-bench"), help="bench_allocate.py's fit cache")
    args = parser.parse_args()
    console = Console()
    rows = []
    for k in args.domains:
        console.print(f"K = {k} …")
        rows.append(bench_domains(k, args.draws, args.allocations, args.repeats, min(args.old_repeats, args.repeats)))

    title = (f"loss_draws: {args.allocations:,} allocations x {args.draws:,} draws, K sources x K targets "
             f"(median of repeats; {cpu_model()}, {os.cpu_count()} CPUs; load average = 1-minute before/after)")
    header = ("K", "old (s)", "new (s)", "old / new", "CPU s old / new", "first call old / new (s)", "max rel. diff new vs old",
              "load average")
    cells = [(str(r["K"]), f"{r['old']:.3f} ({r['old_runs']})", f"{r['new']:.3f} ({r['new_runs']})", f"{r['ratio']:.1f}x",
              f"{r['old_cpu']:.2f} / {r['new_cpu']:.2f}",
              f"{r['first_old']:.2f} / {r['first_new']:.2f}", f"{r['max_rel']:.1e}", f"{r['load'][0]:.2f} / {r['load'][1]:.2f}")
             for r in rows]
    table = Table(title=title)
    for h in header:
        table.add_column(h, justify="right")
    for c in cells:
        table.add_row(*c)
    console.print(table)
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c) + " |" for c in cells]
    lines += ["", "old: `loss_draws` before issue 15 (kept in benchmarks/bench_predict.py); new: bayescale.laws.transfer.loss_draws.",
              "(n) after a time: the number of repeats. CPU s: this process's CPU seconds per call (median), all threads;",
              "on a shared machine it is the steadier figure. XLA splits the new kernel in 2 parallel partitions, so on",
              "2 idle cores its wall time can fall towards CPU s / 2 (not measured here unless the load average is ~0).",
              "First call: 1,000 allocations, compilation included.",
              "Draws: simulate.draw_world(K, seed=0) parameters times log-normal(0, 0.1) noise per draw.", ""]
    if args.resolve:
        console.print("allocation re-solve …")
        r = bench_resolve(args.cache, max(1, args.repeats // 2))
        line = (f"Allocation re-solve, new budget (cvar:0.9, K = 8, S = 4,000, compiled problem, warm start; median of {r['n']}): "
                f"old {r['old'] * 1e3:.0f} ms, new {r['new'] * 1e3:.0f} ms ({r['old'] / r['new']:.2f}x); "
                f"{'identical allocations and gaps' if r['identical'] else 'ALLOCATIONS DIFFER'}; max gap {r['max_gap']:.1e}, "
                f"{r['qp']:.0f} QP solves per re-solve; load average {r['load'][0]:.2f} / {r['load'][1]:.2f}.")
        console.print(line)
        lines += [line, ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
