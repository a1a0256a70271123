"""Errors the CLI reports on one line, without a traceback: user mistakes (exit code 2) and training that failed
in a way the user must know about (exit code 1)."""


class UserError(Exception):
    """Bad input from the user (a parameter, a data file, a model URI): message names what and why."""

    exit_code = 2


def invalid(name: str, received: object, allowed: str) -> UserError:
    """The standard message: which parameter, what it received, what is allowed."""
    return UserError(f"invalid value for {name}: received {received!r}; allowed: {allowed}")


# what stops a process from outside, for the same command to go on later: Ctrl-C, or a stop (Ray ending a worker
# or a dead driver's tasks raises SystemExit in them)
INTERRUPTS = (KeyboardInterrupt, SystemExit)


class TrainingFailed(UserError):
    """Training stopped on its own (a non-finite loss): the run is marked FAILED, checkpoints are kept."""

    exit_code = 1
