"""A real daemon serving the real Gemma 3 270M model (llama backend) over a real Unix socket."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from daemons import Served, stop_served
from served_models import gemma_gguf, start_gemma

import modeldconn


@pytest.fixture(scope="session")
def gemma_file() -> Path:
    return gemma_gguf()


@pytest.fixture(scope="module")
def served(gemma_file: Path) -> Iterator[Served]:
    daemon = start_gemma(gemma_file)
    yield daemon
    stop_served(daemon)


@pytest.fixture
def client(served: Served) -> modeldconn.Client:
    return served.client
