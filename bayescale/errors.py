"""The one exception type that the CLI turns into a one-line message and exit status 2."""

from __future__ import annotations

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
