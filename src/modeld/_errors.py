"""Daemon-side failures that end `modeld serve` with a one-line message, not a traceback."""

from __future__ import annotations

__all__ = ["ExitCode", "StartupError"]


class ExitCode:
    OK = 0
    USAGE = 2  #: a bad flag or value (click's own code)
    STARTUP = 3  #: the data root, listener or lease could not be set up
    HELD = 4  #: --no-standby and another instance holds the lease
    FENCED = 5  #: leadership was lost while serving; the daemon stopped before it could expire


class StartupError(Exception):
    """Raised before serving begins; the CLI prints ``modeld: <message>`` and exits non-zero."""

    def __init__(self, message: str, exit_code: int = ExitCode.STARTUP) -> None:
        super().__init__(message)
        self.exit_code = exit_code
