"""The `modeld` command line. Every failure a user can cause ends in one line, never a traceback.

The commands register on the group as their modules are imported: ``_serve`` (the daemon) and
``_commands`` (everything that reads the lease or dials the daemon).
"""

from __future__ import annotations

from modeld.cli import (  # noqa: F401  (they register their commands)
    _commands,
    _load_cmd,
    _models_cmd,
    _plan_cmd,
    _serve,
    _sessions_cmd,
)
from modeld.cli._group import cli

__all__ = ["main"]


def main() -> None:
    cli(prog_name="modeld")
