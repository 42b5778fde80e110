"""The one exception type for bad input: the CLI prints its message on one line, exits 2."""


class OrthodiffError(ValueError):
    """Bad input (file, field, value) that the user can fix; the message names it."""
