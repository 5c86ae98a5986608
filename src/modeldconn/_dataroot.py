"""Shared with the daemon: the one data-root resolver (daemon, client and CLI).

Precedence: an explicit root (``--data-root``, or :func:`set_data_root` in a client process) >
``MODELD_DATA_ROOT`` > ``$XDG_STATE_HOME/modeld`` > ``~/.local/state/modeld``.
Resolving never touches the file system; only the daemon creates the directory (mode 0700).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ENV_DATA_ROOT", "resolve_data_root", "set_data_root"]

ENV_DATA_ROOT = "MODELD_DATA_ROOT"

#: Set by :func:`set_data_root` so a client process can point every call at one root without
#: threading it through each call; an explicit argument still wins.
_process_default: Path | None = None


def set_data_root(root: str | os.PathLike[str] | None) -> None:
    """Make ``root`` this process's data root for every modeldconn call (``None`` resets)."""
    global _process_default
    _process_default = None if root is None else Path(root).expanduser()


def resolve_data_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Return the data root by the precedence above, as an absolute path."""
    if explicit is not None and str(explicit) != "":
        return Path(explicit).expanduser().absolute()
    if _process_default is not None:
        return _process_default.absolute()
    from_env = os.environ.get(ENV_DATA_ROOT, "")
    if from_env:
        return Path(from_env).expanduser().absolute()
    state_home = os.environ.get("XDG_STATE_HOME", "")
    base = Path(state_home) if state_home else Path.home() / ".local" / "state"
    return (base / "modeld").absolute()
