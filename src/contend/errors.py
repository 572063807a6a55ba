"""Errors that carry their exit code (memray's `_errors.py` shape).

Everything the user can cause ends as one of these: the CLI prints its message on one line
and exits with its code. Nothing above the backends sees a raw OSError.
"""

from __future__ import annotations

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NO_PERMISSION = 77  # sysexits EX_NOPERM
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class ContendError(Exception):
    """A failure with a one-line message for the user and an exit code."""

    exit_code = EXIT_ERROR

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code

    @property
    def message(self) -> str:
        return str(self.args[0])


class UsageError(ContendError):
    """Bad input: a value that fails validation before anything touches the kernel."""

    exit_code = EXIT_USAGE


class PermissionNeeded(ContendError):
    """The operation needs privileges this process does not have."""

    exit_code = EXIT_NO_PERMISSION


class Terminated(BaseException):
    """Raised in the main thread by the SIGTERM (SIGHUP, SIGQUIT) handler so that cleanup
    runs as on Ctrl-C."""

    def __init__(self, signum: int = 15) -> None:
        super().__init__(signum)
        self.signum = signum
