"""Daemons serving the HTTP API, one per test module: the tiny fixture (behaviour that needs no
real model) and Gemma (behaviour that does). A module may define its own ``tiny`` or ``gemma``
instead (the Responses tests need their own data root)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from daemons import Served, stop_served
from served_models import serve_gemma, serve_tiny


@pytest.fixture(scope="module")
def tiny() -> Iterator[Served]:
    daemon = serve_tiny("llama", "--http-listen", "127.0.0.1:0", "--threads", "1")
    yield daemon
    stop_served(daemon)


@pytest.fixture(scope="module")
def gemma() -> Iterator[Served]:
    daemon = serve_gemma("llama", "--http-listen", "127.0.0.1:0", "--threads", "2")
    yield daemon
    stop_served(daemon)
