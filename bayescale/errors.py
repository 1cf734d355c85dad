"""The one exception type that the CLI turns into a one-line message and exit status 2."""


class InputError(ValueError):
    """Bad input from the user: a file, a grid, a posterior, a flag.

    The message is a single line that names what is wrong and where
    (file, run, domain or flag), so the CLI can print it as it is.
    """
