"""503 while ``not_ready`` (and ``draining``), through the official SDKs, on both error shapes.

Tested on the real HTTP app (``create_app`` with every router, its middleware and error
handlers) over a real SessionManager (the fake engine's), with the daemon's :class:`Gate` in
each phase that refuses work. A real daemon offers no reachable window for this: its listener
binds only after the ``--model`` load (``starting``) and is closed before ``draining`` begins, so
a refused phase lasts only while the lease is published (milliseconds), or while a leader frozen
past its lease runs again before it fences itself and exits (a race with its hold loop)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import anthropic
import httpx2 as httpx
import openai
import pytest
from fastapi import FastAPI
from session_harness import INSTANCE, Harness

from modeld.http._app import HttpContext, create_app
from modeld.http._binding import SessionBinder
from modeld.lease._gate import Gate, Phase


def _app(harness: Harness, gate: Gate, root: Path) -> FastAPI:
    binder = SessionBinder(harness.manager)
    context = HttpContext(
        sessions=harness.manager, binder=binder, gate=gate, models_dir=root / "models"
    )
    return create_app(context)


def _gate(phase: Phase, *, renewed: bool = True) -> Gate:
    gate = Gate(INSTANCE)
    gate.phase = phase
    # renewed: the lease's validity ahead (as the hold loop keeps it); else past (frozen)
    gate.valid_until = time.monotonic() + (60.0 if renewed else -1.0)
    return gate


REFUSING = [
    pytest.param(_gate(Phase.STARTING), "not_ready", id="starting"),
    pytest.param(_gate(Phase.SERVING, renewed=False), "not_ready", id="lease-not-renewed"),
    pytest.param(_gate(Phase.FENCED), "not_ready", id="fenced"),
    pytest.param(_gate(Phase.DRAINING), "draining", id="draining"),
]


@pytest.mark.parametrize(("gate", "reason"), REFUSING)
async def test_openai_shape_is_503_with_retry_after(
    make_harness: Callable[..., Harness], tmp_path: Path, gate: Gate, reason: str
) -> None:
    app = _app(make_harness(), gate, tmp_path)
    transport = httpx.ASGITransport(app=app)
    async with (
        httpx.AsyncClient(transport=transport) as http,
        openai.AsyncOpenAI(
            base_url="http://modeld/v1", api_key="unused", max_retries=0, http_client=http
        ) as client,
    ):
        with pytest.raises(openai.InternalServerError) as refused:
            await client.chat.completions.create(
                model="fake", messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
    response = refused.value.response
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    error = response.json()["error"]
    assert error["type"] == "service_unavailable" and error["code"] == reason


@pytest.mark.parametrize(("gate", "reason"), REFUSING)
async def test_anthropic_shape_is_503_with_retry_after(
    make_harness: Callable[..., Harness], tmp_path: Path, gate: Gate, reason: str
) -> None:
    app = _app(make_harness(), gate, tmp_path)
    transport = httpx.ASGITransport(app=app)
    async with (
        httpx.AsyncClient(transport=transport) as http,
        anthropic.AsyncAnthropic(
            base_url="http://modeld", api_key="unused", max_retries=0, http_client=http
        ) as client,
    ):
        with pytest.raises(anthropic.InternalServerError) as refused:
            await client.messages.create(
                model="fake", max_tokens=2, messages=[{"role": "user", "content": "hi"}]
            )
    response = refused.value.response
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "overloaded_error"


async def test_serving_gate_lets_requests_through(
    make_harness: Callable[..., Harness], tmp_path: Path
) -> None:
    """The same app with the gate serving answers (so the 503s above are the gate's)."""
    app = _app(make_harness(), _gate(Phase.SERVING), tmp_path)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://modeld") as http:
        response = await http.get("/v1/models")
        health = await http.get("/health")
    assert response.status_code == 200 and response.json()["object"] == "list"
    assert health.json() == {"status": "serving"}
