"""Exit codes and the error type every command turns into one line on stderr."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
"""Bad arguments or configuration: fix the input, do not restart."""
EXIT_NVML_UNAVAILABLE = 3
"""NVML missing, driver not loaded or version mismatch: systemd must not restart in a loop."""


class WatchdogError(Exception):
    """An error a user can act on; the CLI prints its message as one line and exits."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(WatchdogError):
    """Bad input from the user: arguments, files, configuration."""

    exit_code = EXIT_USAGE
