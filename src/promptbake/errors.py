"""The one exception type that means "the user can fix this": the CLI prints it on one line and exits 2."""


class UserError(Exception):
    """Bad input or a state the user must resolve (message says how)."""
