"""Errors about an argument of :func:`~bayescale.optimise.allocate.allocate` that name it in Python.

A message starts with the parameter's name (``"upper: unknown source domain 'x'"``) and may
name other parameters inside (``"fixed: 'ct' is fixed at 50, above its upper cap 10"``). It is
built from pieces, with :class:`Name` for each parameter, so that the command line can spell
every one of them as its flag (``--fixed``, ``--max``) without parsing text: see
:meth:`ParameterError.naming`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from bayescale.errors import InputError
from bayescale.inference.posterior import LawDraws


@dataclasses.dataclass(frozen=True)
class Name:
    """A parameter of :func:`~bayescale.optimise.allocate.allocate` named inside an error message."""

    parameter: str


def _spell(parts, names: Mapping[str, str] | None = None) -> str:
    out = []
    for part in parts:
        if isinstance(part, Name):
            out.append(names[part.parameter] if names is not None and part.parameter in names else part.parameter)
        else:
            out.append(str(part))
    return "".join(out)


class ParameterError(InputError):
    """Bad input about a parameter; the message may name other parameters too.

    Built from pieces: text, and :class:`Name` for every parameter the message names, the
    first piece naming the parameter it is about::

        ParameterError(Name("fixed"), ": 'ct' is fixed at 50, above its ", Name("upper"), " cap 10")

    ``str(error)`` spells the Python names (``"fixed: 'ct' is fixed at 50, above its upper cap 10"``);
    :meth:`naming` spells every named parameter as a mapping calls it (the command line's flags:
    ``"--fixed: 'ct' is fixed at 50, above its --max cap 10"``).
    """

    def __init__(self, *parts):
        self.parts = tuple(parts)
        parameter = self.parts[0].parameter if self.parts and isinstance(self.parts[0], Name) else None
        super().__init__(_spell(self.parts), parameter=parameter)

    def naming(self, names: Mapping[str, str]) -> str:
        """The message with every parameter it names called what ``names`` calls it."""
        return _spell(self.parts, names)


def source_index(draws: LawDraws, name: str, parameter: str) -> int:
    """Index of source domain ``name``; a :class:`ParameterError` about ``parameter`` if there is none."""
    if name not in draws.sources:
        raise ParameterError(Name(parameter), f": unknown source domain {name!r}; the posterior's sources are "
                                              f"{', '.join(draws.sources)}")
    return draws.sources.index(name)


def target_index(draws: LawDraws, name: str, parameter: str) -> int:
    """Index of target domain ``name``; a :class:`ParameterError` about ``parameter`` if there is none."""
    if name not in draws.targets:
        raise ParameterError(Name(parameter), f": unknown target domain {name!r}; the posterior's targets are "
                                              f"{', '.join(draws.targets)}")
    return draws.targets.index(name)
