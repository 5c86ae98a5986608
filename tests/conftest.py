"""Shared fixtures: short data roots (Unix socket paths are limited to 107 bytes) and daemons."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from daemons import DaemonPool


@pytest.fixture
def data_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="mdt-"))
    os.chmod(root, 0o700)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def daemons(data_root: Path) -> Iterator[DaemonPool]:
    pool = DaemonPool(data_root)
    yield pool
    pool.kill_all()
