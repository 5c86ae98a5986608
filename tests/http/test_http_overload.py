"""``overloaded`` over HTTP, provoked for real: a daemon with one live context and no parking
room (``--max-live-sessions 1 --park-ram 0 --park-disk 0``) serves one conversation; a second
one needs that context, the first cannot be parked, and the session layer refuses with
ParkingFull (``overloaded``, retry after 5 s). Both APIs answer 429 with ``Retry-After``, each in
its own error shape, through the official SDKs; the first conversation is still served."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import openai
import pytest
from daemons import Served, stop_served
from http_clients import http_url, openai_client
from served_models import TINY, serve_tiny

SYSTEM = "You are a careful assistant. " * 6


@pytest.fixture(scope="module")
def cramped() -> Iterator[Served]:
    daemon = serve_tiny(
        "llama",
        "--http-listen",
        "127.0.0.1:0",
        "--threads",
        "1",
        "--max-live-sessions",
        "1",
        "--park-ram",
        "0",
        "--park-disk",
        "0",
    )
    yield daemon
    stop_served(daemon)


def _first_conversation(client: openai.OpenAI) -> None:
    """Takes the one live context (its session stays live and idle: nowhere to park it)."""
    reply = client.chat.completions.create(
        model=TINY,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": "one"}],
        max_tokens=2,
        temperature=0,
        extra_headers={"x-session-id": "first"},
    )
    assert reply.choices[0].finish_reason == "length"


def test_openai_shape_is_429_with_retry_after(cramped: Served) -> None:
    with openai_client(cramped) as client:
        _first_conversation(client)
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(
                model=TINY,
                messages=[{"role": "user", "content": "a second conversation"}],
                max_tokens=2,
                extra_headers={"x-session-id": "second"},
            )
        response = refused.value.response
        assert response.status_code == 429
        assert response.headers["retry-after"] == "5"  # ParkingFull's retry_after_s
        error = response.json()["error"]
        assert error["type"] == "rate_limit_error" and error["code"] == "overloaded"
        assert "--park-ram" in error["message"] and error["modeld"]["why"]
        # nothing was lost: the first conversation goes on in its live session
        _first_conversation(client)


def test_anthropic_shape_is_429_with_retry_after(cramped: Served) -> None:
    with openai_client(cramped) as client:
        _first_conversation(client)
    api = anthropic.Anthropic(base_url=http_url(cramped), api_key="unused", max_retries=0)
    with api, pytest.raises(anthropic.RateLimitError) as refused:
        api.messages.create(
            model=TINY,
            max_tokens=2,
            messages=[{"role": "user", "content": "another conversation altogether"}],
        )
    response = refused.value.response
    assert response.status_code == 429 and response.headers["retry-after"] == "5"
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert "--park-ram" in body["error"]["message"]
