"""How NUTS sees a hierarchical model: the centring of each hierarchical entry, chosen per grid.

A hierarchical entry ``theta ~ Normal(loc, tau)`` can be sampled non-centred (``theta = loc + tau z``)
or centred (``theta`` itself). Non-centred suits entries the data say little about: centred, they
form a funnel with ``tau``. Centred suits entries the data pin down: non-centred, ``z`` is then a
near-deterministic function of the hyperparameters, a thin ridge. Real grids hold both kinds —
on RegMix the level and exponent of every target are pinned, many transfer exponents are not —
so one choice for the whole model is wrong for some entries, and the sampler's step size is set by
the worst of them (measured: 1023 leapfrog steps per draw, bulk ESS 3-10 in 400 draws).

:func:`choose_centring` picks a centring per entry (Papaspiliopoulos, Roberts and Sköld 2007; Gorinova,
Moore and Hoffman 2020 learn it variationally): in the Gaussian case ``y ~ N(theta, s^2)``,
``theta ~ N(loc, tau^2)``, the non-centred ``z`` has posterior sd ``sqrt(s^2 / (tau^2 + s^2))``, and the
partial centring ``c = tau^2 / (tau^2 + s^2) = 1 - sd(z)^2`` makes the sampled variable independent of
``tau``. ``sd(z)`` comes from a short mean-field SVI pilot of the non-centred model. The prior is the
same for every centring (:func:`bayescale.laws.base.partially_centred_normal`); only the geometry
changes.
"""

from __future__ import annotations

import json

import numpy as np

from bayescale.inference.sampling import interruptible, tenfold_decay
from bayescale.laws.base import LawFamily

__all__ = ["PILOT_STEPS", "centring_attr", "choose_centring"]

#: SVI steps of the pilot (mean-field Gaussian guide): the guide's scales have settled by then on a
#: K = 8 world (the same centring at 8,000 and 20,000 steps; at 2,000 they still depended on where
#: they started). A mean-field guide understates the marginal sd of entries tied to others: on the
#: phantom grid it centres alpha at 0.98 where the non-centred NUTS posterior says 0.41 (A: 0.25 vs
#: 0.52, x0: 0.21 vs 0.13). A full-rank guide came closer there (0.35 / 0.25 / 0.27) but chose a
#: centring under which a K = 8 world did not mix (r-hat 1.46), so the mean-field one stays.
PILOT_STEPS = 8000
# Measured and not kept: a mean-field pilot of a non-centred hierarchy can fall into a worse optimum
# where a scale collapses (a K = 8 world: tau_A ~ 6e-4 against ~0.09, ELBO 40-60 nats worse, from 3 of
# 6 keys); it then leaves every log A non-centred and NUTS ran at its tree depth (r-hat 1.2-1.5).
# Keeping the best of 4 starts fixed that world (all 4 keys: 326-408 steps per draw, r-hat <= 1.031),
# but on a K = 3 grid it moved the centring of log T a little and one chain fell into the centred
# funnel at tau_u = 0 (r-hat 1.9): with 6 pairs tau_u is barely identified, and c = 1 - sd(z)^2 is
# read at the pilot's tau, not at the small taus its posterior allows. Both need a guard first.
# Also measured and not kept: starting each chain from a draw of the pilot's guide (in the centred
# coordinates): no fewer steps on that K = 8 world (345-496 against 326-408 per draw, 4 seeds), and
# the K = 3 grid's chains still split (849 against 120 steps per draw, 22 divergences).


def choose_centring(family: LawFamily, data, model_kwargs: dict, key, *, steps: int = PILOT_STEPS,
                    init_samples: int = 25) -> dict[str, np.ndarray]:
    """Centring in [0, 1] per entry of each of the family's hierarchical sites that the model draws.

    ``1 - sd(z)^2`` with ``sd(z)`` the scale of a mean-field SVI guide of the non-centred model
    (clipped to [0, 1]). Empty (all non-centred) where the family has no hierarchical site or the
    pilot's last 100 steps are not finite (``fit`` then warns and says so in the posterior's attrs)."""
    if not family.hierarchical_sites:
        return {}
    from numpyro import optim
    from numpyro.infer import SVI, Trace_ELBO, init_to_median
    from numpyro.infer.autoguide import AutoNormal

    non_centred = family.with_centring(data, {})

    def model(d, **kwargs):
        family.model(d, **kwargs)

    # init_scale 1: an entry starts as uninformed as its prior (sd 1), so a pilot that has not
    # settled errs towards non-centred, the old default, rather than towards a funnel.
    guide = AutoNormal(model, init_loc_fn=init_to_median(num_samples=init_samples), init_scale=1.0)
    # Clipped steps that decay tenfold over the run: the guide's scales settle instead of
    # jittering (plain Adam at 0.01 had not settled after 6,000 steps on a K = 8 world, and diverged by 15,000).
    svi = SVI(model, guide, optim.ClippedAdam(step_size=tenfold_decay(0.02, steps), clip_norm=10.0), Trace_ELBO())
    # stable_update skips a step whose loss or gradient is not finite (an update that is finite is
    # the same to the bit): on recipe 2's phantom grid a third to a half of the starts hit one to
    # three such steps in their first 65 and, without it, ended in NaN, leaving fit to sample every
    # entry non-centred; with it they settle where the other starts do (ELBO -216 to -240).
    result = interruptible(lambda: svi.run(key, steps, non_centred, progress_bar=False, stable_update=True, **model_kwargs))
    if not np.all(np.isfinite(np.asarray(result.losses[-100:]))):
        return {}
    # The guide's marginal sd of each entry, read off its +-1 sd quantiles (the sites are real-valued).
    low, high = (guide.quantiles(result.params, [q])
                 for q in (0.15865525393145707, 0.8413447460685429))
    centring = {}
    for site in family.hierarchical_sites:
        if site in low:
            sd = (np.asarray(high[site], dtype=np.float64) - np.asarray(low[site], dtype=np.float64)).squeeze(0) / 2.0
            centring[site] = np.clip(1.0 - sd**2, 0.0, 1.0)
    return centring


def centring_attr(centring: dict[str, np.ndarray]) -> str:
    """The centring as a posterior attr (JSON, per site, 3 decimals): the draws of a hierarchical
    site are read with it (``w`` at centring c is ``c loc + tau^c z``)."""
    return json.dumps({site: np.round(np.asarray(c, dtype=np.float64), 3).tolist() for site, c in centring.items()})
