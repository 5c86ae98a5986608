"""The contract suite: every test here runs once per backend, on the same tiny qwen2 GGUF that
llama.cpp and openvino-genai both read, through a real daemon over a real Unix socket."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from daemons import Served, stop_served
from served_models import BACKENDS, serve_tiny

import modeldconn


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(scope="module")
def served(backend: str) -> Iterator[Served]:
    daemon = serve_tiny(backend)
    yield daemon
    stop_served(daemon)


@pytest.fixture
def client(served: Served) -> modeldconn.Client:
    return served.client
