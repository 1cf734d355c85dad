"""Posterior draws of the transfer-law families as flat NumPy arrays (:class:`LawDraws`), and the
law's loss under many draws for many allocations at once (:func:`loss_draws`): what ``predict``,
``allocate``, ``check`` and ``hubs`` work on."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from bayescale.errors import InputError
from bayescale.laws import power as laws

TARGET_PARAMS = ("E", "A", "alpha", "x0", "sigma")
PAIR_PARAMS = ("T", "beta")
BEND_PARAMS = ("delta", "log_xb")  # (target,): zero delta (no bend) where a posterior lacks them
OPTIONAL_PARAMS = ("nu", "sigma_run", "kappa", "slope_error", "noise_slope") + BEND_PARAMS  # present in some posteriors only

#: Bytes of law loss per compiled call of :func:`loss_draws`: under glibc's 32 MiB mmap threshold, so
#: XLA's output buffer comes back from the heap instead of being mapped (and page-faulted) afresh
#: each call (measured: 4x slower per allocation at 64 MiB chunks), and big enough that the Python
#: loop over chunks costs little.
CHUNK_BYTES = 16 << 20


@dataclasses.dataclass(frozen=True)
class LawDraws:
    """Posterior draws of a transfer-law family, flattened over (chain, draw) into one axis of length S.

    The flat NumPy view that ``predict``, ``allocate``, ``check`` and ``hubs`` work on; the
    bootstrap (:mod:`bayescale.inference.bootstrap`) makes one too, one draw per replicate."""

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
    delta: np.ndarray | None = None  # (S, J) extra exponent past the break (None: no bend)
    log_xb: np.ndarray | None = None  # (S, J) log of the break in effective data (law units)
    sigma_run: np.ndarray | None = None  # (S,) sd of the run effect shared by a run's targets (None: 0)
    kappa: np.ndarray | None = None  # (S, I, J) loss added per law unit of another source's data (None: 0)
    # (S, J) error of the law's log-log slope past the fit runs' largest total data ``reach``
    # (raw units), calibrated by leaving the future out (bayescale.inference.extrapolation); None: none.
    slope_error: np.ndarray | None = None
    reach: float | None = None
    # (S,) gamma: a run's misfit sd is sigma (B / noise_reach)^-gamma, B its total data (raw units),
    # clipped below at noise_low (the fit runs' smallest); None: a constant sd.
    noise_slope: np.ndarray | None = None
    noise_reach: float | None = None
    noise_low: float | None = None
    run_effect_falls: bool = False  # the run effect (sigma_run) falls with the run's data like the misfit

    @property
    def n_draws(self) -> int:
        return self.E.shape[0]

    def subset(self, index) -> LawDraws:
        """The draws at ``index`` (an index array or slice along the draw axis)."""
        fields = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in TARGET_PARAMS + PAIR_PARAMS + OPTIONAL_PARAMS and value is not None:
                value = value[index]
            fields[f.name] = value
        return LawDraws(**fields)

    def source_index(self, name: str, parameter: str = "allocation") -> int:
        """Index of source ``name``; an unknown name is an error about ``parameter``."""
        if name not in self.sources:
            raise InputError(f"{parameter}: unknown source domain {name!r}; the posterior's sources are {', '.join(self.sources)}",
                             parameter=parameter)
        return self.sources.index(name)

    def target_index(self, name: str, parameter: str = "weights") -> int:
        """Index of target ``name``; an unknown name is an error about ``parameter``."""
        if name not in self.targets:
            raise InputError(f"{parameter}: unknown target domain {name!r}; the posterior's targets are {', '.join(self.targets)}",
                             parameter=parameter)
        return self.targets.index(name)




def loss_draws(draws: LawDraws, allocations, *, log: bool = False, chunk: int | None = None) -> np.ndarray:
    """Law loss of every target for each allocation under each draw.

    ``allocations``: (N, I) or (I,) array in the grid's data units (not rescaled).
    Returns (S, N, J) float32 (or (S, J) for a single allocation): a view of an (S, J, N) array,
    the layout :func:`bayescale.laws.power.loss_all_draws` computes in (transposing it would cost
    more than computing it). The allocations go through it ``chunk`` at a time (by default as many
    as make :data:`CHUNK_BYTES` of output, a multiple of 16 up to 256); each chunk's result is
    copied into place while XLA computes the next.
    """
    allocations = np.asarray(allocations, dtype=np.float32)
    single = allocations.ndim == 1
    d = np.atleast_2d(allocations) / np.float32(draws.data_scale)
    f32 = lambda p: None if p is None else jnp.asarray(p, dtype=jnp.float32)
    params = [f32(p) for p in (draws.E, draws.A, draws.alpha, draws.x0, draws.T, draws.beta, draws.self_mask)]
    # No bend (delta = 0) or no interference (kappa = 0): the kernel skips those terms (they add 0).
    log_xb = np.zeros_like(draws.E) if draws.log_xb is None else draws.log_xb
    extra = ([None, None] if draws.delta is None else [f32(draws.delta), f32(log_xb)]) + [f32(draws.kappa)]
    others = laws.other_sources(draws.self_mask)
    n, n_draws, n_targets = d.shape[0], draws.n_draws, len(draws.targets)
    if chunk is None:
        chunk = int(np.clip(CHUNK_BYTES // (4 * n_draws * n_targets) // 16 * 16, 16, 256))
    # Pad to whole chunks so every call has the same shape and XLA compiles once; a chunk is a
    # multiple of 16 rows (one AVX-512 vector) so that a few allocations, or one, are computed by
    # the same vector code as many, to the bit (and compile once for any N <= 16).
    chunk = min(chunk, -(-n // 16) * 16)
    padded = np.concatenate([d, np.ones((-n % chunk, d.shape[1]), np.float32)])
    result = np.empty((n_draws, n_targets, n), dtype=np.float32)
    pending = None
    for i in range(0, n + chunk, chunk):
        # Dispatch chunk i (XLA runs it asynchronously), then copy the previous one into place.
        current = None if i >= n else (
            i, laws.loss_all_draws(jnp.asarray(padded[i : i + chunk]), *params, *extra, others=others, log=log))
        if pending is not None:
            j, out = pending
            result[:, :, j : j + chunk] = np.asarray(out)[:, :, : n - j]
        pending = current
    return result[:, :, 0] if single else result.swapaxes(1, 2)


