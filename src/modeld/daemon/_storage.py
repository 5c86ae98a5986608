"""Prepare the data root: create it 0700 and prove it is a writable directory."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from modeld._errors import StartupError

__all__ = ["prepare_data_root"]


def prepare_data_root(root: Path) -> Path:
    """Create ``root`` (0700, parents as needed) and check the daemon can write there.

    :raises StartupError: with a one-line reason when the root is unusable.
    """
    if root.exists() and not root.is_dir():
        raise StartupError(f"data root {root} exists and is not a directory")
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        # A probe write: os.access lies for root and on read-only mounts.
        with tempfile.NamedTemporaryFile(dir=root, prefix=".probe-"):
            pass
    except OSError as exc:
        raise StartupError(f"data root {root} is not usable: {exc.strerror or exc}") from None
    if root.stat().st_uid == os.getuid() and root.stat().st_mode & 0o077:
        # Tighten a root we own; one we do not own (a shared state dir) is left alone.
        root.chmod(0o700)
    return root
