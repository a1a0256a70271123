"""The one error type for user mistakes: the CLI prints its message on one line and exits with code 2."""


class UserError(Exception):
    """Bad input from the user (a parameter, a data file, a model URI): message names what and why."""

    exit_code = 2


def invalid(name: str, received: object, allowed: str) -> UserError:
    """The standard message: which parameter, what it received, what is allowed."""
    return UserError(f"invalid value for {name}: received {received!r}; allowed: {allowed}")
