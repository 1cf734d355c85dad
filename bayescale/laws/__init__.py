"""Law families and their registry.

A law family (:class:`~bayescale.laws.base.LawFamily`) owns its parameters, how it reads a
grid, its NumPyro model and priors, and its prediction from draws. The layers above —
``fit``, ``posterior``, ``predict``, ``check``, ``compare``, ``sbc``, ``report`` — look a
family up here by name (the posterior's ``law`` attr) and never test a law's name
themselves. Adding a family is one new module and one :func:`register` line below; the
tests run every generic function over every registered family.
"""

from __future__ import annotations

from bayescale.errors import InputError
from bayescale.laws.base import Draws, LawFamily
from bayescale.laws.mixing import MIXING
from bayescale.laws.transfer import BEND, INDEPENDENT, INTERFERENCE, LINEAR, STACK, TRANSFER

FAMILIES: dict[str, LawFamily] = {}


def register(family: LawFamily) -> LawFamily:
    """Add a family to the registry under ``family.name``."""
    if not isinstance(family, LawFamily):
        raise TypeError(f"{family!r} does not implement the LawFamily protocol")
    if family.name in FAMILIES:
        raise ValueError(f"a law family named {family.name!r} is already registered")
    FAMILIES[family.name] = family
    return family


for _family in (TRANSFER, LINEAR, INDEPENDENT, BEND, INTERFERENCE, STACK, MIXING):
    register(_family)


def names() -> tuple[str, ...]:
    """Names of the registered families, in registration order."""
    return tuple(FAMILIES)


def get(name: str, parameter: str = "law") -> LawFamily:
    """The family called ``name``; an unknown name is an error about ``parameter``."""
    try:
        return FAMILIES[name]
    except (KeyError, TypeError):
        raise InputError(f"{parameter}: unknown law {name!r}; choose one of {', '.join(FAMILIES)}", parameter=parameter) from None


def of_draws(draws: Draws) -> LawFamily:
    """The family whose draws these are."""
    return get(draws.law)


def of_posterior(idata) -> LawFamily:
    """The family of a posterior (its ``law`` attr; posteriors from before the registry are ``transfer``)."""
    return get(str(idata.attrs.get("law", "transfer")))


__all__ = ["Draws", "FAMILIES", "LawFamily", "get", "names", "of_draws", "of_posterior", "register"]
