"""A SessionManager over the fake engine, in-process: the session layer's logic in milliseconds."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from session_harness import Harness


@pytest.fixture
def make_harness(tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(max_live: int = 8, rows: int = 4) -> Harness:
        harness = Harness(tmp_path, max_live=max_live, rows=rows)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.scheduler.close()
