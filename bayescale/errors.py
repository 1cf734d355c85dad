"""The one exception type that the CLI turns into a one-line message and exit status 2."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping


class InputError(ValueError):
    """Bad input from the user: a file, a grid, a posterior, an argument.

    The message is a single line that names what is wrong and where (file, run,
    domain or parameter). A message about one argument starts with the Python
    parameter's name (``"upper: unknown source domain 'ct'"``) and carries it as
    ``parameter``, so the library speaks Python and the CLI can name its own flag
    instead (:meth:`naming`).
    """

    def __init__(self, message: str, *, parameter: str | None = None):
        super().__init__(message)
        if parameter is not None and not message.startswith(parameter):
            raise ValueError(f"an InputError about {parameter!r} must start with that name: {message!r}")
        self.parameter = parameter

    def naming(self, names: Mapping[str, str]) -> str:
        """The message with its parameter called what ``names`` calls it (e.g. ``{"upper": "--max"}``)."""
        text = str(self)
        if self.parameter is not None and not self.parameter.startswith("-") and self.parameter in names:
            return names[self.parameter] + text[len(self.parameter):]
        return text


@dataclasses.dataclass(frozen=True)
class Name:
    """A parameter of a function named inside an error message."""

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
