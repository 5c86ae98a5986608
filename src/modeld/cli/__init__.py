"""The command line: ``modeld serve | status | describe | generate | lease show``."""

from modeld.cli._main import main

__all__ = ["main"]
